"""The one attention function every mmgen model calls.

xformers' ``memory_efficient_attention`` on CUDA when it imports and runs for the device/dtype
(checked once per pair with a tiny call), PyTorch ``scaled_dot_product_attention`` otherwise.
xformers is imported lazily: on CPU it has no kernels (and its import is slow).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

_XFORMERS_OK: dict[tuple[str, torch.dtype], bool] = {}


def xformers_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """True if xformers runs on ``device``/``dtype`` (CUDA only; ``MMGEN_ATTENTION=sdpa`` disables it)."""
    if device.type != "cuda" or os.environ.get("MMGEN_ATTENTION", "auto") == "sdpa":
        return False
    key = (str(device), dtype)
    if key not in _XFORMERS_OK:
        try:
            logging.getLogger("xformers").setLevel(logging.ERROR)
            import xformers.ops as xops

            t = torch.zeros(1, 8, 1, 16, device=device, dtype=dtype)
            xops.memory_efficient_attention(t, t, t)
            _XFORMERS_OK[key] = True
        except (ImportError, NotImplementedError, RuntimeError, OSError, ValueError):
            _XFORMERS_OK[key] = False
    return _XFORMERS_OK[key]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q (B, H, Tq, D), k/v (B, H, Tk, D), mask (B, 1, Tq, Tk) bool, True = attend -> (B, H, Tq, D)."""
    if xformers_usable(q.device, q.dtype):
        import xformers.ops as xops

        bias = None
        if mask is not None:
            tk = k.shape[2]
            pad = (-tk) % 8  # xformers wants the bias' last dim aligned to 8
            bias = torch.zeros(*mask.shape[:3], tk + pad, device=q.device, dtype=q.dtype)
            bias[..., :tk].masked_fill_(~mask, float("-inf"))
            bias = bias[..., :tk].expand(q.shape[0], q.shape[1], q.shape[2], tk)
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
