"""EAGLE-style draft head for speculative decoding (Li et al. 2024 "EAGLE"; as used by LANTERN,
Jang et al. 2024, arXiv 2410.03355).

One transformer layer over ``fc([h_{t-1}, emb(x_t)])`` where ``h_{t-1}`` is the generator's last
(normalised) hidden state at position ``t-1`` (``state.first_hidden`` for ``t = 0``) and ``emb``
the generator's own token embedding (reused, frozen: not stored here). It predicts the generator's
feature ``h_t``; the generator's output head turns it into logits for token ``t+1``. Chain
drafting feeds the predicted feature back in place of ``h_t``.

CFG: LANTERN runs the drafter on the doubled (cond/uncond) batch. The generator contract exposes
only the conditional hidden state, so this head predicts **both** the conditional feature and the
unconditional one (a second, linear+norm output) from conditional inputs; decoders mix
``l_u + s (l_c - l_u)`` with the generator's own guidance schedule (``cfg_scale_at``), so one
drafter serves every guidance scale. RoPE uses the generator's 2D table; the head keeps its own
static KV cache over image positions (:class:`DrafterState`), rolled back like the generator's
(stale slots are overwritten before any query can see them).

Train with ``python -m mmgen.train.train_drafter`` (self-distilled data, EAGLE losses).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..safetensors_only import SafetensorsOnly
from .ar_transformer import Block, Condition, RMSNorm


class DrafterState:
    """Static KV cache of the draft layer: (k, v) each (B, H, S, hd) over image positions."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    @property
    def size(self) -> int:
        return self.k.shape[2]


class Drafter(SafetensorsOnly, ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, dim: int = 256, n_heads: int = 8, vocab_size: int = 1024, norm_eps: float = 1e-5):
        super().__init__()
        self.fc = nn.Linear(2 * dim, dim, bias=False)
        self.in_norm = RMSNorm(dim, norm_eps)  # on the token embedding (the hidden is already normalised)
        self.block = Block(dim, n_heads, norm_eps, 0.0)
        self.norm_c = RMSNorm(dim, norm_eps)
        self.to_uncond = nn.Linear(dim, dim, bias=False)
        self.norm_u = RMSNorm(dim, norm_eps)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        with torch.no_grad():  # start as "pass the hidden through": fc ~ [I, 0]
            self.fc.weight[:, :dim] += torch.eye(dim)
            self.to_uncond.weight += torch.eye(dim)

    def check_generator(self, generator) -> None:
        c = generator.config
        mine = (self.config.dim, self.config.n_heads, self.config.vocab_size)
        if (c.dim, c.n_heads, c.vocab_size) != mine:  # n_heads too: the drafter reuses the generator's RoPE table
            raise ValueError(f"drafter (dim, heads, vocab) {mine} does not match the generator's "
                             f"{(c.dim, c.n_heads, c.vocab_size)}")

    def start(self, batch: int, size: int, device=None) -> DrafterState:
        hd = self.config.dim // self.config.n_heads
        w = self.fc.weight
        shape = (batch, self.config.n_heads, size, hd)
        return DrafterState(torch.zeros(shape, device=device or w.device, dtype=w.dtype),
                            torch.zeros(shape, device=device or w.device, dtype=w.dtype))

    def forward(self, generator, hidden: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                state: DrafterState | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, T, d) = h_{t-1}; tokens (B, T) = x_t; positions (B, T) = t (image positions).

        Returns predicted (conditional, unconditional) features of position t, each (B, T, d).
        Without ``state``: causal attention within the T inputs (training; positions must be
        ``arange(T)``). With ``state``: K/V written at ``positions``, keys ``<= position`` attended.
        """
        emb = self.in_norm(generator.tok_embeddings(tokens))  # (B, T, d)
        x = self.fc(torch.cat([hidden.to(emb.dtype), emb], -1))  # (B, T, d)
        slots = positions + getattr(generator, "prefix_slots", generator.config.prefix_len)
        cos, sin = generator.rope_cos[slots], generator.rope_sin[slots]  # (B, T, hd/2)
        if state is None:
            s = tokens.shape[1]
            cache, kv_end = None, None
        else:
            s = int(positions.max()) + 1
            if s > state.size:
                raise ValueError(f"drafter position {s - 1} is past its cache ({state.size})")
            cache, kv_end = (state.k, state.v), s
        kidx = torch.arange(s, device=x.device)
        mask = (kidx[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, S)
        y = self.block(x, cos, sin, mask, cache, positions, kv_end)  # (B, T, d)
        return self.norm_c(y), self.norm_u(self.to_uncond(y))

    def draft_logits(self, generator, gen_state, f_c: torch.Tensor, f_u: torch.Tensor,
                     predicted_pos: torch.Tensor) -> torch.Tensor:
        """Features (B, T, d) -> CFG-mixed logits (B, T, V) for tokens at ``predicted_pos`` (B, T),
        with the generator's head and guidance schedule."""
        lc = generator.output(f_c).float()
        if not gen_state.cfg:
            return lc
        lu = generator.output(f_u).float()
        return lu + generator.cfg_scale_at(gen_state, predicted_pos)[..., None] * (lc - lu)


@torch.no_grad()
def generator_features(generator, tokens: torch.Tensor, condition: Condition,
                       drop_condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced features of the generator: tokens (B, N) -> (hidden (B, N, d), logits (B, N, V))
    where ``hidden[:, t]`` is the last hidden state predicting token t (``[:, 0]`` = prefix end =
    ``state.first_hidden``), exactly what ``forward_step`` returns as ``hidden``."""
    if getattr(generator, "order", "raster") != "raster":
        raise ValueError("the draft head supports raster-order generators only")
    prefix, pmask = generator.embed_condition(condition, drop_condition)
    p = prefix.shape[1]
    x = torch.cat([prefix, generator.tok_embeddings(tokens[:, :-1])], 1)  # (B, P + N - 1, d)
    slots = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
    valid = torch.cat([pmask, torch.ones_like(tokens[:, :-1], dtype=torch.bool)], 1)
    h = generator._run(x, slots, valid)[0][:, p - 1:]  # (B, N, d) (raster: _run -> (hidden, None))
    return h, generator.output(h).float()
