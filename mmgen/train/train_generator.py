"""Train an AR generator on VQ codes and export a pipeline folder.

    python -m mmgen.train.train_generator --task scenes --out assets/scenes-t2i
    python -m mmgen.train.train_generator --task digits --out assets/digits-c2i
    python -m mmgen.train.train_generator --task digits --order nar --out assets/digits-c2i-nar

``scenes``: text-to-image; the small text encoder and its word-level tokenizer are trained
jointly with the generator and saved beside it. ``digits``: class-to-image on real digits
(train split, with +-2 px shifts). Codes are extracted once with the shipped VQ tokenizer
(LlamaGen pre-extracts codes too). Condition dropout 0.1 trains the null condition for CFG.
One CPU process here; unchanged under ``accelerate launch``. Resumable from ``--work``.

``--init-from`` warm-starts a NAR / NBP generator from a trained raster one (the shipped scenes NAR / NBP
models are made this way). Deviation from both papers, which train their parallel generators from scratch:
on 2 CPU cores it is what brings them within a few points of the raster model (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

from ..data import SceneDataset, load_digits_rgb, to_tensor
from ..data.scenes import caption_vocabulary
from ..models import ARTransformer, Condition
from ..models.text import build_text_encoder, build_text_tokenizer, encode_prompts
from ..tokenizers_visual import VQTokenizer, load_tokenizer
from ..records import command_line
from .common import (SegmentLog, adamw, atomic_dir, check_resumable, check_train_args, load_trainer_state,
                     optimizer_from_safetensors, restore_rng, save_checkpoint, set_threads)

TEXT_LEN = 24
PRESETS = {
    "scenes": dict(dim=160, n_layers=4, n_heads=5, grid_size=16, caption_dim=96, prefix_len=TEXT_LEN),
    "digits": dict(dim=128, n_layers=4, n_heads=4, grid_size=8, num_classes=10, prefix_len=1),
}


@torch.no_grad()
def extract_codes(vq: VQTokenizer, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> codes (N, h*w) int16."""
    vq.eval()
    return torch.cat([vq.encode(to_tensor(images[i:i + batch])).ids.short() for i in range(0, len(images), batch)])


def tokenizer_digest(folder: "str | Path") -> str:
    """12 hex digits identifying a tokenizer folder's config and weights (the code cache's key)."""
    h = hashlib.sha1()
    for f in sorted(Path(folder).iterdir()):
        if f.suffix in (".json", ".safetensors") and f.name != "metrics.json":
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def scene_data(vq, n: int, cache: Path, tag: str) -> tuple[torch.Tensor, list[str]]:
    """Codes of the first ``n`` training scenes under ``vq``, cached in ``cache`` under ``tag`` (the tokenizer's
    digest: a retrained tokenizer never reads another's codes)."""
    f = cache / f"scene_codes_{n}_{tag}.safetensors"
    ds = SceneDataset(n, seed=1)
    captions = [ds.spec(i).caption() for i in range(n)]
    if f.exists():
        from safetensors.torch import load_file
        return load_file(str(f))["codes"], captions
    from safetensors.torch import save_file
    codes = torch.cat([extract_codes(vq, np.stack([ds[j][0] for j in range(i, min(n, i + 5000))]))
                       for i in range(0, n, 5000)])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
    save_file({"codes": codes}, str(tmp))
    os.replace(tmp, f)  # atomic: a killed run leaves no truncated cache
    return codes, captions


def digit_data(vq: VQTokenizer, shift: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits_rgb("train")
    xs, ys = [], []
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            xs.append(np.roll(x, (dy, dx), axis=(1, 2)))
            ys.append(y)
    return extract_codes(vq, np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def generator_config(tok, task: str) -> dict:
    """The task preset with the token grid taken from the tokenizer's layout (1D sequences as one row,
    Hita's holistic tokens as leading rows with their own id range)."""
    layout = tok.layout_for(64 if task == "scenes" else 32)
    rows, cols = layout.generator_grid()
    cfg = dict(PRESETS[task], grid_size=rows, grid_width=0 if rows == cols else cols)
    if layout.kind == "holistic+grid":
        cfg.update(holistic_tokens=layout.num_holistic, holistic_vocab=tok.config.holistic_codebook_size)
    return cfg


def warm_start(model: ARTransformer, text_encoder, folder: Path, vq):
    """Load a trained generator's weights (pipeline ``folder``) into a fresh ``model`` of any order -> the text
    encoder to train (the folder's, for text-to-image). The backbone, embeddings, condition projection and base
    head must match exactly; parameters only the new order has (the NAR down block / norm / head, NBP's
    begin-of-image queries) keep their fresh init. The folder's tokenizer must equal ``vq`` weight for weight."""
    src_tok = load_tokenizer(folder / "vq")
    a, b = src_tok.state_dict(), vq.state_dict()
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise ValueError(f"--init-from {folder}: its tokenizer differs from --tokenizer; the codes would not match")
    src = ARTransformer.from_pretrained(folder / "transformer")
    keep = ("grid_size", "grid_width", "vocab_size", "dim", "n_layers", "n_heads", "num_classes", "caption_dim",
            "prefix_len")
    diff = {k: (src.config[k], model.config[k]) for k in keep if src.config[k] != model.config[k]}
    if diff:
        raise ValueError(f"--init-from {folder}: transformer config differs (source, new): {diff}")
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    new_only = ("down_block.", "down_norm.", "down_output.", "bov_embeddings")
    if unexpected or any(not k.startswith(new_only) for k in missing):
        raise ValueError(f"--init-from {folder}: weights do not fit (missing {missing}, unexpected {unexpected})")
    if text_encoder is None:
        return None
    from transformers import BertModel
    return BertModel.from_pretrained(folder / "text_encoder", use_safetensors=True)


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(PRESETS), required=True)
    ap.add_argument("--order", choices=["raster", "nar", "nbp"], default="raster",
                    help="generation order: raster (AR), nar (next-neighbour), nbp (next-block)")
    ap.add_argument("--block-rows", type=int, default=1, help="nbp: rows per block (a divisor of the grid height)")
    ap.add_argument("--block-size", type=int, default=0,
                    help="nbp: tokens per block instead of whole rows (a divisor of the grid's token count, e.g. 8 "
                         "= half a 16-wide row); 0 = --block-rows")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", "--vq", dest="vq", default="assets/vq",
                    help="folder of any mmgen visual tokenizer (VQ, SEED, TokenFlow, Hita, One-D-Piece)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--num-scenes", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop early (and export) after this long")
    ap.add_argument("--cache-dir", default="runs/cache", help="where the scenes' token codes are cached")
    ap.add_argument("--init-from", default=None,
                    help="warm start: pipeline folder of a trained generator for the same task and tokenizer (e.g. "
                         "the raster assets/scenes-t2i for a NAR / NBP run); its transformer and text encoder "
                         "weights are loaded before step 0, the new order's extra parameters keep their init")
    args = ap.parse_args(argv)
    check_train_args(args)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    suffix = "" if args.order == "raster" else f"_{args.order}"
    work = Path(args.work or f"runs/train_{args.task}{suffix}")
    acc = Accelerator(cpu=not torch.cuda.is_available())
    vq = load_tokenizer(args.vq)
    t_start = time.time()

    text_encoder = tokenizer = None
    if args.task == "scenes":
        codes, captions = scene_data(vq, args.num_scenes, Path(args.cache_dir), tokenizer_digest(args.vq))
        tokenizer = build_text_tokenizer(caption_vocabulary(), TEXT_LEN)
        text_encoder = build_text_encoder(len(tokenizer), max_length=TEXT_LEN)
    else:
        codes, labels = digit_data(vq)
    model = ARTransformer(vocab_size=vq.vocab_size, order=args.order, block_rows=args.block_rows,
                          block_size=args.block_size,
                          **generator_config(vq, args.task))
    step = 0
    if load_trainer_state(work) is not None:
        step = load_trainer_state(work)["step"]
        check_resumable(step, args.steps, work)
        model = ARTransformer.from_pretrained(work / "transformer")
        if text_encoder is not None:
            from transformers import BertModel
            text_encoder = BertModel.from_pretrained(work / "text_encoder", use_safetensors=True)
        acc.print(f"resuming from step {step}")
    elif args.init_from:
        text_encoder = warm_start(model, text_encoder, Path(args.init_from), vq)
        acc.print(f"warm start from {args.init_from}")
    log = SegmentLog(work, step, command_line("python -m mmgen.train.train_generator", argv), started=t_start)
    params = list(model.parameters()) + (list(text_encoder.parameters()) if text_encoder is not None else [])
    opt = adamw(params, args.lr)
    if step:
        optimizer_from_safetensors(opt, work / "optimizer.safetensors")
    model, opt = acc.prepare(model, opt)
    if text_encoder is not None:
        text_encoder = acc.prepare(text_encoder)

    g = torch.Generator().manual_seed(args.seed * 1000 + step)
    # batches / condition dropout (g) and dropout inside the models (global): restored on resume, so a resumed run
    # equals an uninterrupted one (checkpoints written before rng.safetensors existed fall back to the seed above)
    rng = {"batches": g, "torch": "torch"}
    if step:
        restore_rng(work, rng)
    codes = codes.long()
    n_train = len(codes)
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, disable=not acc.is_main_process)
    for step in bar:
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        idx = torch.randint(n_train, (args.batch,), generator=g)
        tokens = codes[idx].to(acc.device)
        drop = torch.rand(args.batch, generator=g) < model.config.class_dropout_prob
        if args.task == "scenes":
            text_encoder.train()
            feats, mask = encode_prompts(text_encoder, tokenizer, [captions[int(i)] for i in idx], TEXT_LEN, acc.device)
            cond = Condition(text_features=feats, text_mask=mask)
        else:
            cond = Condition(class_labels=labels[idx].to(acc.device))
        logits = model(tokens, cond, drop_condition=drop.to(acc.device))
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1 == args.steps or (args.max_minutes and time.time() - t_start > 60 * args.max_minutes)
        if (step + 1) % args.save_every == 0 or done:
            models = {"transformer": acc.unwrap_model(model)}
            if text_encoder is not None:
                models["text_encoder"] = acc.unwrap_model(text_encoder)
            save_checkpoint(work, models, opt, step + 1, extra=log.state(step + 1), rng=rng)
        if done:
            break
    if not acc.is_main_process:
        return
    from ..pipelines import ARImagePipeline

    model = acc.unwrap_model(model).eval()
    pipe = ARImagePipeline(transformer=model, vq=vq, text_encoder=text_encoder and acc.unwrap_model(text_encoder).eval(),
                           tokenizer=tokenizer)
    info = {"task": args.task, "steps": step + 1, "batch": args.batch, "final_loss": round(loss.item(), 4),
            "threads": torch.get_num_threads(), "tokenizer": args.vq,
            "num_scenes": args.num_scenes if args.task == "scenes" else None, "lr": args.lr, "seed": args.seed,
            "init_from": args.init_from,
            **log.record(step + 1)}
    with atomic_dir(args.out) as tmp:  # the pipeline and its record, or nothing
        pipe.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
