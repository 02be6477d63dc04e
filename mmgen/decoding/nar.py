"""Next-neighbour decoding (He et al. 2025, "Neighboring Autoregressive Modeling for Efficient
Visual Generation", NAR), for generators with ``"nar"`` in their capabilities.

Step s generates the anti-diagonal {(h, w): h + w = s}: after feeding diagonal s - 1, each cell
(h, w) of diagonal s takes the right-head logits of its left neighbour (h, w - 1), the down-head
logits of the cell above (h - 1, w), or their mean when both exist (mixed as raw logits, after
CFG, before temperature/top-k/top-p); all cells are sampled independently. A G x G grid takes
1 (prefill, samples (0, 0)) + (2G - 2) forward passes = 2G - 1.
"""

from __future__ import annotations

import time

import torch

from .base import DecodeResult, Decoder, register_decoder
from .sampling import SamplingConfig, pick


def diagonals(g: int) -> list[torch.Tensor]:
    """Raster indices of each anti-diagonal, cells ordered by increasing row: 2G - 1 tensors."""
    return [torch.tensor([h * g + (s - h) for h in range(max(0, s - g + 1), min(s, g - 1) + 1)])
            for s in range(2 * g - 1)]


@register_decoder("nar")
class NARDecoder(Decoder):
    def decode(self, generator, state, sampling: SamplingConfig, rng=None, callback=None) -> DecodeResult:
        if "nar" not in generator.capabilities:
            raise ValueError("decoding='nar' needs a generator trained with order='nar' (e.g. assets/digits-c2i-nar)")
        stats, t0 = self._start(state)
        g, b = generator.grid_size, state.batch_size
        dev = state.first_logits.device
        tokens = torch.empty(b, g * g, dtype=torch.long, device=dev)
        tokens[:, 0] = pick(state.first_logits, sampling, rng)
        stats.accepted_lengths.extend([1] * b)
        diags = diagonals(g)
        done = 1
        for s in range(1, 2 * g - 1):
            prev = diags[s - 1].to(dev)  # (T,) raster indices fed this step
            out = generator.forward_step(state, tokens[:, prev], prev.expand(b, -1))
            stats.forward_passes += 1
            right = {int(p): out.logits[:, j] for j, p in enumerate(prev)}  # predicts (h, w + 1)
            down = {int(p): out.logits_down[:, j] for j, p in enumerate(prev)}  # predicts (h + 1, w)
            cells = diags[s]
            logits = []
            for p in cells.tolist():
                h, w = divmod(p, g)
                parts = ([right[p - 1]] if w > 0 else []) + ([down[p - g]] if h > 0 else [])
                logits.append(sum(parts) / len(parts))
            logits = torch.stack(logits, 1)  # (B, T', V)
            new = pick(logits.flatten(0, 1), sampling, _rows(rng, b, len(cells))).view(b, -1)
            tokens[:, cells.to(dev)] = new
            done += len(cells)
            stats.accepted_lengths.extend([len(cells)] * b)
            if callback is not None:
                callback(s, tokens[:, :done])  # progress: count of committed tokens (not a raster prefix)
        stats.wall_time = time.perf_counter() - t0
        return DecodeResult(tokens, stats)


def _rows(rng, b: int, t: int):
    """Expand a per-row generator list to one per (row, cell) so each row keeps its own stream."""
    if isinstance(rng, (list, tuple)):
        return [gen for gen in rng for _ in range(t)]
    return rng
