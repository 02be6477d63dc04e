"""Train SEED's generative renderer (unCLIP's role) and export the SEED tokenizer with it.

    python -m mmgen.train.train_seed_renderer --tokenizer runs/tok-seed-vqitg --init-from assets/scenes-t2i \\
        --out runs/tok-seed-render --work runs/train_seed_render --steps 1800 --threads 1

SEED (Ge et al. 2023) decodes its 32 causal tokens with a *pretrained* diffusion model (Stable unCLIP) that reads
them as its condition. Here the pretrained image model is the text-to-image AR generator ``--init-from`` (over the
same frozen VQ that SEED's Q-Former reads, ``vision_vq``): its backbone, token embeddings and head are loaded, its
caption projection's first layer and null prefix are new (the prefix is now the 32 decoded codes,
``SEEDTokenizer.render_condition``), and it is fine-tuned to predict the VQ code grid of a scene from its SEED
tokens (condition dropout 0.1 for CFG). The SEED tokenizer itself stays frozen; the export is the same tokenizer
(identical ids) with the renderer inside, so ``decode`` samples images. Resumable from ``--work``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..decoding.sampling import check_guidance, check_temperature
from ..models import ARTransformer
from ..records import command_line
from ..tokenizers_visual import SEEDTokenizer, load_tokenizer
from ..tokenizers_visual.base import init_args
from .common import (SegmentLog, adamw, check_resumable, check_train_args, export_with_metrics, load_trainer_state,
                     optimizer_from_safetensors, restore_rng, save_checkpoint, set_threads)
from .train_generator import lr_at, scene_data, tokenizer_digest

# the renderer's backbone: the scenes text-to-image preset, so a scenes-t2i generator can warm-start it
RENDERER = dict(dim=160, n_layers=4, n_heads=5)


def warm_start(renderer: ARTransformer, folder: Path, vision) -> list[str]:
    """Load a trained raster generator's weights (pipeline ``folder``, same VQ as ``vision``) into ``renderer``;
    -> the parameter names left at their init (the condition's input layer and null prefix)."""
    src_vq = load_tokenizer(folder / "vq")
    a, b = src_vq.state_dict(), vision.state_dict()
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise ValueError(f"--init-from {folder}: its tokenizer is not the SEED tokenizer's vision VQ")
    src = ARTransformer.from_pretrained(folder / "transformer").state_dict()
    own = renderer.state_dict()
    fits = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape and k != "uncond_embedding"}
    renderer.load_state_dict(fits, strict=False)
    return sorted(set(own) - set(fits))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="a trained SEEDTokenizer folder with vision_vq")
    ap.add_argument("--init-from", default=None, help="pipeline folder of a raster t2i generator over vision_vq")
    ap.add_argument("--out", required=True, help="where the SEED tokenizer with its renderer is written")
    ap.add_argument("--work", default="runs/train_seed_render")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--num-scenes", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop early (and export) after this long")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--render-guidance", type=float, default=1.5, help="the exported decode's default CFG scale")
    ap.add_argument("--render-temperature", type=float, default=1.0, help="the exported decode's default temperature")
    ap.add_argument("--renderer-config", type=json.loads, default=None,
                    help="JSON ARTransformer arguments for the renderer (default: the scenes t2i backbone)")
    args = ap.parse_args(argv)
    check_train_args(args)
    check_guidance(args.render_guidance, "--render-guidance")  # the SEEDTokenizer's own check, before training
    check_temperature(args.render_temperature, name="--render-temperature")
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    work = Path(args.work)
    seed = SEEDTokenizer.from_pretrained(args.tokenizer).eval().requires_grad_(False)
    if seed.vision is None:
        raise ValueError(f"--tokenizer {args.tokenizer}: the renderer needs a SEED tokenizer trained with vision_vq")
    cache, digest = Path(args.cache_dir), tokenizer_digest(args.tokenizer)
    grid_ids, _ = scene_data(seed.vision, args.num_scenes, cache, f"{digest}-vision")  # (N, 256)
    seed_ids, _ = scene_data(seed, args.num_scenes, cache, digest)  # (N, 32): the generator's cache too
    seed_ids, grid_ids = seed_ids.long(), grid_ids.long()

    step = 0
    if load_trainer_state(work) is not None:
        step = load_trainer_state(work)["step"]
        check_resumable(step, args.steps, work)
        renderer = ARTransformer.from_pretrained(work / "renderer")
        print(f"resuming from step {step}")
    else:
        renderer = seed.build_renderer(args.renderer_config or RENDERER)
        if args.init_from:
            fresh = warm_start(renderer, Path(args.init_from), seed.vision)
            print(f"warm start from {args.init_from}; new: {fresh}")
    log = SegmentLog(work, step, command_line("python -m mmgen.train.train_seed_renderer", argv), started=t_start)
    params = list(renderer.parameters())
    opt = adamw(params, args.lr)
    if step:
        optimizer_from_safetensors(opt, work / "optimizer.safetensors")
    g = torch.Generator().manual_seed(args.seed * 1000 + step)
    rng = {"batches": g, "torch": "torch"}
    if step:
        restore_rng(work, rng)
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps)
    for step in bar:
        renderer.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        idx = torch.randint(len(grid_ids), (args.batch,), generator=g)
        tokens = grid_ids[idx]  # (b, 256) the frozen VQ's codes
        with torch.no_grad():
            cond = seed.render_condition(seed_ids[idx])  # prefix (b, 32, W)
        drop = torch.rand(args.batch, generator=g) < renderer.config.class_dropout_prob
        loss = F.cross_entropy(renderer(tokens, cond, drop_condition=drop).flatten(0, 1), tokens.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1 == args.steps or (args.max_minutes and time.time() - t_start > 60 * args.max_minutes)
        if (step + 1) % args.save_every == 0 or done:
            save_checkpoint(work, {"renderer": renderer}, opt, step + 1, extra=log.state(step + 1), rng=rng)
        if done:
            break

    out = SEEDTokenizer(**{**init_args(seed.config), "renderer": init_args(renderer.config),
                           "render_guidance": args.render_guidance, "render_temperature": args.render_temperature})
    missing, unexpected = out.load_state_dict(seed.state_dict(), strict=False)
    if unexpected or any(not k.startswith("render_transformer.") for k in missing):
        raise RuntimeError(f"tokenizer weights do not fit (missing {missing}, unexpected {unexpected})")
    out.render_transformer.load_state_dict(renderer.state_dict())
    info = {"steps": step + 1, "batch": args.batch, "final_loss": round(loss.item(), 4), "lr": args.lr,
            "tokenizer": args.tokenizer, "init_from": args.init_from, "num_scenes": args.num_scenes,
            "threads": torch.get_num_threads(), **log.record(step + 1)}
    src = Path(args.tokenizer) / "metrics.json"  # the encoder's own training record travels with it
    if src.exists():
        info["tokenizer_training"] = {k: v for k, v in json.loads(src.read_text()).items()
                                      if k in ("steps", "train_seconds", "command", "segments")}
    export(out, args.out, info)


def export(tok: SEEDTokenizer, folder, info: dict) -> None:
    """Write ``tok`` with its figures (the tokenizer report of the renderer's sampled decode, generator seed 0, and
    the judge on reconstructed held-out scenes) and the training record ``info`` as metrics.json, atomically."""
    from ..eval.evaluate import load_judges
    from ..eval.tokenizer_metrics import tokenizer_report

    export_with_metrics(tok.eval(), folder, {**tokenizer_report(tok, judge=load_judges()[0]), "renderer": info})


if __name__ == "__main__":
    main()
