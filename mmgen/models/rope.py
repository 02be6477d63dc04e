"""2D rotary position embedding over a token grid (LlamaGen, Sun et al. 2024, sec. 2.2).

Axial 2D RoPE with interleaved pairs: of the ``head_dim / 2`` rotation pairs, the first half
rotates by ``row * w_j`` and the second half by ``col * w_j`` with ``w_j = base^(-4j / head_dim)``.
Deviation from LlamaGen: condition (prefix) slots use the identity rotation (position (0, 0))
instead of all-zero rows, so their queries/keys keep content-based attention.
"""

from __future__ import annotations

import torch


def rope_2d_table(coords: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """coords (S, 2) integer (row, col) per slot -> cos, sin (S, head_dim // 2) in float32."""
    if head_dim % 4:
        raise ValueError(f"head_dim must be divisible by 4 for 2D RoPE, got {head_dim}")
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64) * 4.0 / head_dim)  # (D/4,)
    angles = torch.cat([coords[:, :1].double() * freqs, coords[:, 1:2].double() * freqs], dim=1)  # (S, D/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D); cos/sin (B, T, D/2) -> rotated x, pairs (x[2p], x[2p+1]) computed in float32."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, H, T, D/2, 2)
    c, s = cos[:, None], sin[:, None]  # (B, 1, T, D/2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    return out.flatten(-2).type_as(x)


def rope_1d_table(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (..., T) integer -> cos, sin (..., T, head_dim // 2): standard 1D RoPE (Su et al. 2021)."""
    freqs = base ** (-torch.arange(head_dim // 2, dtype=torch.float64) * 2.0 / head_dim)  # (D/2,)
    angles = positions.double()[..., None] * freqs
    return angles.cos().float(), angles.sin().float()
