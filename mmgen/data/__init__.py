"""Locally generated, deterministic data: drawn scenes with captions, real digits, photo crops."""

import numpy as np
import torch

from .digits import load_digits_rgb
from .photos import photo_crops
from .scenes import SceneDataset, SceneSpec, ShapeSpec, parse_caption, render, sample_spec


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # e.g. np.asarray(PIL image): torch warns on read-only memory
        images = images.copy()
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) (LlamaGen's clamp(127.5 x + 128))."""
    return (x.detach().float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


__all__ = ["SceneDataset", "SceneSpec", "ShapeSpec", "parse_caption", "render", "sample_spec",
           "load_digits_rgb", "photo_crops", "to_tensor", "to_uint8"]
