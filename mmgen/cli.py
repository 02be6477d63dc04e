"""``mmgen`` command line: generate images, batch-generate folders, show shipped models and their figures."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _atomic_save(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def image_grid(images, cols: int | None = None):
    from PIL import Image

    cols = cols or min(len(images), 8)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's recommended)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--decoding", default="ar", help="decoder name (ar, sjd, gsd, lantern, ...)")
    p.add_argument("--decoding-options", default="{}", help="JSON dict of decoder options")
    p.add_argument("--threads", type=int, default=None)


def load_pipeline(model: str):
    from .assets import model_path
    from .pipelines import ARImagePipeline

    pipe = ARImagePipeline.from_pretrained(model_path(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def recommended(model_dir: Path) -> dict:
    f = Path(model_dir) / "recommended.json"
    return json.loads(f.read_text()) if f.exists() else {"guidance_scale": 3.0}


def cmd_generate(args) -> int:
    import torch

    from .assets import model_path
    from .train.common import set_threads

    set_threads(args.threads)
    if (args.prompt is None) == (args.class_id is None):
        raise ValueError("pass exactly one of --prompt and --class")
    model = args.model or ("scenes-t2i" if args.prompt is not None else "digits-c2i")
    pipe = load_pipeline(model)
    rec = recommended(model_path(model))
    kw = dict(prompt=args.prompt) if args.prompt is not None else dict(class_labels=args.class_id)
    out = pipe(**kw, num_images_per_prompt=args.batch,
               guidance_scale=args.cfg if args.cfg is not None else rec.get("guidance_scale", 3.0),
               top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
               generator=torch.Generator().manual_seed(args.seed), decoding=args.decoding,
               decoding_options=json.loads(args.decoding_options))
    out_path = Path(args.out)
    if len(out.images) == 1:
        _atomic_save(out.images[0], out_path)
    else:
        for i, im in enumerate(out.images):
            _atomic_save(im, out_path.with_name(f"{out_path.stem}_{i}{out_path.suffix or '.png'}"))
        _atomic_save(image_grid(out.images), out_path)
    print(json.dumps({"out": str(out_path), "stats": out.stats.to_dict()}))
    return 0


def cmd_info(args) -> int:
    from .assets import assets_dir

    root = assets_dir()
    info = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        entry = {}
        for name in ("metrics.json", "training.json", "eval.json", "recommended.json"):
            if (d / name).exists():
                entry[name[:-5]] = json.loads((d / name).read_text())
        info[d.name] = entry
    print(json.dumps(info, indent=2))
    return 0


def _class_list(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes must be comma-separated integers, got {text!r}") from None


def cmd_batch(args) -> int:
    """Prompts file or class list -> PNGs + metadata.jsonl + grid.png (resumable, multi-process)."""
    from .pipelines.batch import read_items, run_batch
    from .train.common import set_threads

    set_threads(args.threads)
    try:
        options = json.loads(args.decoding_options)
    except json.JSONDecodeError as e:
        raise ValueError(f"--decoding-options must be a JSON object: {e.msg}") from None
    if not isinstance(options, dict):
        raise ValueError("--decoding-options must be a JSON object")
    items = read_items(args.input, classes=args.classes, per_class=args.per_class, base_seed=args.seed)
    summary = run_batch(items, args.out, args.model, decoding=args.decoding, decoding_options=options,
                        guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                        batch_size=args.batch_size, cpu=True if args.cpu else None, grid_max=args.grid_max,
                        progress=not args.no_progress)
    if summary["process_index"] == 0:
        print(json.dumps(summary))
    from accelerate import PartialState

    if PartialState().use_distributed:
        PartialState().destroy_process_group()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmgen", description="token-based multimodal generation")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate images from a prompt or a class id")
    g.add_argument("--prompt", default=None)
    g.add_argument("--class", dest="class_id", type=int, default=None)
    g.add_argument("--model", default=None, help="shipped model name or local pipeline folder")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=1, help="images to generate")
    g.add_argument("--out", default="out.png")
    add_sampling_args(g)
    g.set_defaults(fn=cmd_generate)
    b = sub.add_parser("batch", help="generate a folder of images (+ metadata.jsonl, grid.png) from a prompts "
                       "file or class list; resumable; split across processes under torchrun / accelerate launch")
    b.add_argument("input", nargs="?", default=None, help="prompts .txt (one per line) or .jsonl "
                   '({"prompt": ..., "seed": ...} or {"class_label": ...} per line)')
    b.add_argument("--classes", type=_class_list, default=None, help="comma-separated class ids, e.g. 0,1,2")
    b.add_argument("--per-class", type=int, default=1, help="images per class with --classes")
    b.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    b.add_argument("--model", default=None, help="shipped model name or local pipeline folder "
                   "(default: scenes-t2i for prompts, digits-c2i for classes)")
    b.add_argument("--seed", type=int, default=0, help="base seed: item i uses seed + i unless its jsonl line sets one")
    b.add_argument("--batch-size", type=int, default=8, help="items per forward batch (fixed chunks of indices)")
    b.add_argument("--grid-max", type=int, default=64, help="items in the preview grid (0 = no grid)")
    b.add_argument("--cpu", action="store_true", help="force CPU (gloo) even when CUDA is available")
    b.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    add_sampling_args(b)
    b.set_defaults(fn=cmd_batch)
    i = sub.add_parser("info", help="list shipped models and their measured figures")
    i.set_defaults(fn=cmd_info)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:
        print(f"mmgen: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
