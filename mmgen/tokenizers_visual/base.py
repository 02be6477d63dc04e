"""The tokenizer contract shared by every visual (and later audio) tokenizer.

A tokenizer maps images ``(B, 3, H, W)`` in [-1, 1] to discrete ids ``(B, N)`` (or continuous
latents ``(B, N, D)``) laid out as described by :class:`TokenLayout`, and back. It exposes its
codebook ``(V, D)`` because accelerators read it (LANTERN proximity sets, GSD embedding filter).

Contract (every class in :mod:`mmgen.tokenizers_visual`):

* ``encode(images) -> TokenBatch`` (ids in the generator's emission order, the layout, ``extras``),
  ``decode(ids) -> images``; both in eval mode without gradients. A tokenizer whose decoder samples (SEED with
  its generative renderer) sets ``stochastic_decode`` and takes ``decode(ids, generator=...)``; pipelines pass
  their generator to it.
* ``vocab_size``, ``codebook`` ``(vocab_size, D)``, ``layout_for(image_size)``.
* ``save_pretrained`` / ``from_pretrained`` (diffusers ``ModelMixin``: config.json + safetensors);
  :func:`load_tokenizer` opens any of them from a folder.
* ``losses(images, captions=None, generator=None) -> dict`` with ``"loss"``: the training objective of the family
  (SEED, TokenFlow, Hita, One-D-Piece; ``captions`` label the first ``len(captions)`` images, the rest are unlabeled
  photo crops). The VQ tokenizer instead returns ``(reconstruction, ids, commitment)`` from ``forward`` and
  :mod:`mmgen.train.train_tokenizer` weighs its pixel terms (``--l1``, ``--grad``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class TokenLayout:
    """How the N tokens of one item are arranged and in which order a generator should emit them.

    kind: ``"grid"`` (height x width, raster order), ``"sequence"`` (1D, ``length`` tokens, first to
    last), ``"holistic+grid"`` (``num_holistic`` holistic tokens, then a height x width raster grid:
    Hita) or ``"rvq"``.
    """

    kind: str
    height: int = 0
    width: int = 0
    length: int = 0
    order: str = "raster"
    num_holistic: int = 0

    @property
    def num_tokens(self) -> int:
        if self.kind == "grid":
            return self.height * self.width
        if self.kind == "holistic+grid":
            return self.num_holistic + self.height * self.width
        return self.length

    def generator_grid(self) -> tuple[int, int]:
        """(rows, cols) the AR generator lays the N tokens on for its 2D RoPE: a grid as is, a sequence
        as one row, Hita's holistic tokens as extra leading rows (needs num_holistic % width == 0)."""
        if self.kind == "grid":
            return self.height, self.width
        if self.kind == "sequence":
            return 1, self.length
        if self.kind == "holistic+grid":
            if self.num_holistic % self.width:
                raise ValueError(f"num_holistic ({self.num_holistic}) must be a multiple of the grid width ({self.width})")
            return self.height + self.num_holistic // self.width, self.width
        raise ValueError(f"no generator grid for layout kind {self.kind!r}")


@dataclass
class TokenBatch:
    ids: torch.Tensor | None  # (B, N) long, discrete tokenizers
    layout: TokenLayout
    latents: torch.Tensor | None = None  # (B, N, D) continuous tokenizers
    extras: dict = field(default_factory=dict)  # e.g. semantic_features (TokenFlow), generation_embedding (SEED)


def check_image_size(image_size, **factors: int) -> None:
    """Constructor check: ``image_size`` is a positive int divisible by every factor (``name=factor``, the name saying
    which arguments set it), else a ValueError naming both, so a model never builds and then decodes the wrong size."""
    for name, f in factors.items():
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1 or image_size % f:
            raise ValueError(f"image_size must be a positive multiple of {name} = {f}, got {image_size!r}")


def init_args(config) -> dict:
    """A diffusers config's constructor arguments only: its private keys dropped (``_use_default_values`` would
    make ``from_config`` ignore keys that an older config lacked)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


class VisualTokenizerMixin:
    """Methods every visual tokenizer provides; concrete classes implement ``_encode_ids``/``_decode_ids``."""

    is_continuous: bool = False
    stochastic_decode: bool = False  # True: decode(ids, generator=...) samples

    def decode_kwargs(self, generator) -> dict:
        """What to pass ``decode`` besides the ids: the ``generator`` when decoding samples, else nothing."""
        return {"generator": generator} if self.stochastic_decode else {}

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids (default: the config's ``codebook_size``)."""
        return self.config.codebook_size

    @property
    def codebook(self) -> torch.Tensor:  # (V, D)  pragma: no cover - overridden
        raise NotImplementedError

    def layout_for(self, image_size: int) -> TokenLayout:  # pragma: no cover - overridden
        raise NotImplementedError

    def check_images(self, images: torch.Tensor, name: str = "images") -> torch.Tensor:
        """Validate (B, 3, H, W) float images (ValueError naming ``name``) and return them on the tokenizer's
        device and dtype (float64 or CPU images into a float32 / CUDA tokenizer are fine)."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
        if not images.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor in [-1, 1], got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        fixed = getattr(self, "fixed_image_size", None)
        if fixed is not None:
            if h != fixed or w != fixed:
                raise ValueError(f"{name} must be {fixed}x{fixed} for this tokenizer, got {h}x{w}")
        else:
            factor = self.downsample_factor
            if h != w or h % factor or h < factor:
                raise ValueError(f"{name} must be square with a side divisible by {factor}, got {h}x{w}")
        p = next(self.parameters())
        return images.to(device=p.device, dtype=p.dtype)

    def check_ids(self, ids: torch.Tensor, name: str = "ids") -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be an integer tensor of shape (B, N)")
        if ids.ndim != 2:
            raise ValueError(f"{name} must have shape (B, N), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"{name} must lie in [0, {self.vocab_size - 1}]")

    @torch.no_grad()
    def codebook_usage(self, images: torch.Tensor, batch: int = 128) -> float:
        """Fraction of the vocabulary used when encoding ``images`` (B, 3, H, W)."""
        used = torch.zeros(self.vocab_size, dtype=torch.bool)
        for i in range(0, len(images), batch):
            used[self.encode(images[i:i + batch]).ids.flatten().cpu()] = True
        return float(used.float().mean())


def load_tokenizer(folder: str | Path):
    """Open any tokenizer of this package saved with ``save_pretrained`` (class read from config.json)."""
    import json

    from . import TOKENIZER_CLASSES
    cfg = Path(folder) / "config.json"
    if not cfg.exists():
        raise ValueError(f"tokenizer folder {str(folder)!r} has no config.json")
    name = json.loads(cfg.read_text()).get("_class_name")
    if name not in TOKENIZER_CLASSES:
        raise ValueError(f"{cfg} names class {name!r}; known tokenizers: {sorted(TOKENIZER_CLASSES)}")
    return TOKENIZER_CLASSES[name].from_pretrained(folder)
