"""Real handwritten digits (scikit-learn's 8x8 ``load_digits``) upsampled to 32x32 RGB.

The split is deterministic: a seeded permutation, 80% train and 20% held out. Judges and
generators train on the train split only; metrics use the held-out split.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
NUM_CLASSES = 10


def load_digits_rgb(split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images (N, 32, 32, 3) uint8, labels (N,) int64)`` for ``split`` in {train, test, all}."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    idx = {"train": perm[:cut], "test": perm[cut:], "all": perm}[split]
    return np.ascontiguousarray(x[idx]), y[idx]
