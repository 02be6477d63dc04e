"""LlamaGen-style AR image generator (Sun et al. 2024, "Autoregressive Model Beats Diffusion").

Decoder-only transformer with pre-norm RMSNorm blocks, SwiGLU feed-forward, 2D RoPE over the
token grid, a class-condition token (c2i) or projected text-encoder features (t2i) as prefix,
a null condition for classifier-free guidance (label/caption dropout in training), zero-init
output head and no weight tying. It implements the **generator contract** used by every
decoder (see ``docs/ARCHITECTURE.md``):

* ``prefill(condition, guidance_scale, cfg_interval) -> DecodeState`` writes the prefix into a
  static KV cache sized for the whole sequence and returns the logits for image token 0;
* ``forward_step(state, tokens (B, T), positions (B, T)) -> StepOutput`` feeds image tokens at
  their image-sequence positions (the token fed at position i predicts token i + 1), appends their
  K/V at those positions and returns CFG-mixed logits ``(B, T, V)`` and hidden states;
* ``state.truncate(n)`` rolls the cache back in O(1): later writes overwrite stale slots and the
  mask (key slot <= query slot) never shows them;
* positions in ``[N, N + extra_slots)`` (reserved at prefill) are scratch: a speculative window may
  run past the last token there, and decoders discard those outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .attention import attention
from .rope import apply_rope, rope_2d_table


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def ffn_hidden(dim: int, multiple_of: int = 64) -> int:
    h = int(2 * 4 * dim / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, eps: float, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.attn_norm, self.ffn_norm = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        hidden = ffn_hidden(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cos, sin, mask, cache=None, write_slots=None, kv_end=None):
        """x (B, T, d); cos/sin (B, T, hd/2); mask (B, 1, T, S) bool; cache = (k, v) each (B, H, S_max, hd)."""
        b, t, _ = x.shape
        q, k, v = self.wqkv(self.attn_norm(x)).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, H, T, hd)
        if cache is not None:
            kc, vc = cache
            idx = write_slots[:, None, :, None].expand(b, self.n_heads, t, self.head_dim)
            kc.scatter_(2, idx, k.to(kc.dtype))
            vc.scatter_(2, idx, v.to(vc.dtype))
            k, v = kc[:, :, :kv_end], vc[:, :, :kv_end]
        h = x + self.drop(self.wo(attention(q, k, v, mask).transpose(1, 2).reshape(b, t, -1)))
        y = self.ffn_norm(h)
        return h + self.drop(self.w2(F.silu(self.w1(y)) * self.w3(y)))


@dataclass
class Condition:
    """What the generator is conditioned on: ``class_labels`` (B,) or ``text_features`` (B, P, C) + ``text_mask`` (B, P)."""

    class_labels: torch.Tensor | None = None
    text_features: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.class_labels) if self.class_labels is not None else len(self.text_features)


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, T, V) float32, CFG-mixed
    hidden: torch.Tensor  # (B, T, d) conditional branch's last hidden state (drafters read it)


class DecodeState:
    """Static KV cache + bookkeeping for one generation batch.

    ``cache_len`` (B,) counts image tokens whose K/V are valid; ``truncate`` moves that pointer only.
    With CFG the cache holds 2B rows (conditional first) but the decoder only ever sees B rows.
    """

    def __init__(self, caches, key_valid, prefix_len, num_tokens, batch_size, guidance_scale, cfg_interval,
                 first_logits, first_hidden, extra_slots: int = 0):
        self.caches = caches  # list of (k, v), each (B', H, P + N, hd)
        self.key_valid = key_valid  # (B', P + N) bool: False on padded prefix slots
        self.prefix_len, self.num_tokens, self.batch_size = prefix_len, num_tokens, batch_size
        self.extra_slots = extra_slots  # scratch positions [N, N + extra_slots) a decoder may feed and discard
        self.guidance_scale, self.cfg_interval = guidance_scale, cfg_interval
        self.cache_len = torch.zeros(batch_size, dtype=torch.long, device=key_valid.device)
        self.first_logits, self.first_hidden = first_logits, first_hidden  # (B, V), (B, d): predict token 0

    @property
    def cfg(self) -> bool:
        return self.guidance_scale != 1.0

    def truncate(self, n) -> None:
        """Roll back to ``n`` image tokens (int or (B,) tensor) in O(1)."""
        n = torch.as_tensor(n, dtype=torch.long, device=self.cache_len.device).expand_as(self.cache_len)
        if bool((n < 0).any()) or bool((n > self.cache_len).any()):
            raise ValueError(f"truncate length must lie in [0, cache_len], got {n.tolist()} vs {self.cache_len.tolist()}")
        self.cache_len = n.clone()


MAX_EXTRA_SLOTS = 256


class ARTransformer(ModelMixin, ConfigMixin):
    """LlamaGen GPT. ``num_classes > 0``: class-to-image; ``caption_dim > 0``: text-to-image."""

    capabilities = frozenset({"ar", "speculative"})

    @register_to_config
    def __init__(self, vocab_size: int = 1024, grid_size: int = 16, dim: int = 256, n_layers: int = 6,
                 n_heads: int = 8, num_classes: int = 0, caption_dim: int = 0, prefix_len: int = 1,
                 class_dropout_prob: float = 0.1, token_dropout: float = 0.0, dropout: float = 0.0,
                 rope_base: float = 10000.0, norm_eps: float = 1e-5):
        super().__init__()
        if (num_classes > 0) == (caption_dim > 0):
            raise ValueError("exactly one of num_classes and caption_dim must be > 0")
        if num_classes > 0 and prefix_len != 1:
            raise ValueError("class conditioning uses prefix_len=1")
        self.num_tokens = grid_size * grid_size
        if num_classes > 0:
            self.class_embedding = nn.Embedding(num_classes + 1, dim)  # row num_classes = null class
        else:
            self.caption_proj = nn.Sequential(nn.Linear(caption_dim, dim, bias=False), nn.GELU(approximate="tanh"),
                                              nn.Linear(dim, dim, bias=False))
            self.register_buffer("uncond_embedding", torch.randn(prefix_len, caption_dim) / caption_dim**0.5)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.token_drop = nn.Dropout(token_dropout)
        self.layers = nn.ModuleList(Block(dim, n_heads, norm_eps, dropout) for _ in range(n_layers))
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        # RoPE rows for the grid plus MAX_EXTRA_SLOTS scratch slots continuing the raster (speculative
        # decoders may feed a full window past the last token; those outputs are discarded)
        n = torch.arange(self.num_tokens + MAX_EXTRA_SLOTS)
        coords = torch.cat([torch.zeros(prefix_len, 2, dtype=torch.long), torch.stack([n // grid_size, n % grid_size], 1)])
        cos, sin = rope_2d_table(coords, dim // n_heads, rope_base)  # (P + N, hd/2)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        nn.init.zeros_(self.output.weight)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    # ------------------------------------------------------------------ conditioning
    @property
    def is_class_conditional(self) -> bool:
        return self.config.num_classes > 0

    def check_condition(self, cond: Condition) -> None:
        c = self.config
        if self.is_class_conditional:
            if cond.class_labels is None:
                raise ValueError("class_labels is required for a class-conditional generator")
            lab = cond.class_labels
            if lab.ndim != 1 or bool((lab < 0).any()) or bool((lab >= c.num_classes).any()):
                raise ValueError(f"class_labels must be ids in [0, {c.num_classes - 1}], got {lab.tolist()}")
        else:
            f = cond.text_features
            if f is None or f.ndim != 3 or f.shape[1:] != (c.prefix_len, c.caption_dim):
                got = None if f is None else tuple(f.shape)
                raise ValueError(f"text_features must have shape (B, {c.prefix_len}, {c.caption_dim}), got {got}")

    def embed_condition(self, cond: Condition, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> prefix embeddings (B, P, d) and key-valid mask (B, P). ``drop`` (B,) bool swaps in the null condition."""
        if self.is_class_conditional:
            labels = cond.class_labels
            if drop is not None:
                labels = torch.where(drop, torch.full_like(labels, self.config.num_classes), labels)
            emb = self.class_embedding(labels)[:, None]
            return emb, torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        feats = cond.text_features.to(self.uncond_embedding.dtype)
        mask = cond.text_mask.bool() if cond.text_mask is not None else torch.ones(feats.shape[:2], dtype=torch.bool,
                                                                                   device=feats.device)
        if drop is not None:
            feats = torch.where(drop[:, None, None], self.uncond_embedding.expand_as(feats), feats)
            mask = mask | drop[:, None]
        return self.caption_proj(feats), mask

    def null_condition(self, cond: Condition) -> Condition:
        b = cond.batch_size
        if self.is_class_conditional:
            return Condition(class_labels=torch.full((b,), self.config.num_classes, dtype=torch.long,
                                                     device=cond.class_labels.device))
        feats = self.uncond_embedding.expand(b, -1, -1)
        return Condition(text_features=feats, text_mask=torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device))

    # ------------------------------------------------------------------ full-sequence forward (training, checks)
    def _run(self, x, slots, key_valid_rows, caches=None, kv_end=None):
        """x (B, T, d) at sequence slots (B, T); key_valid_rows (B, S) -> final hidden (B, T, d)."""
        s = key_valid_rows.shape[1]
        kidx = torch.arange(s, device=x.device)
        mask = (kidx[None, None, :] <= slots[:, :, None]) & key_valid_rows[:, None, :]
        mask |= kidx[None, None, :] == slots[:, :, None]  # a query always sees itself (no all-masked row)
        cos, sin = self.rope_cos[slots], self.rope_sin[slots]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask[:, None], None if caches is None else caches[i], slots, kv_end)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, condition: Condition, drop_condition: torch.Tensor | None = None):
        """Teacher-forced logits. tokens (B, N) -> logits (B, N, V) where logits[:, i] predicts tokens[:, i].

        ``drop_condition`` (B,) bool replaces the condition by the null one (CFG training).
        """
        prefix, pmask = self.embed_condition(condition, drop_condition)
        p = prefix.shape[1]
        x = self.token_drop(torch.cat([prefix, self.tok_embeddings(tokens[:, :-1])], 1))  # (B, P + N - 1, d)
        slots = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        valid = torch.cat([pmask, torch.ones_like(tokens[:, :-1], dtype=torch.bool)], 1)
        h = self._run(x, slots, valid)
        return self.output(h[:, p - 1:]).float()

    # ------------------------------------------------------------------ generator contract
    def cfg_scale_at(self, state: DecodeState, positions: torch.Tensor) -> torch.Tensor:
        """Guidance scale per predicted token; positions (B, T) of the *predicted* tokens -> (B, T)."""
        s = torch.full(positions.shape, float(state.guidance_scale), device=positions.device)
        if state.cfg_interval is not None:
            lo, hi = state.cfg_interval
            frac = positions.float() / state.num_tokens
            s = torch.where((frac >= lo) & (frac < hi), s, torch.ones_like(s))
        return s

    def _mix(self, state: DecodeState, logits: torch.Tensor, predicted_pos: torch.Tensor) -> torch.Tensor:
        """logits (B', T, V) -> CFG-mixed (B, T, V): u + s (c - u)."""
        if not state.cfg:
            return logits
        c, u = logits.chunk(2)
        return u + self.cfg_scale_at(state, predicted_pos)[..., None] * (c - u)

    @torch.no_grad()
    def prefill(self, condition: Condition, guidance_scale: float = 1.0,
                cfg_interval: tuple[float, float] | None = None, extra_slots: int = 0) -> DecodeState:
        """Write the condition prefix into a fresh static cache; logits for token 0 in ``state.first_logits``.

        ``extra_slots`` reserves scratch positions past the last token (speculative windows at the end).
        """
        self.check_condition(condition)
        if not 0 <= extra_slots <= MAX_EXTRA_SLOTS:
            raise ValueError(f"extra_slots must lie in [0, {MAX_EXTRA_SLOTS}], got {extra_slots}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if cfg_interval is not None and not (0.0 <= cfg_interval[0] <= cfg_interval[1] <= 1.0):
            raise ValueError(f"cfg_interval must satisfy 0 <= start <= end <= 1, got {cfg_interval}")
        b = condition.batch_size
        if guidance_scale != 1.0:
            n = self.null_condition(condition)
            if self.is_class_conditional:
                condition = Condition(class_labels=torch.cat([condition.class_labels, n.class_labels]))
            else:
                tm = condition.text_mask if condition.text_mask is not None else torch.ones(
                    condition.text_features.shape[:2], dtype=torch.bool, device=condition.text_features.device)
                condition = Condition(text_features=torch.cat([condition.text_features, n.text_features.to(
                    condition.text_features.dtype)]), text_mask=torch.cat([tm.bool(), n.text_mask]))
        prefix, pmask = self.embed_condition(condition)
        bb, p, _ = prefix.shape
        s_max = p + self.num_tokens + extra_slots
        hd = self.config.dim // self.config.n_heads
        dev, dt = prefix.device, prefix.dtype
        caches = [(torch.zeros(bb, self.config.n_heads, s_max, hd, device=dev, dtype=dt),
                   torch.zeros(bb, self.config.n_heads, s_max, hd, device=dev, dtype=dt)) for _ in self.layers]
        key_valid = torch.cat([pmask, torch.ones(bb, s_max - p, dtype=torch.bool, device=dev)], 1)
        slots = torch.arange(p, device=dev).expand(bb, -1)
        h = self._run(prefix, slots, key_valid[:, :p], caches, kv_end=p)[:, -1:]  # (B', 1, d)
        state = DecodeState(caches, key_valid, p, self.num_tokens, b, guidance_scale, cfg_interval, None, None,
                            extra_slots)
        logits = self._mix(state, self.output(h).float(), torch.zeros(b, 1, dtype=torch.long, device=dev))
        state.first_logits, state.first_hidden = logits[:, 0], h[:b, 0]
        return state

    @torch.no_grad()
    def forward_step(self, state: DecodeState, tokens: torch.Tensor, positions: torch.Tensor) -> StepOutput:
        """Feed image tokens (B, T) at positions (B, T) = cache_len + arange(T); returns logits for positions + 1."""
        b, t = tokens.shape
        if b != state.batch_size or positions.shape != tokens.shape:
            raise ValueError(f"tokens and positions must both be ({state.batch_size}, T)")
        if not torch.equal(positions[:, 0], state.cache_len) or (t > 1 and not bool((positions.diff(dim=1) == 1).all())):
            raise ValueError("positions must continue the cache contiguously from state.cache_len")
        if int(positions[:, -1].max()) >= state.num_tokens + state.extra_slots:
            raise ValueError(f"positions must be < num_tokens + extra_slots = {state.num_tokens + state.extra_slots}")
        if state.cfg:
            tokens, positions2 = tokens.repeat(2, 1), positions.repeat(2, 1)
        else:
            positions2 = positions
        slots = positions2 + state.prefix_len
        kv_end = int(slots.max()) + 1
        h = self._run(self.tok_embeddings(tokens), slots, state.key_valid[:, :kv_end], state.caches, kv_end)
        state.cache_len = positions[:, -1] + 1
        logits = self._mix(state, self.output(h).float(), positions + 1)
        return StepOutput(logits=logits, hidden=h[:b])
