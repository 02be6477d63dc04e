"""Dual-token speech model (semantic tokens in, acoustic tokens out): does the content survive?

    python benchmarks/bench_dual_speech.py --model assets/dual-speech --corpus data/speech --mctp 1 4 \
        --threads 1 --json docs/bench_dual_speech.json

Source: the 24 held-out test sentences as eSpeak renders them (voice en-us+f2, speed 165), never in any
training set. For every target voice of the model (en-us+f2 = resynthesis, the others = voice
conversion) and every MCTP k: WER of the output (PocketSphinx with the corpus LM, jiwer), MCD against
eSpeak's rendering of the same text in the *target* voice, duration ratio vs the source, and backbone
forwards per second of audio. Controls in the same run: eSpeak in each target voice (the judge's floor)
and the text read back from the semantic tokens alone by the CTC head (what the model's input carries).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jiwer
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmgen.audio import default_judge, load_corpus  # noqa: E402
from mmgen.audio.corpus import TEST_SPEED, TEST_VOICE, synthesize  # noqa: E402
from mmgen.pipelines import DualTokenSpeechPipeline  # noqa: E402
from mmgen.pipelines.batch import atomic_write_json  # noqa: E402
from mmgen.train.common import set_threads  # noqa: E402
from mmgen.records import command_line  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/dual-speech")
    ap.add_argument("--corpus", default="data/speech")
    ap.add_argument("--mctp", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    judge = default_judge()
    test = load_corpus(args.corpus, "test")
    refs, src = [r["text"] for r in test], [r["audio"] for r in test]
    pipe = DualTokenSpeechPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    sem = [pipe.semantic_tokenizer.encode(torch.from_numpy(a))[0] for a in src]
    read_back = [pipe.semantic_tokenizer.transcribe(s[None])[0] for s in sem]
    rows.append(dict(system="input: text read back from the semantic tokens (CTC head)",
                     wer=round(jiwer.wer(refs, read_back), 4), cer=round(jiwer.cer(refs, read_back), 4)))
    for voice in pipe.voices:
        target = src if voice == TEST_VOICE else [synthesize(t, voice, TEST_SPEED) for t in refs]
        w = judge.wer(refs, target, 16000)["wer"]
        rows.append(dict(system=f"eSpeak NG, voice {voice} (floor)", voice=voice, wer=round(w, 4)))
        for k in args.mctp:
            outs, passes, secs, t0 = [], 0, 0.0, time.perf_counter()
            for a in src:
                o = pipe(a, voice=voice, mctp=k)
                outs.append(o.audios[0, 0, :o.lengths[0]])
                passes += o.stats.forward_passes
                secs += o.lengths[0] / 16000
            wall = time.perf_counter() - t0
            res = judge.score(refs, target, outs, num_hyps=3)
            dur = float(np.mean([len(g) / len(s) for g, s in zip(outs, src)]))
            rows.append(dict(system=f"dual-token model -> {voice}" + (" (resynthesis)" if voice == TEST_VOICE
                                                                       else " (conversion)"),
                             voice=voice, mctp=k, wer=res["wer"], mcd=res["mcd"],
                             duration_ratio_vs_source=round(dur, 3),
                             forwards_per_audio_second=round(passes / secs, 2), rtf=round(wall / secs, 3),
                             hyps=res["hyps"]))
            print({k2: v for k2, v in rows[-1].items() if k2 != "hyps"}, flush=True)
    result = dict(model=args.model, n_sentences=len(refs), source_voice=TEST_VOICE, threads=args.threads,
                  command=command_line("python benchmarks/bench_dual_speech.py", argv),
                  date=time.strftime("%Y-%m-%d"), rows=rows)
    for r in rows:
        print({k: v for k, v in r.items() if k != "hyps"})
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
