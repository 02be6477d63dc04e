"""The speech trainers run, resume and export loadable folders (tiny corpus, a few steps)."""

import json

import pytest
import torch

from conftest import needs_espeak, needs_pocketsphinx
from mmgen.audio import MelRVQCodec, build_corpus
from mmgen.audio.dual import CTCSpeechTokenizer
from mmgen.pipelines import DualTokenSpeechPipeline, SpeechPipeline
from mmgen.train import train_ctc_tokenizer, train_speech_tokenizers, train_tts

pytestmark = [needs_espeak, needs_pocketsphinx]  # eSpeak for the corpus, jiwer for the CTC trainer's CER


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("speech") / "corpus", n=6, seed=0)


def test_speech_trainers_run_resume_and_export(corpus, tmp_path, capsys):
    tok, work = tmp_path / "tok", tmp_path / "work_codec"
    common = ["--corpus", str(corpus), "--threads", "1", "--codebook-size", "16", "--kmeans-frames", "400",
              "--batch", "4", "--crop", "32", "--work", str(work)]
    train_speech_tokenizers.main(common + ["--out", str(tok), "--steps", "2"])
    assert json.loads((work / "trainer_state.json").read_text())["step"] == 2
    capsys.readouterr()
    train_speech_tokenizers.main(common + ["--out", str(tok), "--steps", "3"])
    assert "resuming from step 2" in capsys.readouterr().out  # not a restart from 0 (which also ends at step 3)
    assert json.loads((work / "trainer_state.json").read_text())["step"] == 3
    codec = MelRVQCodec.from_pretrained(tok / "codec")
    rec = json.loads((tok / "training.json").read_text())
    assert rec["codec_bitrate_bps"] == codec.bitrate()
    assert [g["steps"] for g in rec["segments"]] == ["0-2", "2-3"]  # both runs recorded, not just the last
    assert rec["segments"][0]["command"].endswith("--steps 2") and rec["command"] == rec["segments"][1]["command"]
    assert rec["codec_train_seconds"] == round(sum(g["seconds"] for g in rec["segments"]), 1)

    out = tmp_path / "tts"
    train_tts.main(["--corpus", str(corpus), "--tokenizers", str(tok), "--out", str(out), "--work",
                    str(tmp_path / "work_tts"), "--levels", "2", "--mctp", "2", "--dim", "32", "--layers", "1",
                    "--heads", "2", "--steps", "2", "--batch", "2", "--threads", "1"])
    pipe = SpeechPipeline.from_pretrained(out)
    res = pipe("a cat", max_seconds=0.2, mctp=2)
    assert res.stats.forward_passes >= 1 and pipe.transformer.num_levels == 2

    ctc = tmp_path / "ctc"
    train_ctc_tokenizer.main(["--corpus", str(corpus), "--out", str(ctc), "--work", str(tmp_path / "work_ctc"),
                              "--steps", "2", "--batch", "2", "--threads", "1"])
    tokens = CTCSpeechTokenizer.from_pretrained(ctc).encode(torch.zeros(16000))
    assert tokens.shape == (1, 31)

    # the dual-token model: CTC semantic tokens of each utterance in, its codec tokens out
    dual = tmp_path / "dual"
    train_tts.main(["--corpus", str(corpus), "--tokenizers", str(tok), "--out", str(dual), "--work",
                    str(tmp_path / "work_dual"), "--levels", "1", "--mctp", "2", "--dim", "32", "--layers", "1",
                    "--heads", "2", "--steps", "2", "--batch", "2", "--threads", "1", "--input", "semantic",
                    "--semantic-tokenizer", str(ctc)])
    pipe = DualTokenSpeechPipeline.from_pretrained(dual)
    cfg = pipe.transformer.config
    assert cfg.input_kind == "semantic" and cfg.text_vocab_size == pipe.semantic_tokenizer.codebook_size + 1
    res = pipe(torch.zeros(8000).numpy(), voice=pipe.voices[-1], max_seconds=0.2, mctp=2)
    assert res.stats.forward_passes >= 1 and res.audios.shape[0] == 1
    with pytest.raises(ValueError, match="DualTokenSpeechPipeline"):
        SpeechPipeline.from_pretrained(dual)("a cat")


def test_train_tts_rejects_bad_levels(corpus, tmp_path):
    tok = tmp_path / "tok"
    train_speech_tokenizers.main(["--corpus", str(corpus), "--out", str(tok), "--work", str(tmp_path / "w"),
                                  "--steps", "1", "--levels", "2", "--codebook-size", "16", "--kmeans-frames", "400",
                                  "--batch", "2", "--crop", "32", "--threads", "1"])
    with pytest.raises(ValueError, match="--levels"):
        train_tts.main(["--corpus", str(corpus), "--tokenizers", str(tok), "--out", str(tmp_path / "t"),
                        "--levels", "3", "--steps", "1", "--threads", "1"])


def test_resumed_tts_training_equals_an_uninterrupted_run(corpus, tmp_path):
    """Stopped after one step (--max-minutes ~0), then resumed: the weights equal one uninterrupted run's
    (the batch sampler's and torch's random states travel with the checkpoint)."""
    from mmgen.models.speech_transformer import SpeechTransformer

    tok = tmp_path / "tok"
    train_speech_tokenizers.main(["--corpus", str(corpus), "--out", str(tok), "--work", str(tmp_path / "w"),
                                  "--steps", "1", "--levels", "2", "--codebook-size", "16", "--kmeans-frames", "400",
                                  "--batch", "2", "--crop", "32", "--threads", "1"])
    common = ["--corpus", str(corpus), "--tokenizers", str(tok), "--levels", "2", "--mctp", "2", "--dim", "32",
              "--layers", "1", "--heads", "2", "--steps", "3", "--batch", "2", "--threads", "1", "--save-every", "1"]
    train_tts.main(common + ["--out", str(tmp_path / "a"), "--work", str(tmp_path / "wa")])
    train_tts.main(common + ["--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb"), "--max-minutes", "1e-9"])
    assert json.loads((tmp_path / "wb" / "trainer_state.json").read_text())["step"] == 1
    train_tts.main(common + ["--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb")])
    a = SpeechTransformer.from_pretrained(tmp_path / "a" / "transformer").state_dict()
    b = SpeechTransformer.from_pretrained(tmp_path / "b" / "transformer").state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    rec = json.loads((tmp_path / "b" / "training.json").read_text())  # both runs recorded
    assert [g["steps"] for g in rec["segments"]] == ["0-1", "1-3"] and rec["command"] == rec["segments"][1]["command"]
