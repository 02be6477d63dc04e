"""Train the VQ tokenizer on scenes, photo crops and digits; export to a local folder.

    python -m mmgen.train.train_tokenizer --out assets/vq --steps 1500

Single CPU process here; the same script runs unchanged under ``accelerate launch``.
Resumable: rerunning with the same ``--work`` folder continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

from ..data import SceneDataset, load_digits_rgb, photo_crops, to_tensor
from ..eval.metrics import psnr
from ..tokenizers_visual import VQTokenizer
from ..records import command_line
from .common import (SegmentLog, atomic_dir, check_photo_frac, check_resumable, check_train_args, data_stream,
                     load_trainer_state, optimizer_from_safetensors, save_checkpoint, set_threads)


def evaluate_tokenizer(vq: VQTokenizer, n: int = 256) -> dict:
    """Held-out reconstruction PSNR (dB) on scenes, photo crops and digits, and codebook usage."""
    vq.eval()
    scenes = to_tensor(SceneDataset(n, seed=999).arrays()[0])
    photos = to_tensor(photo_crops(n, seed=123))
    digits = to_tensor(load_digits_rgb("test")[0][:n])
    out, used = {}, set()
    with torch.no_grad():
        for name, x in (("scenes", scenes), ("photos", photos), ("digits", digits)):
            ids = vq.encode(x).ids
            used |= set(ids.unique().tolist())
            out[f"psnr_{name}"] = round(float(psnr(vq.decode(ids), x)), 2)
            out[f"codes_used_{name}"] = int(ids.unique().numel())
    out["codebook_usage"] = round(len(used) / vq.vocab_size, 4)
    return out


def gradient_l1(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 distance between the finite differences of two image batches (B, C, H, W): an edge loss."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return F.l1_loss(dx(rec), dx(x)) + F.l1_loss(dy(rec), dy(x))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets/vq")
    ap.add_argument("--work", default="runs/train_vq")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--photo-frac", type=float, default=0.25, help="share of each batch taken from photo crops")
    ap.add_argument("--cosine", action="store_true", help="cosine-decay the learning rate to 10%%")
    ap.add_argument("--l1", type=float, default=0.5, help="weight of the L1 term (L2 has weight 1)")
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--codebook-dim", type=int, default=8)
    ap.add_argument("--dead-code-threshold", type=float, default=2.0,
                    help="EMA count below which a code is re-seeded from the batch (0 = never re-seed)")
    ap.add_argument("--grad", type=float, default=0.0,
                    help="weight of an L1 loss on horizontal/vertical image differences (sharpens outlines)")
    ap.add_argument("--local-encoder", action="store_true",
                    help="patch-local encoder (no GroupNorm, 10x10-pixel receptive field): equal patches, equal codes")
    ap.add_argument("--local-context", type=int, default=0,
                    help="with --local-encoder: 3x3 convolutions at token level (each widens the window by 8 pixels)")
    args = ap.parse_args(argv)
    check_train_args(args)
    set_threads(args.threads)
    n_photo = check_photo_frac(args.photo_frac, args.batch)
    torch.manual_seed(args.seed)
    acc = Accelerator(cpu=not torch.cuda.is_available())

    vq = VQTokenizer(codebook_size=args.codebook_size, codebook_dim=args.codebook_dim,
                     dead_code_threshold=args.dead_code_threshold, local_encoder=args.local_encoder,
                     local_context=args.local_context)
    opt = torch.optim.AdamW(vq.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step = 0
    state = load_trainer_state(args.work)
    if state is not None:
        vq = VQTokenizer.from_pretrained(Path(args.work) / "model")
        opt = torch.optim.AdamW(vq.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        optimizer_from_safetensors(opt, Path(args.work) / "optimizer.safetensors")
        step = state["step"]
        check_resumable(step, args.steps, args.work)
        acc.print(f"resuming from step {step}")
    vq, opt = acc.prepare(vq, opt)

    scenes = SceneDataset(200_000, seed=1)
    photos = photo_crops(4000, seed=7)
    digits, _ = load_digits_rgb("train")
    rng, states = data_stream(args.work, args.seed, step)  # restored on resume
    t0 = time.time()
    log = SegmentLog(args.work, step, command_line("python -m mmgen.train.train_tokenizer", argv), started=t0)
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, disable=not acc.is_main_process)
    for step in bar:
        vq.train()
        if args.cosine:
            for group in opt.param_groups:
                group["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        idx = rng.integers(len(scenes), size=args.batch - n_photo)
        x = torch.cat([to_tensor(np.stack([scenes[int(i)][0] for i in idx])),
                       to_tensor(photos[rng.integers(len(photos), size=n_photo)])])
        batches = [x]
        if step % 3 == 0:
            batches.append(to_tensor(digits[rng.integers(len(digits), size=args.batch)]))
        loss_total = 0.0
        for xb in batches:
            rec, _, commit = vq(xb.to(acc.device))
            loss = F.mse_loss(rec, xb) + args.l1 * F.l1_loss(rec, xb) + commit
            if args.grad > 0:
                loss = loss + args.grad * gradient_l1(rec, xb)
            acc.backward(loss)
            loss_total += loss.item()
        acc.clip_grad_norm_(vq.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss_total:.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_checkpoint(args.work, {"model": acc.unwrap_model(vq)}, opt, step + 1, extra=log.state(step + 1),
                            rng=states)
    model = acc.unwrap_model(vq)
    metrics = evaluate_tokenizer(model)
    metrics.update(steps=args.steps, **log.record(args.steps))
    if acc.is_main_process:
        with atomic_dir(args.out) as tmp:
            model.save_pretrained(tmp)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
