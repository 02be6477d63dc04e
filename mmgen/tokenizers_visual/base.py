"""The tokenizer contract shared by every visual (and later audio) tokenizer.

A tokenizer maps images ``(B, 3, H, W)`` in [-1, 1] to discrete ids ``(B, N)`` (or continuous
latents ``(B, N, D)``) laid out as described by :class:`TokenLayout`, and back. It exposes its
codebook ``(V, D)`` because accelerators read it (LANTERN proximity sets, GSD embedding filter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """How the N tokens of one item are arranged and in which order a generator should emit them.

    kind: ``"grid"`` (height x width, raster order), ``"sequence"`` (1D causal) or ``"rvq"``.
    """

    kind: str
    height: int = 0
    width: int = 0
    length: int = 0
    order: str = "raster"

    @property
    def num_tokens(self) -> int:
        return self.height * self.width if self.kind == "grid" else self.length


@dataclass
class TokenBatch:
    ids: torch.Tensor | None  # (B, N) long, discrete tokenizers
    layout: TokenLayout
    latents: torch.Tensor | None = None  # (B, N, D) continuous tokenizers


class VisualTokenizerMixin:
    """Methods every visual tokenizer provides; concrete classes implement ``_encode_ids``/``_decode_ids``."""

    is_continuous: bool = False

    @property
    def vocab_size(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def codebook(self) -> torch.Tensor:  # (V, D)  pragma: no cover - overridden
        raise NotImplementedError

    def layout_for(self, image_size: int) -> TokenLayout:  # pragma: no cover - overridden
        raise NotImplementedError

    def check_images(self, images: torch.Tensor, name: str = "images") -> None:
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
        if not images.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor in [-1, 1], got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
        factor = self.downsample_factor
        h, w = images.shape[-2:]
        if h != w or h % factor or h < factor:
            raise ValueError(f"{name} must be square with a side divisible by {factor}, got {h}x{w}")

    def check_ids(self, ids: torch.Tensor, name: str = "ids") -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be an integer tensor of shape (B, N)")
        if ids.ndim != 2:
            raise ValueError(f"{name} must have shape (B, N), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"{name} must lie in [0, {self.vocab_size - 1}]")
