"""Train the understanding-driven semantic speech tokenizer (CTC on transcripts) for the dual-token scheme.

    python -m mmgen.train.train_ctc_tokenizer --corpus data/speech --out assets/speech-ctc --steps 1200

Loss: CTC(characters | quantised tokens) + VQ commitment. Reports the character error rate of text
read back from the discrete tokens alone on the held-out sentences. Resumable from ``--work``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

from ..audio.corpus import ALPHABET, load_corpus
from ..audio.dual import CTCSpeechTokenizer
from ..audio.features import MelConfig, log_mel
from ..records import command_line
from .common import (SegmentLog, check_resumable, check_train_args, cosine_lr, data_stream, export_with_metrics,
                     resume_or_start, save_checkpoint, set_threads)


def char_error_rate(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    return float(jiwer.cer(refs, hyps))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/speech")
    ap.add_argument("--out", default="assets/speech-ctc")
    ap.add_argument("--work", default="runs/train_speech_ctc")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=400)
    args = ap.parse_args(argv)
    check_train_args(args)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    work = Path(args.work)
    t0 = time.time()
    cfg = MelConfig()
    train = [(log_mel(torch.from_numpy(r["audio"])[None], cfg)[0], r["text"]) for r in load_corpus(args.corpus, "train")]
    model = CTCSpeechTokenizer()
    frames = torch.cat([m for m, _ in train], 1)
    model.set_normalization(frames.mean(1), frames.std(1))
    model, opt, step = resume_or_start(work, "model", model, lambda m: torch.optim.AdamW(
        m.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01))
    check_resumable(step, args.steps, work)
    model, opt = acc.prepare(model, opt)
    rng, states = data_stream(work, args.seed, step)  # restored on resume
    log = SegmentLog(work, step, command_line("python -m mmgen.train.train_ctc_tokenizer", argv), started=t0)
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, disable=not acc.is_main_process)
    for step in bar:
        model.train()
        cosine_lr(opt, args.lr, step, args.steps, warmup=50)
        batch = [train[int(i)] for i in rng.integers(len(train), size=args.batch)]
        width = max(m.shape[1] for m, _ in batch)
        width += width % 2
        mel = torch.stack([F.pad(m, (0, width - m.shape[1]), value=float(m.min())) for m, _ in batch])
        targets = [torch.tensor([ALPHABET.index(c) + 1 for c in t]) for _, t in batch]
        logp, _, commit = model(mel.to(acc.device))  # (T', B, C)
        in_len = torch.tensor([m.shape[1] // 2 for m, _ in batch])
        loss = F.ctc_loss(logp, torch.cat(targets), in_len, torch.tensor([len(t) for t in targets]),
                          blank=0, zero_infinity=True) + commit
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_checkpoint(work, {"model": acc.unwrap_model(model)}, opt, step + 1, extra=log.state(step + 1),
                            rng=states)
    model = acc.unwrap_model(model).eval()
    test = load_corpus(args.corpus, "test")
    hyps = [model.transcribe(model.encode(r["audio"]))[0] for r in test]
    refs = [r["text"] for r in test]
    tokens = torch.cat([model.encode(r["audio"])[0] for r in test])
    metrics = dict(test_cer_from_tokens=round(char_error_rate(refs, hyps), 4), examples=list(zip(refs, hyps))[:4],
                   token_rate_hz=model.frame_rate, bitrate_bps=model.bitrate(),
                   codebook_usage_test=round(tokens.unique().numel() / model.codebook_size, 3),
                   steps=args.steps, **log.record(args.steps))
    if acc.is_main_process:
        export_with_metrics(model, args.out, metrics)


if __name__ == "__main__":
    main()
