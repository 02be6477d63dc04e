"""64x64 crops of the photographs bundled with scikit-image (``skimage.data``), for reconstruction figures."""

from __future__ import annotations

import numpy as np

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def photo_crops(n: int, size: int = 64, seed: int = 0, names=PHOTO_NAMES) -> np.ndarray:
    """``n`` random ``size``x``size`` RGB crops (uint8, (n, size, size, 3)), images downscaled by 2-4x first."""
    from skimage import data
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    photos = []
    for name in names:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        photos.append(img[..., :3])
    out = np.empty((n, size, size, 3), np.uint8)
    cache: dict = {}
    for i in range(n):
        k = int(rng.integers(len(photos)))
        scale = float(rng.choice([0.25, 0.35, 0.5]))
        if (k, scale) not in cache:
            cache[(k, scale)] = (rescale(photos[k], scale, channel_axis=-1, anti_aliasing=True) * 255).astype(np.uint8)
        img = cache[(k, scale)]
        y = int(rng.integers(0, img.shape[0] - size + 1))
        x = int(rng.integers(0, img.shape[1] - size + 1))
        out[i] = img[y : y + size, x : x + size]
    return out
