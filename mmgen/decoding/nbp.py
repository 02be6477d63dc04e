"""Next-block decoding (Ren et al. 2025, "Next Block Prediction: Video Generation via
Semi-Autoregressive Modeling", NBP), rows as blocks, for generators with ``"nbp"`` capability.

The prefill's G begin-of-image queries predict row 0; then feeding row r - 1 (bidirectional
inside the row, causal across rows) predicts row r, token l from token l. All tokens of a row are
sampled independently: G forward passes for G rows.
"""

from __future__ import annotations

import time

import torch

from .base import DecodeResult, Decoder, register_decoder
from .nar import _rows
from .sampling import SamplingConfig, pick


@register_decoder("nbp")
class NBPDecoder(Decoder):
    def decode(self, generator, state, sampling: SamplingConfig, rng=None, callback=None) -> DecodeResult:
        if "nbp" not in generator.capabilities:
            raise ValueError("decoding='nbp' needs a generator trained with order='nbp' (e.g. assets/digits-c2i-nbp)")
        stats, t0 = self._start(state)
        g, b = generator.grid_size, state.batch_size
        dev = state.first_logits.device
        tokens = torch.empty(b, g * g, dtype=torch.long, device=dev)
        logits = state.first_logits  # (B, G, V): row 0
        for r in range(g):
            tokens[:, r * g:(r + 1) * g] = pick(logits.flatten(0, 1), sampling, _rows(rng, b, g)).view(b, g)
            stats.accepted_lengths.extend([g] * b)
            if callback is not None:
                callback(r, tokens[:, :(r + 1) * g])
            if r + 1 < g:
                pos = torch.arange(r * g, (r + 1) * g, device=dev).expand(b, -1)
                logits = generator.forward_step(state, tokens[:, r * g:(r + 1) * g], pos).logits
                stats.forward_passes += 1
        stats.wall_time = time.perf_counter() - t0
        return DecodeResult(tokens, stats)
