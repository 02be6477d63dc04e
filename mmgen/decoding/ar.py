"""Baseline autoregressive decoding: one token per forward pass, static KV cache (LlamaGen / gpt-fast)."""

from __future__ import annotations

import torch

from .base import DecodeResult, Decoder, register_decoder
from .sampling import SamplingConfig, pick


@register_decoder("ar")
class ARDecoder(Decoder):
    """N forward passes for N tokens (prefill predicts token 0, then one step per token)."""

    requires = "ar"

    def decode(self, generator, state, sampling: SamplingConfig, rng=None, callback=None) -> DecodeResult:
        self.check_generator(generator)
        stats, t0 = self._start(state)
        b, n = state.batch_size, state.num_tokens
        dev = state.first_logits.device
        tokens = torch.empty(b, n, dtype=torch.long, device=dev)
        logits = state.first_logits  # (B, V)
        for i in range(n):
            tokens[:, i] = pick(logits, sampling, rng)
            stats.accepted_lengths.extend([1] * b)
            self._apply_callback(callback, i, tokens, slice(0, i + 1), state)
            if i + 1 < n:
                pos = torch.full((b, 1), i, dtype=torch.long, device=dev)
                logits = generator.forward_step(state, tokens[:, i : i + 1], pos).logits[:, -1]
                stats.forward_passes += 1
        stats.wall_time = self._elapsed(state, t0)
        return DecodeResult(tokens, stats)
