"""Where the shipped checkpoints live (``assets/`` at the repository root, or ``$MMGEN_ASSETS``)."""

from __future__ import annotations

import os
from pathlib import Path


def assets_dir() -> Path:
    return Path(os.environ.get("MMGEN_ASSETS", Path(__file__).resolve().parents[1] / "assets"))


def model_path(name_or_path: str) -> Path:
    """A shipped model name (``scenes-t2i``) or a local folder -> existing folder, else ValueError."""
    p = Path(name_or_path)
    if not p.is_dir():
        p = assets_dir() / name_or_path
    if not p.is_dir():
        raise ValueError(f"model {name_or_path!r} is neither a local folder nor a shipped model in {assets_dir()}")
    return p


PARALLEL_ORDERS = ("nar", "nbp")  # decoders that need a generator trained for them


def model_for_decoding(name: "str | None", decoding: "str | None", default: str) -> str:
    """The model a decoding method runs on. NAR and NBP need generators trained in their order, shipped
    beside the raster model as ``<name>-nar`` / ``<name>-nbp`` (``assets/scenes-t2i-nar``): for
    ``decoding="nar"`` a model (shipped name or folder; ``None`` -> ``default``) maps to that sibling
    folder when it exists; otherwise, and for every other method, the model is returned unchanged."""
    name = name or default
    if decoding in PARALLEL_ORDERS:
        try:
            folder = model_path(name)
        except ValueError:
            return name  # the caller's model_path reports the missing model
        sibling = folder.with_name(f"{folder.name}-{decoding}")
        if sibling.is_dir():
            return str(sibling)
    return name
