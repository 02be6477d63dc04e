"""Training utilities shared by every trainer: threads, seeding, resumable safetensors checkpoints.

Checkpoints never use pickle: model weights go through ``save_pretrained`` (safetensors), the
optimizer state is flattened into a second safetensors file with its hyper-parameters as JSON
metadata. Every write goes to a temporary folder that is renamed into place, so an interrupted
run leaves either the previous checkpoint or the new one, never a partial file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


# option (argparse dest) -> smallest allowed value; checked by check_train_args when a trainer has the option
_AT_LEAST_ONE = ("steps", "batch", "save_every", "scene_steps", "digit_steps", "num_samples", "codebook_size",
                 "kmeans_frames")  # --threads: set_threads checks it, right after this in every trainer
_AT_LEAST_ZERO = ("warmup",)
_ABOVE_ZERO = ("lr", "max_minutes")  # max_minutes: None = no limit


def check_train_args(args) -> None:
    """Validate a trainer's parsed options up front, before any data is made or any file is written (a ``--steps 0``
    run would otherwise export an untrained model over ``--out``): a ValueError naming the option and its range."""
    def bad(name, rule, v):
        raise ValueError(f"--{name.replace('_', '-')} must be {rule}, got {v!r}")

    for name in _AT_LEAST_ONE + _AT_LEAST_ZERO + _ABOVE_ZERO:
        v = getattr(args, name, None)
        if v is None:
            continue
        if name in _AT_LEAST_ONE and not v >= 1:
            bad(name, ">= 1", v)
        if name in _AT_LEAST_ZERO and not v >= 0:
            bad(name, ">= 0", v)
        if name in _ABOVE_ZERO and not v > 0:  # also refuses NaN
            bad(name, "> 0" + (" (leave it out for no limit)" if name == "max_minutes" else ""), v)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads explicitly (default: ``MMGEN_THREADS`` or 1) and return it."""
    n = int(os.environ.get("MMGEN_THREADS", 1) if n is None else n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def _previous(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover_interrupted(final: str | os.PathLike) -> None:
    """A run killed between :func:`atomic_dir`'s two renames leaves only ``.<name>.old``: put it back."""
    final = Path(final)
    if not final.exists() and _previous(final).is_dir():
        _previous(final).rename(final)


def atomic_dir(final: str | os.PathLike):
    """Context manager yielding a temp folder next to ``final`` that replaces ``final`` on success."""
    final = Path(final)

    class _Ctx:
        def __enter__(self):
            final.parent.mkdir(parents=True, exist_ok=True)
            recover_interrupted(final)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
            self.tmp.chmod(0o755)  # mkdtemp makes it owner-only; exported model folders are for everyone
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            old = _previous(final)
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            self.tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
            return False

    return _Ctx()


def optimizer_to_safetensors(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    save_file(tensors, str(path), metadata=meta)


def optimizer_from_safetensors(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    state: dict = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for key, v in json.loads(meta["scalars"]).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = json.loads(meta["param_groups"])
    for g in groups:  # JSON turned tuples (betas) into lists
        for k, v in g.items():
            if k != "params" and isinstance(v, list):
                g[k] = tuple(v)
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(folder: str | os.PathLike, models: dict, optimizer: torch.optim.Optimizer | None,
                    step: int, extra: dict | None = None, rng: dict | None = None) -> None:
    """Atomically write ``models`` (name -> object with save_pretrained), optimizer and step to ``folder``;
    ``rng`` (name -> ``torch.Generator``, ``numpy.random.Generator`` or ``"torch"`` for torch's global generator)
    saves random states, so a resumed run draws exactly what an uninterrupted one would (:func:`restore_rng`)."""
    with atomic_dir(folder) as tmp:
        for name, m in models.items():
            m.save_pretrained(tmp / name)
        if optimizer is not None:
            optimizer_to_safetensors(optimizer, tmp / "optimizer.safetensors")
        if rng:
            tensors = {k: torch.get_rng_state() if g == "torch" else g.get_state()
                       for k, g in rng.items() if g == "torch" or isinstance(g, torch.Generator)}
            numpy_states = {k: g.bit_generator.state for k, g in rng.items() if isinstance(g, np.random.Generator)}
            save_file(tensors, str(tmp / "rng.safetensors"), metadata={"numpy": json.dumps(numpy_states)})
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=2))


def load_trainer_state(folder: str | os.PathLike) -> dict | None:
    recover_interrupted(folder)
    f = Path(folder) / "trainer_state.json"
    return json.loads(f.read_text()) if f.exists() else None


def restore_rng(folder: str | os.PathLike, rng: dict) -> bool:
    """Set the states saved by :func:`save_checkpoint` (same ``rng`` names); False if the folder has none."""
    f = Path(folder) / "rng.safetensors"
    if not f.exists():
        return False
    from safetensors import safe_open

    with safe_open(str(f), "pt") as fh:
        numpy_states = json.loads(fh.metadata()["numpy"])
    states = load_file(str(f))
    for k, g in rng.items():
        if isinstance(g, np.random.Generator):
            g.bit_generator.state = numpy_states[k]
        elif g == "torch":
            torch.set_rng_state(states[k])
        else:
            g.set_state(states[k])
    return True


def data_stream(work: str | os.PathLike, seed: int, step: int, **generators) -> tuple[np.random.Generator, dict]:
    """A resumable trainer's numpy data stream and the random states it saves with each checkpoint.

    Returns ``(rng, states)``: ``rng`` draws the batches, ``states`` (the data stream, torch's global generator
    and any ``generators`` passed by name) goes to :func:`save_checkpoint` as ``rng=``. At ``step > 0`` the
    states saved in ``work`` are restored, so a resumed run draws exactly what an uninterrupted one would."""
    rng = np.random.default_rng([seed, step])
    states = {"data": rng, "torch": "torch", **generators}
    if step:
        restore_rng(work, states)
    return rng, states


class SegmentLog:
    """What each run of a resumed training did: ``[{steps, threads, seconds, command}, ...]``, carried in the work
    folder's ``trainer_state.json`` (pass :meth:`state` as ``save_checkpoint(extra=...)``) and written into the
    exported record, so a model trained in several resumed runs keeps every run's command and time (work done after
    a segment's last checkpoint is not counted: it was lost)."""

    def __init__(self, work: str | os.PathLike, start_step: int, command: str, started: float | None = None):
        """``started``: this run's start (``time.time()``; default now), so data preparation can be counted."""
        prior = (load_trainer_state(work) or {}).get("segments", []) if start_step else []
        self.prior, self.start, self.command = list(prior), start_step, command
        self.t0 = time.time() if started is None else started

    def segments(self, step: int) -> list[dict]:
        """All segments, this one ending at ``step``."""
        return self.prior + [{"steps": f"{self.start}-{step}", "threads": torch.get_num_threads(),
                              "seconds": round(time.time() - self.t0, 1), "command": self.command}]

    def state(self, step: int) -> dict:
        return {"segments": self.segments(step)}

    def record(self, step: int) -> dict:
        """For the exported record: ``train_seconds`` (all segments), ``command`` (this run's) and ``segments``,
        from one reading of the clock."""
        segs = self.segments(step)
        return {"train_seconds": round(sum(seg["seconds"] for seg in segs), 1), "command": self.command,
                "segments": segs}


def resume_or_start(work: str | os.PathLike, name: str, model, make_optimizer):
    """(model, optimizer, step): ``model`` and ``make_optimizer(model)`` at step 0, or the checkpoint in ``work``
    written by :func:`save_checkpoint` under ``name`` (model class of ``model``, optimizer state, step)."""
    state = load_trainer_state(work)
    if state is None:
        return model, make_optimizer(model), 0
    model = type(model).from_pretrained(Path(work) / name)
    opt = make_optimizer(model)
    optimizer_from_safetensors(opt, Path(work) / "optimizer.safetensors")
    print(f"resuming from step {state['step']}")
    return model, opt, state["step"]


def adamw(params, lr: float) -> torch.optim.AdamW:
    """LlamaGen's optimizer: AdamW, betas (0.9, 0.95), weight decay 0.05 on matrices and embeddings only."""
    params = list(params)
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.05},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def check_resumable(step: int, steps: int, work) -> None:
    """A work folder already at (or past) ``--steps`` has nothing left to train: a clear error, not a re-export."""
    if step >= steps:
        raise ValueError(f"--steps ({steps}) must exceed the step already reached in {work} ({step}): "
                         "raise --steps to train on, or pass a new --work")


def check_photo_frac(photo_frac: float, batch: int) -> int:
    """--photo-frac in [0, 1) -> photo crops per batch, leaving at least one scene."""
    if not 0 <= photo_frac < 1:
        raise ValueError(f"--photo-frac must be in [0, 1), got {photo_frac}")
    n_photo = int(round(batch * photo_frac))
    if n_photo >= batch:
        raise ValueError(f"--photo-frac {photo_frac} leaves no scene in a batch of {batch}: lower it or raise --batch")
    return n_photo


def cosine_lr(optimizer: torch.optim.Optimizer, base: float, step: int, total: int, warmup: int = 0) -> None:
    """Set every group's lr: linear warm-up over ``warmup`` steps, then cosine decay to 10% of ``base``."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    for g in optimizer.param_groups:
        g["lr"] = base * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))


def export_with_metrics(model, out: str | os.PathLike, metrics: dict, name: str = "metrics.json") -> None:
    """Atomically write ``model.save_pretrained`` plus ``metrics`` as JSON into ``out``, then print them."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        (tmp / name).write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
