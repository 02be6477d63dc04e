"""Offline quality judges, trained only on real data (real renders, real digits), never on generated images.

* :class:`SceneJudge` predicts a scene's structured attributes (background; per slot: shape or
  none, color, size) from a 64x64 image. Prompt adherence = every attribute of the prompt matches.
* :class:`DigitJudge` classifies 32x32 digits. Class consistency = predicted class == requested class.

Both expose ``features(x) -> (B, F)`` for the judge-FD (Frechet distance in the judge's feature space).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..data.scenes import BACKGROUNDS, COLORS, SHAPES, SIZES, SLOTS, SceneSpec
from ..safetensors_only import SafetensorsOnly


def _cnn(widths: tuple) -> nn.Sequential:
    """Conv-BN-ReLU with 2x max-pooling per width; flattened output (side shrinks by 2 ** len(widths))."""
    layers, cin = [], 3
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
        cin = w
    return nn.Sequential(*layers, nn.Flatten())


class SceneJudge(SafetensorsOnly, ModelMixin, ConfigMixin):
    """CNN over (B, 3, 64, 64) in [-1, 1] -> attribute logits; heads per slot keep it compositional."""

    @register_to_config
    def __init__(self, widths: tuple = (24, 48, 96, 128), feat_dim: int = 192, image_size: int = 64):
        super().__init__()
        self.body = _cnn(widths)
        side = image_size // 2 ** len(widths)
        self.proj = nn.Sequential(nn.Linear(widths[-1] * side * side, feat_dim), nn.ReLU())
        n_slots = len(SLOTS)
        self.head_background = nn.Linear(feat_dim, len(BACKGROUNDS))
        self.head_shape = nn.Linear(feat_dim, n_slots * (len(SHAPES) + 1))
        self.head_color = nn.Linear(feat_dim, n_slots * len(COLORS))
        self.head_size = nn.Linear(feat_dim, n_slots * len(SIZES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))  # (B, feat_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        b, s = x.shape[0], len(SLOTS)
        return {"background": self.head_background(f),  # (B, 3)
                "shape": self.head_shape(f).view(b, s, -1),  # (B, slots, shapes + 1)
                "color": self.head_color(f).view(b, s, -1),  # (B, slots, colors)
                "size": self.head_size(f).view(b, s, -1)}  # (B, slots, sizes)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        self.eval()
        return {k: v.argmax(-1).cpu().numpy() for k, v in self(x).items()}


def attribute_matches(pred: dict[str, np.ndarray], specs: list[SceneSpec]) -> dict[str, np.ndarray]:
    """Per-image booleans: does each attribute group of ``pred`` match ``specs``? ('all' = prompt adherence)."""
    labels = [s.labels() for s in specs]
    bg = np.array([lab["background"] for lab in labels])
    shape = np.stack([lab["shape"] for lab in labels])
    color = np.stack([lab["color"] for lab in labels])
    size = np.stack([lab["size"] for lab in labels])
    occ = shape > 0
    out = {"background": pred["background"] == bg,
           "shape": (pred["shape"] == shape).all(1),
           "color": ((pred["color"] == color) | ~occ).all(1),
           "size": ((pred["size"] == size) | ~occ).all(1)}
    out["all"] = out["background"] & out["shape"] & out["color"] & out["size"]
    return out


class DigitJudge(SafetensorsOnly, ModelMixin, ConfigMixin):
    """CNN digit classifier over (B, 3, 32, 32) in [-1, 1]."""

    @register_to_config
    def __init__(self, widths: tuple = (32, 64), feat_dim: int = 128, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        self.body = _cnn(widths)
        side = image_size // 2 ** len(widths)
        self.proj = nn.Sequential(nn.Linear(widths[-1] * side * side, feat_dim), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))  # (B, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 10)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> np.ndarray:
        self.eval()
        return self(x).argmax(-1).cpu().numpy()
