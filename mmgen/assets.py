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
