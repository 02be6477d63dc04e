"""Shipped speech checkpoints judged by PocketSphinx (the full figures are in docs/BENCHMARKS.md)."""

import numpy as np
import pytest

from conftest import needs_judge
from mmgen.assets import assets_dir
from mmgen.audio import MelRVQCodec, TEST_SENTENCES, default_judge, synthesize
from mmgen.pipelines import DualTokenSpeechPipeline, SpeechPipeline

pytestmark = needs_judge
SENTENCES = list(TEST_SENTENCES[:8])


@pytest.fixture(scope="module")
def judge():
    return default_judge()


def test_codec_resynthesis_stays_intelligible(judge):
    codec = MelRVQCodec.from_pretrained(assets_dir() / "speech-tokenizers" / "codec").eval()
    refs = [synthesize(s) for s in SENTENCES[:4]]
    clean = judge.wer(SENTENCES[:4], refs, 16000)["wer"]
    res = [codec.decode(codec.encode(a))[0].numpy() for a in refs]
    assert judge.wer(SENTENCES[:4], res, 16000)["wer"] <= clean + 0.10


def test_shipped_tts_wer_floor_and_mctp_cuts_forwards(judge):
    pipe = SpeechPipeline.from_pretrained(assets_dir() / "tts")
    results = {}
    for k in (1, pipe.transformer.config.mctp):
        outs = [pipe(s, mctp=k) for s in SENTENCES]
        audios = [o.audios[0, 0, :o.lengths[0]] for o in outs]
        results[k] = (judge.wer(SENTENCES, audios, 16000)["wer"], np.mean([o.stats.forward_passes for o in outs]))
    (wer1, fwd1), (werk, fwdk) = results[1], results[pipe.transformer.config.mctp]
    assert wer1 <= WER_FLOOR, results
    assert werk <= WER_FLOOR, results
    assert fwd1 / fwdk >= 3.0, results


def test_shipped_dual_token_model_resynthesises_speech(judge):
    """Speech in (CTC semantic tokens), speech out (codec tokens): the words survive; MCTP cuts forwards."""
    pipe = DualTokenSpeechPipeline.from_pretrained(assets_dir() / "dual-speech")
    src = [synthesize(s) for s in SENTENCES]
    results = {}
    for k in (1, pipe.transformer.config.mctp):
        outs = [pipe(a, voice="en-us+f2", mctp=k) for a in src]
        audios = [o.audios[0, 0, :o.lengths[0]] for o in outs]
        results[k] = (judge.wer(SENTENCES, audios, 16000)["wer"], np.mean([o.stats.forward_passes for o in outs]))
    (wer1, fwd1), (werk, fwdk) = results[1], results[pipe.transformer.config.mctp]
    assert wer1 <= DUAL_WER_FLOOR and werk <= DUAL_WER_FLOOR, results
    assert fwd1 / fwdk >= 3.0, results


DUAL_WER_FLOOR = 0.45  # regression floor: measured 0.21 (mctp 1) and 0.31 (mctp 4) on these 8 sentences (1990-step model)
WER_FLOOR = 0.30  # regression floor: measured 0.18 (mctp 1) and 0.17 (mctp 4) on these 8 sentences (4800-step model, 2026-11-23)
