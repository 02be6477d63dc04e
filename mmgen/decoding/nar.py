"""Next-neighbour decoding (He et al. 2025, "Neighboring Autoregressive Modeling for Efficient
Visual Generation", NAR), for generators with ``"nar"`` in their capabilities.

Step s generates the anti-diagonal {(h, w): h + w = s}: after feeding diagonal s - 1, each cell
(h, w) of diagonal s takes the right-head logits of its left neighbour (h, w - 1), the down-head
logits of the cell above (h - 1, w), or their mean when both exist (mixed as raw logits, after
CFG, before temperature/top-k/top-p); all cells are sampled independently. A G x G grid takes
1 (prefill, samples (0, 0)) + (2G - 2) forward passes = 2G - 1.
"""

from __future__ import annotations

import functools

import torch

from .base import DecodeResult, Decoder, register_decoder
from .sampling import SamplingConfig, pick


def diagonals(g: int) -> list[torch.Tensor]:
    """Raster indices of each anti-diagonal, cells ordered by increasing row: 2G - 1 tensors."""
    return [torch.tensor([h * g + (s - h) for h in range(max(0, s - g + 1), min(s, g - 1) + 1)])
            for s in range(2 * g - 1)]


@functools.lru_cache(maxsize=16)
def emission_order(g: int) -> torch.Tensor:
    """(G^2,) raster indices in NAR generation order: diagonal by diagonal, each by increasing row."""
    return torch.cat(diagonals(g))


@functools.lru_cache(maxsize=16)
def neighbour_plan(g: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For steps s = 1 .. 2G - 2: (cells, left, up) where ``cells`` (T',) are the raster indices of
    diagonal s and ``left`` / ``up`` (T',) the position inside diagonal s - 1 of each cell's left /
    upper neighbour (-1 where it does not exist)."""
    diags, plan = diagonals(g), []
    for s in range(1, 2 * g - 1):
        h0 = max(0, s - 1 - g + 1)  # first row of diagonal s - 1
        rows = diags[s] // g  # (T',)
        cols = diags[s] % g
        left = torch.where(cols > 0, rows - h0, torch.full_like(rows, -1))
        up = torch.where(rows > 0, rows - 1 - h0, torch.full_like(rows, -1))
        plan.append((diags[s], left, up))
    return plan


@register_decoder("nar")
class NARDecoder(Decoder):
    """``callback(s, tokens)`` gets the committed tokens in generation order (diagonals 0..s, each by
    increasing row: ``emission_order``), not a raster prefix; a returned edit (same shape) is written back
    before diagonal s is fed."""

    requires = "nar"

    def decode(self, generator, state, sampling: SamplingConfig, rng=None, callback=None) -> DecodeResult:
        self.check_generator(generator)
        stats, t0 = self._start(state)
        g, b = generator.grid_size, state.batch_size
        dev = state.first_logits.device
        tokens = torch.empty(b, g * g, dtype=torch.long, device=dev)
        tokens[:, 0] = pick(state.first_logits, sampling, rng)
        stats.accepted_lengths.extend([1] * b)
        order = emission_order(g).to(dev)  # (G^2,) raster index of the i-th generated cell
        self._apply_callback(callback, 0, tokens, order[:1], state)
        prev = torch.zeros(1, dtype=torch.long, device=dev)  # diagonal 0
        done = 1
        for s, (cells, left, up) in enumerate(neighbour_plan(g), start=1):
            cells, left, up = cells.to(dev), left.to(dev), up.to(dev)
            out = generator.forward_step(state, tokens[:, prev], prev.expand(b, -1))
            stats.forward_passes += 1
            right = out.logits[:, left.clamp(min=0)]  # (B, T', V): right head of the left neighbour
            down = out.logits_down[:, up.clamp(min=0)]  # (B, T', V): down head of the cell above
            logits = torch.where((left < 0)[None, :, None], down,
                                 torch.where((up < 0)[None, :, None], right, 0.5 * (right + down)))
            new = pick(logits.flatten(0, 1), sampling, _rows(rng, b, len(cells))).view(b, -1)
            tokens[:, cells] = new
            done += len(cells)
            stats.accepted_lengths.extend([len(cells)] * b)
            self._apply_callback(callback, s, tokens, order[:done], state)
            prev = cells
        stats.wall_time = self._elapsed(state, t0)
        return DecodeResult(tokens, stats)


def _rows(rng, b: int, t: int):
    """Expand a per-row generator list to one per (row, cell) so each row keeps its own stream."""
    if isinstance(rng, (list, tuple)):
        return [gen for gen in rng for _ in range(t)]
    return rng
