"""Next-block decoding (Ren et al. 2025, "Next Block Prediction: Video Generation via
Semi-Autoregressive Modeling", NBP), for generators with ``"nbp"`` capability. A block is
``generator.block_size`` tokens (``block_rows`` rows of the grid; one row by default).

The prefill's begin-of-image queries (one per block token) predict block 0; then feeding block b - 1
(bidirectional inside the block, causal across blocks) predicts block b, token l from token l. All
tokens of a block are sampled independently: N / block_size forward passes (G for rows).
"""

from __future__ import annotations

import torch

from .base import DecodeResult, Decoder, register_decoder
from .nar import _rows
from .sampling import SamplingConfig, pick


@register_decoder("nbp")
class NBPDecoder(Decoder):
    requires = "nbp"

    def decode(self, generator, state, sampling: SamplingConfig, rng=None, callback=None) -> DecodeResult:
        self.check_generator(generator)
        stats, t0 = self._start(state)
        n, blk, b = state.num_tokens, generator.block_size, state.batch_size
        dev = state.first_logits.device
        tokens = torch.empty(b, n, dtype=torch.long, device=dev)
        logits = state.first_logits  # (B, blk, V): block 0
        for r in range(n // blk):
            tokens[:, r * blk:(r + 1) * blk] = pick(logits.flatten(0, 1), sampling, _rows(rng, b, blk)).view(b, blk)
            stats.accepted_lengths.extend([blk] * b)
            # an edit lands before block r is fed
            self._apply_callback(callback, r, tokens, slice(0, (r + 1) * blk), state)
            if (r + 1) * blk < n:
                pos = torch.arange(r * blk, (r + 1) * blk, device=dev).expand(b, -1)
                logits = generator.forward_step(state, tokens[:, r * blk:(r + 1) * blk], pos).logits
                stats.forward_passes += 1
        stats.wall_time = self._elapsed(state, t0)
        return DecodeResult(tokens, stats)
