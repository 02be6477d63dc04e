"""Train one tokenizer of the family (SEED, TokenFlow, Hita, One-D-Piece) on captioned scenes plus
photo crops, and export it to a local folder with its reconstruction figures (metrics.json).

    python -m mmgen.train.train_visual_tokenizer --kind hita --out runs/tok-hita --steps 3000 --threads 1

(README.md and docs/BENCHMARKS.md list the exact commands of every shipped tokenizer.) ``--init-from FOLDER``
starts from a trained tokenizer's weights and codebook: One-D-Piece's shipped model is trained without tail
drop, then with it from those weights.

Every tokenizer exposes ``losses(images, captions, generator)``; captions label the scene part of
each batch (the contrastive terms of SEED and TokenFlow use them), photo crops only enter the
reconstruction terms. Single CPU process here, unchanged under ``accelerate launch``; resumable
from ``--work``; AdamW with warm-up and cosine decay.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from accelerate import Accelerator
from tqdm import tqdm

from ..data import SceneDataset, photo_crops, to_tensor
from .. import tokenizers_visual
from ..tokenizers_visual.base import init_args, load_tokenizer
from ..records import command_line
from .common import (SegmentLog, check_photo_frac, check_resumable, check_train_args, cosine_lr, data_stream,
                     export_with_metrics, load_trainer_state, resume_or_start, save_checkpoint, set_threads)

KINDS = {"seed": "SEEDTokenizer", "tokenflow": "TokenFlowTokenizer", "hita": "HitaTokenizer", "onedpiece": "OneDPieceTokenizer"}


def build_model(kind: str, config: dict, proxy: str | None = None):
    """A fresh tokenizer of ``kind``; with ``proxy`` a trained VQ tokenizer's weights are loaded into it, frozen: the
    proxy whose codes One-D-Piece's decoder predicts, or the image encoder SEED's Q-Former reads."""
    cls = getattr(tokenizers_visual, KINDS[kind])
    if proxy is None:
        return cls(**config)
    if kind not in ("onedpiece", "seed"):
        raise ValueError(f"--proxy is only used by --kind onedpiece and seed, got --kind {kind}")
    vq = tokenizers_visual.VQTokenizer.from_pretrained(proxy)
    vq_config = init_args(vq.config)
    if kind == "onedpiece":
        model = cls(**config, proxy_vq=vq_config)
        model.proxy.load_state_dict(vq.state_dict())
    else:
        model = cls(**config, vision_vq=vq_config)
        model.vision.load_state_dict(vq.state_dict())
    return model


def warm_start(model, folder: str) -> None:
    """``--init-from``: copy every weight and buffer (codebooks included) of a trained tokenizer of the same class
    and shapes into ``model``, whose training options (e.g. One-D-Piece's ``tail_drop``) come from ``--config``:
    staged training, as One-D-Piece's Tail Token Drop applied to a tokenizer first trained without it."""
    src = load_tokenizer(folder)
    if type(src) is not type(model):
        raise ValueError(f"--init-from {folder}: a {type(src).__name__}, not a {type(model).__name__}")
    try:
        missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    except RuntimeError as e:  # a shape mismatch
        detail = str(e).splitlines()[-1].strip()
        raise ValueError(f"--init-from {folder}: weights do not fit --config ({detail})") from None
    if missing or unexpected:
        raise ValueError(f"--init-from {folder}: weights do not fit --config "
                         f"(missing {missing}, unexpected {unexpected})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", required=True, choices=sorted(KINDS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="checkpoint folder (default runs/train_<kind>)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--photo-frac", type=float, default=0.25, help="share of each batch taken from photo crops")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (and export) after this wall time")
    ap.add_argument("--config", default="{}", help="JSON overrides of the tokenizer's constructor arguments")
    ap.add_argument("--init-from", default=None, help="a trained tokenizer folder of the same kind and shapes: start "
                                                      "from its weights (ignored when resuming --work)")
    ap.add_argument("--proxy", default=None, help="folder of a trained VQ tokenizer, frozen. onedpiece: the decoder "
                                                  "learns to predict its codes (TiTok's proxy-code stage); seed: the "
                                                  "Q-Former reads its code grid (SEED's frozen image encoder)")
    args = ap.parse_args(argv)
    check_train_args(args)
    n_photo = check_photo_frac(args.photo_frac, args.batch)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    work = args.work or f"runs/train_{args.kind}"
    acc = Accelerator(cpu=not torch.cuda.is_available())
    make_opt = lambda m: torch.optim.AdamW(m.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    model = build_model(args.kind, json.loads(args.config), args.proxy)
    if args.init_from and load_trainer_state(work) is None:
        warm_start(model, args.init_from)
    model, opt, step = resume_or_start(work, "model", model, make_opt)
    check_resumable(step, args.steps, work)
    model, opt = acc.prepare(model, opt)
    gen = torch.Generator().manual_seed(args.seed * 1000 + step)

    scenes = SceneDataset(200_000, seed=1)
    photos = photo_crops(4000, seed=7)
    rng, states = data_stream(work, args.seed, step, gen=gen)  # restored on resume
    t0 = time.time()
    log = SegmentLog(work, step, command_line("python -m mmgen.train.train_visual_tokenizer", argv), started=t0)
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, disable=not acc.is_main_process)
    for step in bar:
        model.train()
        cosine_lr(opt, args.lr, step, args.steps, args.warmup)
        items = [scenes[int(i)] for i in rng.integers(len(scenes), size=args.batch - n_photo)]
        x = torch.cat([to_tensor(np.stack([im for im, _ in items])),
                       to_tensor(photos[rng.integers(len(photos), size=n_photo)])]).to(acc.device)
        out = acc.unwrap_model(model).losses(x, [s.caption() for _, s in items], generator=gen)
        acc.backward(out["loss"])
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        bar.set_postfix({k: f"{float(v):.3f}" for k, v in out.items() if k != "kept_tokens"})
        done = step + 1 == args.steps or (args.max_minutes and time.time() - t0 > 60 * args.max_minutes)
        if (step + 1) % args.save_every == 0 or done:
            save_checkpoint(work, {"model": acc.unwrap_model(model)}, opt, step + 1, extra=log.state(step + 1),
                            rng=states)
        if done:
            break

    if acc.is_main_process:
        from ..eval.evaluate import load_judges
        from ..eval.tokenizer_metrics import prefix_adherence, prefix_curve, prefix_lengths, tokenizer_report
        model = acc.unwrap_model(model).eval()
        judge = load_judges()[0]
        metrics = tokenizer_report(model, judge=judge)
        if args.kind == "onedpiece":
            lengths = prefix_lengths(model.config.num_latent_tokens)
            metrics["psnr_vs_length"] = prefix_curve(model, lengths)
            metrics["judge_vs_length"] = prefix_adherence(model, judge, lengths)
        metrics.update(steps=step + 1, threads=torch.get_num_threads(), init_from=args.init_from,
                       **log.record(step + 1))
        export_with_metrics(model, args.out, metrics)


if __name__ == "__main__":
    main()
