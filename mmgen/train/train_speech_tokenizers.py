"""Train the speech tokenizers on the eSpeak corpus: the MelRVQ acoustic codec and k-means semantic tokens.

    python -m mmgen.audio.corpus --out data/speech --n 600
    python -m mmgen.train.train_speech_tokenizers --corpus data/speech --out assets/speech-tokenizers --steps 1500

Writes ``OUT/codec`` (:class:`~mmgen.audio.codec.MelRVQCodec`) and ``OUT/semantic``
(:class:`~mmgen.audio.semantic.KMeansSpeechTokenizer`), safetensors + config each, with metrics.
Single process (accelerate), resumable from ``--work``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

from ..audio.codec import MelRVQCodec
from ..audio.corpus import load_corpus
from ..audio.features import MelConfig, log_mel
from ..audio.semantic import KMeansSpeechTokenizer
from ..records import command_line
from .common import (SegmentLog, atomic_dir, check_resumable, check_train_args, cosine_lr, data_stream, resume_or_start,
                     save_checkpoint, set_threads)


def corpus_mels(corpus: str, split: str = "train") -> list[torch.Tensor]:
    """Log-mel (n_mels, F) of every utterance of a split."""
    cfg = MelConfig()
    return [log_mel(torch.from_numpy(r["audio"])[None], cfg)[0] for r in load_corpus(corpus, split)]


def train_codec(mels: list[torch.Tensor], args, acc: Accelerator, command: str,
                started: float) -> tuple[MelRVQCodec, dict]:
    """-> (trained codec in eval mode, its SegmentLog record: train_seconds over all resumed runs, command,
    segments)."""
    work = Path(args.work)
    codec = MelRVQCodec(num_quantizers=args.levels, codebook_size=args.codebook_size)
    frames = torch.cat(mels, 1)  # (n_mels, N)
    codec.set_normalization(frames.mean(1), frames.std(1))
    codec, opt, step = resume_or_start(work, "codec", codec, lambda m: torch.optim.AdamW(
        m.parameters(), lr=args.lr, betas=(0.9, 0.99)))
    check_resumable(step, args.steps, work)
    log = SegmentLog(work, step, command, started=started)
    codec, opt = acc.prepare(codec, opt)
    rng, states = data_stream(work, args.seed, step)  # restored on resume
    long_enough = [m for m in mels if m.shape[1] > args.crop]
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, disable=not acc.is_main_process)
    for step in bar:
        codec.train()
        cosine_lr(opt, args.lr, step, args.steps)
        crops = []
        for i in rng.integers(len(long_enough), size=args.batch):
            m = long_enough[int(i)]
            o = int(rng.integers(m.shape[1] - args.crop))
            crops.append(m[:, o:o + args.crop])
        x = torch.stack(crops).to(acc.device)  # (B, n_mels, crop)
        rec, _, commit = codec(x)
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + commit
        acc.backward(loss)
        acc.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_checkpoint(work, {"codec": acc.unwrap_model(codec)}, opt, step + 1, extra=log.state(step + 1),
                            rng=states)
    return acc.unwrap_model(codec).eval(), log.record(args.steps)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/speech")
    ap.add_argument("--out", default="assets/speech-tokenizers")
    ap.add_argument("--work", default="runs/train_speech_codec")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=64, help="training crop length in frames")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--levels", type=int, default=4, help="RVQ levels of the codec")
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--kmeans-frames", type=int, default=60000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=500)
    args = ap.parse_args(argv)
    check_train_args(args)
    if args.kmeans_frames < args.codebook_size:  # k-means runs after the codec: refuse before training it
        raise ValueError(f"--kmeans-frames ({args.kmeans_frames}) must be >= --codebook-size ({args.codebook_size}): "
                         "k-means needs at least one frame per centroid")
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    t0 = time.time()
    cmd = command_line("python -m mmgen.train.train_speech_tokenizers", argv)
    mels = corpus_mels(args.corpus)
    codec, record = train_codec(mels, args, acc, cmd, started=t0)

    frames = torch.cat(mels, 1).T  # (N, n_mels)
    g = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(frames.shape[0], generator=g)[:args.kmeans_frames]
    semantic = KMeansSpeechTokenizer(codebook_size=args.codebook_size).fit(frames[pick], generator=g)

    test = corpus_mels(args.corpus, "test")
    with torch.no_grad():
        rec_err = float(np.mean([F.l1_loss(codec.decode_mel(codec.encode_mel(m[None])), m[None]).item() for m in test]))
        codes = torch.cat([codec.encode_mel(m[None])[0] for m in mels[:200]], 1)  # (M, N)
    usage = [round(codes[q].unique().numel() / codec.codebook_size, 3) for q in range(codec.num_quantizers)]
    metrics = dict(codec_test_logmel_l1=round(rec_err, 4), codec_usage_per_level=usage,
                   codec_bitrate_bps=codec.bitrate(), codec_frame_rate=codec.frame_rate,
                   semantic_bitrate_bps=semantic.bitrate(), codec_train_seconds=record["train_seconds"],
                   total_seconds=round(time.time() - t0, 1), steps=args.steps, command=cmd,
                   segments=record["segments"])
    if acc.is_main_process:
        with atomic_dir(args.out) as tmp:
            codec.save_pretrained(tmp / "codec")
            semantic.save_pretrained(tmp / "semantic")
            (tmp / "training.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
