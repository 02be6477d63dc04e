"""Speech benchmark: WER / MCD / speed of the shipped TTS for plain AR (mctp 1) and MCTP k, in one run.

    python benchmarks/bench_tts.py --model assets/tts --tokenizers assets/speech-tokenizers \
        --corpus data/speech --mctp 1 2 4 --threads 1 --json docs/bench_tts.json

Judges: PocketSphinx with the corpus-domain LM (WER by jiwer) and the simple mel-cepstral distortion
(``mmgen.audio.judge``) against eSpeak's rendering of the same held-out sentence (voice en-us+f2,
speed 165). Control rows in every run: eSpeak itself, codec and k-means resynthesis (ceilings) and a
negative control (audio of the wrong sentence). Speed: backbone forward passes per utterance and per
second of audio, steps per forward, real-time factor (generation + vocoding wall time / audio
seconds), time to the first streamed chunk (the causal head: forwards, seconds, ms of audio), forwards to
the second chunk (the first one vocoded with look-ahead) and wall-clock speed-up vs mctp 1
from interleaved repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmgen.audio import MelRVQCodec, KMeansSpeechTokenizer, default_judge, load_corpus  # noqa: E402
from mmgen.audio.corpus import CORPUS_VERSION, TEST_VOICE, sentence_pool, synthesize, training_pool  # noqa: E402
from mmgen.pipelines.batch import atomic_write_json  # noqa: E402
from mmgen.pipelines.speech import SpeechPipeline, first_chunk_frames, head_frames, text_to_ids, vocode_codes  # noqa: E402
from mmgen.train.common import set_threads  # noqa: E402
from mmgen.records import command_line  # noqa: E402


def unseen_sentences(train_corpus: str, n: int) -> list[str]:
    """``n`` training-pool sentences that the corpus ``train_corpus`` never used (it holds pool[:N] of the same
    seeded permutation); checked against its metadata, so a mismatched corpus fails instead of leaking."""
    root = Path(train_corpus)
    manifest = json.loads((root / "corpus.json").read_text())
    if manifest.get("version") != CORPUS_VERSION:
        raise ValueError(f"train-corpus {root} was built by corpus version {manifest.get('version')}, "
                         f"this code is version {CORPUS_VERSION}: rebuild it")
    pool = sentence_pool(len(training_pool()), manifest["seed"])
    if not 1 <= n <= len(pool) - manifest["n"]:
        raise ValueError(f"unseen must be in [1, {len(pool) - manifest['n']}], got {n}")
    texts = pool[manifest["n"]:manifest["n"] + n]
    with open(root / "metadata.jsonl") as f:
        trained = {json.loads(line)["text"] for line in f}
    if trained & set(texts):
        raise ValueError(f"{len(trained & set(texts))} 'unseen' sentences occur in {root}: wrong --train-corpus")
    return texts


def tts_row(pipe: SpeechPipeline, texts, k: int) -> tuple[list, dict]:
    """Generate every text one at a time (batch 1) with mctp = k; speed and first-chunk figures."""
    tr = pipe.transformer
    audios, passes, steps, wall, secs, first_fwd, first_s, second_fwd = [], [], [], [], [], [], [], []
    head = head_frames(k, tr.config.num_quantizers)
    need, need2 = first_chunk_frames(pipe.codec, 0, head), first_chunk_frames(pipe.codec, 1, head)
    for t in texts:
        t0 = time.perf_counter()
        out = pipe(t, voice=TEST_VOICE, mctp=k)
        wall.append(time.perf_counter() - t0)
        a = out.audios[0, 0, :out.lengths[0]]
        audios.append(a)
        passes.append(out.stats.forward_passes)
        steps.append(out.stats.tokens)
        secs.append(len(a) / 16000)
        # streamed chunks 0 (the causal head) and 1: forwards until their frames exist (pipe.stream's rule);
        # the time covers generation and vocoding of the head, as a listener would wait for it
        ids = text_to_ids([t], tr.config.max_text_len)
        vid = torch.tensor([tr.voice_index(TEST_VOICE)])
        t0, grid, fwd0 = time.perf_counter(), [], None
        for new, fwd in tr.generate_stream(ids, vid, mctp=k):
            grid.append(new[0])
            codes = tr.undelay(torch.cat(grid))
            if fwd0 is None and codes.shape[1] >= need:
                vocode_codes(pipe.codec, codes, head, 0)
                fwd0 = fwd
                first_s.append(time.perf_counter() - t0)
            if codes.shape[1] >= need2:
                break
        first_fwd.append(fwd0 if fwd0 is not None else fwd)
        second_fwd.append(fwd)
    total_s = sum(secs)
    row = dict(mctp=k, forward_passes_per_utt=round(float(np.mean(passes)), 1),
               steps_per_forward=round(sum(steps) / sum(passes), 3),
               forwards_per_audio_second=round(sum(passes) / total_s, 2),
               rtf=round(sum(wall) / total_s, 3), wall_s=round(sum(wall), 2),
               first_chunk_forwards=round(float(np.mean(first_fwd)), 1),
               first_chunk_s=round(float(np.median(first_s)), 4) if first_s else None,
               first_chunk_ms_audio=round(1000 * head * pipe.codec.mel_cfg.hop_length / pipe.codec.mel_cfg.sample_rate, 1),
               second_chunk_forwards=round(float(np.mean(second_fwd)), 1), audio_s=round(total_s, 2))
    return audios, row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="assets/tts")
    ap.add_argument("--tokenizers", default="assets/speech-tokenizers")
    ap.add_argument("--corpus", default="data/speech")
    ap.add_argument("--mctp", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timing repeats")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--unseen", type=int, default=0,
                    help="also judge N training-pool sentences that --train-corpus never used (eSpeak test voice "
                         "and speed; quality only, no timing): a larger held-out set than the 24 test sentences")
    ap.add_argument("--train-corpus", default="data/speech-3000", help="the corpus the model was trained on")
    args = ap.parse_args(argv)
    unseen = unseen_sentences(args.train_corpus, args.unseen) if args.unseen else []  # fail before the long runs
    set_threads(args.threads)
    judge = default_judge()
    test = load_corpus(args.corpus, "test")
    refs = [r["text"] for r in test]
    ref_audio = [r["audio"] for r in test]
    rows = []

    rows.append(dict(system="eSpeak NG (ground truth)", **judge.score(refs, ref_audio, ref_audio)))
    shifted = ref_audio[1:] + ref_audio[:1]
    rows.append(dict(system="negative control: wrong sentence", **judge.score(refs, ref_audio, shifted)))
    codec = MelRVQCodec.from_pretrained(Path(args.tokenizers) / "codec").eval()
    sem = KMeansSpeechTokenizer.from_pretrained(Path(args.tokenizers) / "semantic").eval()
    pipe = SpeechPipeline.from_pretrained(args.model)
    levels = pipe.transformer.num_levels
    for m in sorted({levels, codec.num_quantizers}):
        res = [codec.decode(codec.encode(a)[:, :m])[0].numpy() for a in ref_audio]
        rows.append(dict(system=f"codec resynthesis, {m} of {codec.num_quantizers} levels "
                                f"({codec.bitrate(m):.0f} bps)", **judge.score(refs, ref_audio, res)))
    res = [sem.decode(sem.encode(a))[0].numpy() for a in ref_audio]
    rows.append(dict(system=f"k-means semantic resynthesis ({sem.bitrate():.0f} bps)",
                     **judge.score(refs, ref_audio, res)))

    timing: dict[int, list] = {k: [] for k in args.mctp}
    tts = {}
    for rep in range(args.repeats):
        order = args.mctp if rep % 2 == 0 else list(reversed(args.mctp))
        for k in order:
            audios, row = tts_row(pipe, refs, k)
            timing[k].append(row["wall_s"])
            if k not in tts:
                q = judge.score(refs, ref_audio, audios)
                dur = float(np.mean([len(a) / len(r) for a, r in zip(audios, ref_audio)]))
                tts[k] = dict(system=f"TTS mctp={k}", **q, duration_ratio=round(dur, 3), **row)
    if unseen:
        texts = unseen
        clean = [synthesize(t) for t in texts]
        rows.append(dict(system=f"eSpeak NG, {len(texts)} unseen pool sentences", **judge.score(texts, clean, clean)))
        for k in args.mctp:
            outs = [pipe(t, voice=TEST_VOICE, mctp=k) for t in texts]
            q = judge.score(texts, clean, [o.audios[0, 0, :o.lengths[0]] for o in outs])
            tts[k].update(wer_unseen=q["wer"], mcd_unseen=q["mcd"], n_unseen=len(texts))
    base = statistics.median(timing[min(args.mctp)])
    for k in args.mctp:
        tts[k]["wall_speedup_vs_mctp1"] = round(base / statistics.median(timing[k]), 2)
        tts[k]["forward_reduction_vs_mctp1"] = round(tts[min(args.mctp)]["forward_passes_per_utt"]
                                                     / tts[k]["forward_passes_per_utt"], 2)
        rows.append(tts[k])
    result = dict(model=args.model, n_sentences=len(refs), voice=TEST_VOICE, threads=args.threads,
                  command=command_line("python benchmarks/bench_tts.py", argv),
                  date=time.strftime("%Y-%m-%d"), rows=rows)
    for r in rows:
        print({k: v for k, v in r.items() if k != "hyps"})
    if args.json:  # atomic: a crash never leaves a half-written result
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
