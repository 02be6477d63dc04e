"""Batch generation: prompts or class labels -> one PNG per item, ``metadata.jsonl`` and a preview grid.

Guarantees:

* **Seeds**: item ``i`` uses ``base_seed + i`` (or its own ``"seed"`` from a jsonl line) with its own
  ``torch.Generator``; items are batched in fixed chunks of ``batch_size`` consecutive indices and whole
  chunks are split between processes, so an item's pixels depend neither on the number of processes nor
  on which items were already done.
* **Atomic + resumable**: every file is written to a hidden temp file and ``os.replace``d; an item's
  record (``.parts/<index>.json``) is written only after its PNG is in place, and an item counts as done
  when both exist. A killed run leaves only complete files; rerunning the same command finishes the rest.
* **Scale-out**: ``accelerate.PartialState`` + ``split_between_processes``; each rank writes its own
  items; after ``wait_for_everyone`` rank 0 merges the records into ``metadata.jsonl`` (sorted by index)
  and writes ``grid.png``. Works under ``torchrun`` (CPU/gloo) and ``accelerate launch --multi_gpu``.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

METADATA = "metadata.jsonl"
GRID = "grid.png"
PARTS = ".parts"


@dataclass(frozen=True)
class BatchItem:
    """One image to generate: exactly one of ``prompt`` / ``class_label``."""

    index: int
    seed: int
    prompt: "str | None" = None
    class_label: "int | None" = None

    @property
    def filename(self) -> str:
        return f"{self.index:05d}.png"

    def condition(self) -> dict:
        return {"prompt": self.prompt} if self.prompt is not None else {"class_label": self.class_label}


MAX_SEED = 2 ** 63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


def _as_seed(value, what: str) -> int:
    """An integer torch.Generator.manual_seed takes, checked when items are read rather than mid-run."""
    if not 0 <= _as_int(value, what) <= MAX_SEED:
        raise ValueError(f"{what} must be an integer in [0, 2**63 - 1], got {value!r}")
    return value


def json_settings(settings: dict) -> dict:
    """A run's settings as plain JSON values (numpy scalars become Python numbers), checked before any file is
    written: every record repeats them, and a value JSON cannot hold would otherwise fail after its image exists."""
    def plain(v):  # json.dumps hook: numpy / torch scalars at any depth
        if hasattr(v, "item") and getattr(v, "ndim", None) == 0:
            return v.item()
        raise TypeError(type(v).__name__)

    out = {}
    for key, value in settings.items():
        try:
            out[key] = json.loads(json.dumps(value, default=plain))
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, string, list or dict of them (it is recorded in metadata), "
                             f"got {value!r}") from None
    return out


def read_items(source: "str | os.PathLike | None" = None, classes: "list[int] | None" = None,
               per_class: int = 1, base_seed: int = 0) -> list[BatchItem]:
    """Items from a ``.txt`` (one prompt per line), a ``.jsonl`` (``{"prompt": ..., "seed": ...}`` or
    ``{"class_label": ...}`` per line) or ``classes`` x ``per_class``. Seeds default to base_seed + index."""
    base_seed = _as_seed(base_seed, "seed")
    if (source is None) == (classes is None):
        raise ValueError("pass exactly one of a prompts file (source) and classes")
    raw: list[dict] = []
    if classes is not None:
        if not classes:
            raise ValueError("classes must be a non-empty list of class ids")
        if _as_int(per_class, "per_class") < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        raw = [{"class_label": _as_int(c, "classes entry")} for c in classes for _ in range(per_class)]
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"source: no such file {str(path)!r}")
        lines = [(n, ln.strip()) for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
        lines = [(n, ln) for n, ln in lines if ln]
        if path.suffix == ".txt":
            raw = [{"prompt": ln} for _, ln in lines]
        elif path.suffix == ".jsonl":
            for n, ln in lines:
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError as e:
                    raise ValueError(f"source: {path.name} line {n} is not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict) or ("prompt" in rec) == ("class_label" in rec):
                    raise ValueError(f"source: {path.name} line {n} needs exactly one of 'prompt' and 'class_label'")
                unknown = set(rec) - {"prompt", "class_label", "seed"}
                if unknown:
                    raise ValueError(f"source: {path.name} line {n} has unknown keys {sorted(unknown)}")
                raw.append(rec)
        else:
            raise ValueError(f"source must be a .txt or .jsonl file, got {path.name!r}")
    if not raw:
        raise ValueError("source holds no items")
    if len({"prompt" in r for r in raw}) > 1:
        raise ValueError("source mixes prompts and class labels; one run uses one model")
    items = []
    for i, r in enumerate(raw):
        seed = _as_seed(r["seed"], f"seed of item {i}") if "seed" in r else base_seed + i
        if "prompt" in r:
            if not isinstance(r["prompt"], str) or not r["prompt"].strip():
                raise ValueError(f"prompt of item {i} must be a non-empty string, got {r['prompt']!r}")
            items.append(BatchItem(i, seed, prompt=r["prompt"].strip()))
        else:
            items.append(BatchItem(i, seed, class_label=_as_int(r["class_label"], f"class_label of item {i}")))
    return items


def atomic_write_json(path: "str | Path", obj) -> None:
    """``obj`` as indented JSON to ``path`` (parent folders made), atomically: a crash leaves the old file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, indent=2).encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temp file next to ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def pending_chunks(items: list, batch_size: int, done) -> list[list]:
    """Fixed chunks of ``batch_size`` items (the same on every run and rank) that still hold an unfinished item."""
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    return [c for c in chunks if any(it.index not in done for it in c)]


def load_records(out: Path, key: str = "index") -> dict[int, dict]:
    """Finished items' records (``metadata.jsonl`` and per-item parts) whose output file exists, by ``key``."""
    recs: list[dict] = []
    if (out / METADATA).exists():
        recs += [json.loads(ln) for ln in (out / METADATA).read_text().splitlines() if ln.strip()]
    if (out / PARTS).is_dir():
        recs += [json.loads(p.read_text()) for p in sorted((out / PARTS).glob("*.json"))]
    return {r[key]: r for r in recs if (out / r["file"]).exists()}


def merge_records(out: Path, key: str = "index") -> dict[int, dict]:
    """Rank 0, after every rank finished: write all records to ``metadata.jsonl`` (sorted) and drop the parts."""
    records = load_records(out, key)
    lines = "".join(json.dumps(records[i]) + "\n" for i in sorted(records))
    atomic_write_bytes(out / METADATA, lines.encode())
    for p in (out / PARTS).glob("*.json"):  # merged: metadata.jsonl now holds them
        p.unlink()
    try:
        (out / PARTS).rmdir()
    except OSError:  # a foreign file inside; leave it
        pass
    return records


def _remove_stale_temp_files(out: Path) -> None:
    for d in (out, out / PARTS):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)


def open_run(out_dir: "str | os.PathLike", cpu: "bool | None" = None, key: str = "index"):
    """This process's ``PartialState`` (CPU/gloo when ``cpu`` or no CUDA), the output folder and the finished
    records (by ``key``), read by every rank before anyone writes; temp files of a killed run are removed."""
    from accelerate import PartialState

    threads = torch.get_num_threads()
    state = PartialState(cpu=(not torch.cuda.is_available()) if cpu is None else cpu)
    torch.set_num_threads(threads)  # accelerate may change it on MULTI_CPU; keep the caller's choice
    out = Path(out_dir)
    if state.is_main_process:
        (out / PARTS).mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(out)
    state.wait_for_everyone()
    done = load_records(out, key)
    state.wait_for_everyone()
    return state, out, done


def write_grid(out: Path, items: list[BatchItem], grid_max: int) -> "Path | None":
    """A preview grid of the first ``grid_max`` items (atomic)."""
    from PIL import Image

    from ..cli import image_grid

    files = [out / it.filename for it in items[:grid_max] if (out / it.filename).exists()]
    if not files:
        return None
    images = [Image.open(f).convert("RGB") for f in files]
    grid = image_grid(images, cols=min(len(images), max(1, math.ceil(math.sqrt(len(images))))))
    atomic_write_bytes(out / GRID, png_bytes(grid))
    return out / GRID


def run_batch(items: list[BatchItem], out_dir: "str | os.PathLike", model: "str | None" = None, *,
              decoding: "str | None" = None, decoding_options: "dict | None" = None,
              guidance_scale: "float | None" = None, top_k: int = 0, top_p: float = 1.0,
              temperature: "float | None" = None, batch_size: int = 8, cpu: "bool | None" = None, grid_max: int = 64,
              progress: bool = True) -> dict:
    """Generate every unfinished item into ``out_dir`` on this process's share; returns a summary.

    ``model``: pipeline folder or shipped name (default ``scenes-t2i`` for prompts, ``digits-c2i`` for
    classes; ``decoding="nar"``/``"nbp"`` on a shipped raster name uses its ``-nar``/``-nbp`` companion).
    ``decoding``: registered name, ``None`` = the generator's own order. ``guidance_scale`` /
    ``temperature`` ``None``: the checkpoint's ``recommended.json`` (else ``mmgen.cli.SAMPLING_DEFAULTS``). ``cpu``: passed to
    ``PartialState`` (default: True when CUDA is unavailable).
    """
    from tqdm.auto import tqdm

    from ..assets import model_for_decoding, model_path
    from ..cli import load_pipeline, recommended
    from ..decoding import SamplingConfig, get_decoder

    if not items:
        raise ValueError("items must be a non-empty list")
    if _as_int(batch_size, "batch_size") < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if _as_int(grid_max, "grid_max") < 0:
        raise ValueError(f"grid_max must be >= 0, got {grid_max}")
    if sorted(it.index for it in items) != list(range(len(items))):
        raise ValueError("items must be indexed 0..n-1 (use read_items)")
    by_class = items[0].class_label is not None
    ckpt = model_path(model_for_decoding(model, decoding, "digits-c2i" if by_class else "scenes-t2i")).resolve()
    rec = recommended(ckpt) if guidance_scale is None or temperature is None else {}
    if guidance_scale is None:
        guidance_scale = float(rec["guidance_scale"])
    if temperature is None:
        temperature = float(rec["temperature"])
    SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)  # validates, names the argument
    if decoding is None:  # the generator's own order, read from its config without loading weights
        from ..models.ar_transformer import decoding_for_order

        config = json.loads((ckpt / "transformer" / "config.json").read_text())
        decoding = decoding_for_order(config.get("order", "raster"))
    if not isinstance(decoding, str):
        raise ValueError(f"decoding must be a registered decoder name (it is recorded in metadata), got {decoding!r}")
    decoding_options = dict(decoding_options or {})
    try:  # validates name and options before any work
        get_decoder(decoding, **decoding_options)
    except TypeError as e:
        raise ValueError(f"decoding_options {sorted(decoding_options)} are not accepted by {decoding!r}: {e}") from None
    settings = json_settings({"checkpoint": str(ckpt), "decoding": decoding, "decoding_options": decoding_options,
                              "guidance_scale": guidance_scale, "top_k": top_k, "top_p": top_p,
                              "temperature": temperature})

    state, out, done = open_run(out_dir, cpu)
    for it in items:
        rec = done.get(it.index)
        if rec is None:
            continue
        mine = {**settings, **it.condition(), "seed": it.seed}
        theirs = {k: rec.get(k) for k in mine}
        if theirs != json.loads(json.dumps(mine)):
            raise ValueError(f"out_dir {str(out)!r} already holds item {it.index} made with different settings "
                             f"({theirs} != {mine}); use a new folder")

    pipe = load_pipeline(str(ckpt)).to(state.device)
    if pipe.is_class_conditional != by_class:
        kind = "class labels" if by_class else "prompts"
        raise ValueError(f"model {str(ckpt)!r} does not take {kind}")
    if by_class:
        n_cls = pipe.transformer.config.num_classes
        bad = sorted({it.class_label for it in items if not 0 <= it.class_label < n_cls})
        if bad:
            raise ValueError(f"class_label must lie in [0, {n_cls - 1}], got {bad}")

    pending = pending_chunks(items, batch_size, done)
    generated = 0
    with state.split_between_processes(pending) as my_chunks:
        todo = sum(1 for c in my_chunks for it in c if it.index not in done)
        bar = tqdm(total=todo, desc=f"rank {state.process_index}/{state.num_processes}", unit="img",
                   position=state.process_index, disable=not progress or todo == 0)
        for chunk in my_chunks:
            cond = ({"class_labels": [it.class_label for it in chunk]} if by_class
                    else {"prompt": [it.prompt for it in chunk]})
            gens = [torch.Generator(device=state.device).manual_seed(it.seed) for it in chunk]
            res = pipe(**cond, guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, temperature=temperature,
                       generator=gens, decoding=decoding, decoding_options=decoding_options, output_type="pil")
            stats = res.stats.to_dict()
            stats["accepted_length_histogram"] = {str(k): v for k, v in stats["accepted_length_histogram"].items()}
            for it, image in zip(chunk, res.images):
                if it.index in done:
                    continue
                atomic_write_bytes(out / it.filename, png_bytes(image))  # PNG first, then its record
                rec = {"index": it.index, "file": it.filename, **it.condition(), "seed": it.seed, **settings,
                       "stats": stats, "rank": state.process_index, "world_size": state.num_processes}
                atomic_write_bytes(out / PARTS / f"{it.index:05d}.json", json.dumps(rec).encode())
                generated += 1
                bar.update(1)
        bar.close()
    state.wait_for_everyone()
    summary = {"out": str(out), "items": len(items), "generated_here": generated, "skipped": len(done),
               "process_index": state.process_index, "num_processes": state.num_processes}
    if state.is_main_process:
        records = merge_records(out)
        grid = write_grid(out, items, grid_max) if grid_max else None
        summary.update(metadata=str(out / METADATA), grid=str(grid) if grid else None,
                       complete=all(it.index in records for it in items))
    state.wait_for_everyone()
    return summary
