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

from ..decoding.sampling import check_guidance
from ..safetensors_only import SafetensorsOnly
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
    logits: torch.Tensor  # (B, T, V) float32, CFG-mixed (raster/NBP head; NAR: right head)
    hidden: torch.Tensor  # (B, T, d) conditional branch's last hidden state (drafters read it)
    logits_down: torch.Tensor | None = None  # (B, T, V) NAR down head, CFG-mixed


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
ORDERS = ("raster", "nar", "nbp")


def decoding_for_order(order: str) -> str:
    """The decoder that matches a training order: "ar" for raster, else the order's own ("nar", "nbp")."""
    return "ar" if order == "raster" else order


class ARTransformer(SafetensorsOnly, ModelMixin, ConfigMixin):
    """LlamaGen GPT. ``num_classes > 0``: class-to-image; ``caption_dim > 0``: text-to-image.

    ``order`` picks the generation order (storage and RoPE stay raster; only the mask, the
    targets and the heads change):

    * ``"raster"``: next-token prediction (LlamaGen).
    * ``"nar"``: next-neighbour prediction (He et al. 2025, NAR): token (h, w) sees every token with
      h' + w' <= h + w; a right head (the base head) predicts (h, w + 1) and a down head (an extra
      block + its own norm and output) predicts (h + 1, w); overlapping predictions are averaged as
      logits. A G x G grid takes 2G - 1 forward passes.
    * ``"nbp"``: next-block prediction (Ren et al. 2025, NBP); a block is ``block_rows`` rows (default
      1), or ``block_size`` consecutive raster tokens when set (a divisor of the grid's token count, e.g.
      half a row; NBP ablates block sizes below and above one row): block-causal mask (bidirectional
      inside a block), token l of block b predicts token l of block b + 1. Deviation: the first block
      is predicted from one learned begin-of-image query per block token after the condition (NBP's
      image setting has no given first block), so a G x G grid takes G^2 / (tokens per block) forward
      passes (G for rows).
    """

    @register_to_config
    def __init__(self, vocab_size: int = 1024, grid_size: int = 16, dim: int = 256, n_layers: int = 6,
                 n_heads: int = 8, num_classes: int = 0, caption_dim: int = 0, prefix_len: int = 1,
                 class_dropout_prob: float = 0.1, token_dropout: float = 0.0, dropout: float = 0.0,
                 rope_base: float = 10000.0, norm_eps: float = 1e-5, order: str = "raster",
                 grid_width: int = 0, holistic_tokens: int = 0, holistic_vocab: int = 0, block_rows: int = 1,
                 block_size: int = 0):
        super().__init__()
        if (num_classes > 0) == (caption_dim > 0):
            raise ValueError("exactly one of num_classes and caption_dim must be > 0")
        if num_classes > 0 and prefix_len != 1:
            raise ValueError("class conditioning uses prefix_len=1")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        width = grid_width or grid_size
        if width != grid_size and order != "raster":
            raise ValueError(f"order {order!r} needs a square grid (grid_width == grid_size)")
        if block_rows != 1 and order != "nbp":
            raise ValueError(f"block_rows is an NBP setting (order='nbp'), got order {order!r}")
        if not (isinstance(block_rows, int) and 1 <= block_rows <= grid_size and grid_size % block_rows == 0):
            raise ValueError(f"block_rows must be a divisor of grid_size ({grid_size}), got {block_rows!r}")
        if block_size and order != "nbp":
            raise ValueError(f"block_size is an NBP setting (order='nbp'), got order {order!r}")
        if block_size and block_rows != 1:
            raise ValueError(f"set block_rows or block_size, not both (got {block_rows} and {block_size})")
        if not (isinstance(block_size, int) and block_size >= 0
                and (block_size == 0 or (grid_size * width) % block_size == 0)):
            raise ValueError(f"block_size must be 0 (use block_rows) or a divisor of the {grid_size * width} grid "
                             f"tokens, got {block_size!r}")
        if holistic_tokens and not (0 < holistic_vocab < vocab_size and order == "raster"):
            raise ValueError("holistic_tokens needs raster order and 0 < holistic_vocab < vocab_size")
        self.num_tokens = grid_size * width
        self.grid_size, self.grid_width, self.order = grid_size, width, order
        if holistic_tokens:  # Hita: tokens < holistic_tokens use ids < holistic_vocab, the rest ids >= it
            ids = torch.arange(vocab_size)
            self.register_buffer("_vocab_groups", torch.stack([ids < holistic_vocab, ids >= holistic_vocab]),
                                 persistent=False)  # (2, V) allowed ids: [holistic slot, patch slot]
        else:
            self._vocab_groups = None
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
        if order == "nar":  # dimension-oriented down head: one extra block + norm + output
            self.down_block = Block(dim, n_heads, norm_eps, dropout)
            self.down_norm = RMSNorm(dim, norm_eps)
            self.down_output = nn.Linear(dim, vocab_size, bias=False)
        self.block_size = (block_size or block_rows * width) if order == "nbp" else 1  # tokens per NBP step
        self.bov = self.block_size if order == "nbp" else 0  # begin-of-image query slots (NBP): one block
        if self.bov:
            self.bov_embeddings = nn.Parameter(torch.zeros(self.bov, dim))
        self.prefix_slots = prefix_len + self.bov  # slots before image token 0
        # slot -> (row, col) for RoPE and slot -> rank for the mask ("key visible iff rank <= query rank").
        # Raster adds MAX_EXTRA_SLOTS scratch slots continuing the raster (speculative windows past the end).
        n = torch.arange(self.num_tokens + (MAX_EXTRA_SLOTS if order == "raster" else 0))
        rows, cols = n // width, n % width
        coords = torch.cat([torch.zeros(prefix_len, 2, dtype=torch.long),
                            torch.stack([torch.div(torch.arange(self.bov) - self.bov, width, rounding_mode="floor"),
                                         (torch.arange(self.bov) - self.bov) % width], 1),  # the block before 0
                            torch.stack([rows, cols], 1)])
        if order == "raster":
            image_rank = prefix_len + n
        elif order == "nar":
            image_rank = prefix_len + rows + cols
        else:
            image_rank = prefix_len + 1 + n // self.block_size
        rank = torch.cat([torch.arange(prefix_len), torch.full((self.bov,), prefix_len), image_rank])
        self.register_buffer("slot_rank", rank, persistent=False)  # (S,)
        # KV-cache layout: image position -> offset after the prefix. Raster / NBP store in raster order; NAR
        # stores in generation order (diagonal by diagonal), so each decode step's keys are one contiguous
        # prefix of the cache (shorter attention). ``key_rank`` (S,) = rank of the token stored in each slot.
        if order == "nar":
            gen_order = sorted(range(len(n)), key=lambda i: (int(rows[i] + cols[i]), int(rows[i])))
            cache_index = torch.empty(len(n), dtype=torch.long)
            cache_index[torch.tensor(gen_order)] = torch.arange(len(n))
        else:
            cache_index = n.clone()
        key_rank = rank.clone()
        key_rank[self.prefix_slots + cache_index] = rank[self.prefix_slots + n]
        self.register_buffer("cache_index", cache_index, persistent=False)  # (N,)
        self.register_buffer("key_rank", key_rank, persistent=False)  # (S,)
        cos, sin = rope_2d_table(coords, dim // n_heads, rope_base)  # (S, hd/2)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        nn.init.zeros_(self.output.weight)
        if order == "nar":
            nn.init.zeros_(self.down_output.weight)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def native_decoding(self) -> str:
        """The decoder that matches the training order: "ar" (raster), "nar" or "nbp"."""
        return decoding_for_order(self.order)

    def token_embeddings(self) -> torch.Tensor:
        """(V, d) input embeddings of the image tokens, detached: the fallback geometry for decoders that group
        tokens by similarity (GSD, LANTERN) when no tokenizer codebook was given to ``prepare``."""
        return self.tok_embeddings.weight.detach()

    @property
    def capabilities(self) -> frozenset:
        return frozenset({"ar", "speculative"}) if self.order == "raster" else frozenset({self.order})

    def attention_mask(self, q_slots: torch.Tensor, key_valid: torch.Tensor,
                       write_slots: torch.Tensor | None = None) -> torch.Tensor:
        """q_slots (B, T), key_valid (B, S) -> bool (B, T, S): rank(key) <= rank(query), valid keys, self always.

        Keys are the sequence itself (slot = raster slot), or with ``write_slots`` (B, T) the KV cache, whose
        slot k holds a token of rank ``key_rank[k]`` and where the queries were written at ``write_slots``.
        """
        cached = write_slots is not None
        r = (self.key_rank if cached else self.slot_rank)[: key_valid.shape[1]]
        kidx = torch.arange(key_valid.shape[1], device=q_slots.device)
        mask = (r[None, None, :] <= self.slot_rank[q_slots][:, :, None]) & key_valid[:, None, :]
        return mask | (kidx[None, None, :] == (write_slots if cached else q_slots)[:, :, None])

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
        """-> prefix embeddings (B, P + bov, d) and key-valid mask (B, P + bov). ``drop`` (B,) bool: null condition."""
        if self.is_class_conditional:
            labels = cond.class_labels
            if drop is not None:
                labels = torch.where(drop, torch.full_like(labels, self.config.num_classes), labels)
            emb = self.class_embedding(labels)[:, None]
            mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        else:
            feats = cond.text_features.to(self.uncond_embedding.dtype)
            mask = cond.text_mask.bool() if cond.text_mask is not None else torch.ones(
                feats.shape[:2], dtype=torch.bool, device=feats.device)
            if drop is not None:
                feats = torch.where(drop[:, None, None], self.uncond_embedding.expand_as(feats), feats)
                mask = mask | drop[:, None]
            emb = self.caption_proj(feats)
        if self.bov:
            b = emb.shape[0]
            emb = torch.cat([emb, self.bov_embeddings.expand(b, -1, -1).to(emb.dtype)], 1)
            mask = torch.cat([mask, torch.ones(b, self.bov, dtype=torch.bool, device=mask.device)], 1)
        return emb, mask

    def null_condition(self, cond: Condition) -> Condition:
        b = cond.batch_size
        if self.is_class_conditional:
            return Condition(class_labels=torch.full((b,), self.config.num_classes, dtype=torch.long,
                                                     device=cond.class_labels.device))
        feats = self.uncond_embedding.expand(b, -1, -1)
        return Condition(text_features=feats, text_mask=torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device))

    # ------------------------------------------------------------------ shared forward
    def _run(self, x, slots, key_valid_rows, caches=None, kv_end=None, write_slots=None):
        """x (B, T, d) at slots (B, T); key_valid_rows (B, S) -> (right/base hidden (B, T, d), down hidden or None).

        With ``caches`` (one (k, v) per block, the NAR down block last) K/V are written at ``write_slots``
        (B, T) (default ``slots``; see ``cache_index``) and attention reads cache slots [0, kv_end).
        """
        if caches is not None and write_slots is None:
            write_slots = slots
        mask = self.attention_mask(slots, key_valid_rows, write_slots)[:, None]  # (B, 1, T, S)
        cos, sin = self.rope_cos[slots], self.rope_sin[slots]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, None if caches is None else caches[i], write_slots, kv_end)
        down = None
        if self.order == "nar":
            d = self.down_block(x, cos, sin, mask, None if caches is None else caches[-1], write_slots, kv_end)
            down = self.down_norm(d)
        return self.norm(x), down

    def assemble_nar(self, right: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """NAR target assembly. right/down (B, 1 + N, V): outputs of [last condition slot, z_0..z_{N-1}]
        -> logits (B, N, V) for raster targets: (0,0) <- mean of both condition heads; row 0 <- right of
        the left neighbour; column 0 <- down of the token above; elsewhere the mean of both."""
        g, b, v = self.grid_size, right.shape[0], right.shape[-1]
        r = right[:, 1:].reshape(b, g, g, v)
        d = down[:, 1:].reshape(b, g, g, v)
        out = torch.zeros_like(r)
        cnt = torch.zeros(1, g, g, 1, device=r.device, dtype=r.dtype)
        out[:, :, 1:] += r[:, :, :-1]
        cnt[:, :, 1:] += 1
        out[:, 1:, :] += d[:, :-1, :]
        cnt[:, 1:, :] += 1
        out[:, 0, 0] = right[:, 0] + down[:, 0]
        cnt[:, 0, 0] = 2
        return (out / cnt).reshape(b, g * g, v)

    def forward(self, tokens: torch.Tensor, condition: Condition, drop_condition: torch.Tensor | None = None):
        """Teacher-forced logits. tokens (B, N) raster -> logits (B, N, V) where logits[:, i] predicts tokens[:, i].

        ``drop_condition`` (B,) bool replaces the condition by the null one (CFG training).
        """
        prefix, pmask = self.embed_condition(condition, drop_condition)
        p = prefix.shape[1]
        # raster drops the last token, NBP the last row (nothing predicts past the end); NAR feeds all
        feed = tokens if self.order == "nar" else tokens[:, : tokens.shape[1] - (self.bov or 1)]
        x = self.token_drop(torch.cat([prefix, self.tok_embeddings(feed)], 1))  # (B, S, d)
        slots = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        valid = torch.cat([pmask, torch.ones(feed.shape, dtype=torch.bool, device=x.device)], 1)
        h, down = self._run(x, slots, valid)
        if self.order == "nar":
            return self.assemble_nar(self.output(h[:, p - 1:]).float(), self.down_output(down[:, p - 1:]).float())
        if self.order == "nbp":
            return self.output(h[:, p - self.bov:]).float()  # bov slots -> row 0, row r -> row r + 1
        logits = self.output(h[:, p - 1:]).float()  # (B, N, V)
        return self.restrict_vocab(logits, torch.arange(logits.shape[1], device=logits.device).expand(len(logits), -1))

    # ------------------------------------------------------------------ generator contract
    def cfg_scale_at(self, state: DecodeState, positions: torch.Tensor) -> torch.Tensor:
        """Guidance scale per predicted token; positions (B, T) of the *predicted* tokens -> (B, T). ``cfg_interval``
        [lo, hi) is a fraction of the image in raster position (storage order), for every order: for NAR and NBP it
        selects image rows, not a share of the decoding steps."""
        s = torch.full(positions.shape, float(state.guidance_scale), device=positions.device)
        if state.cfg_interval is not None:
            lo, hi = state.cfg_interval
            frac = positions.float() / state.num_tokens
            s = torch.where((frac >= lo) & (frac < hi), s, torch.ones_like(s))
        return s

    def restrict_vocab(self, logits: torch.Tensor, predicted_pos: torch.Tensor) -> torch.Tensor:
        """Hita layouts: -inf on ids that cannot occur at the predicted positions (B, T); logits (B, T, V)."""
        if self._vocab_groups is None:
            return logits
        patch_slot = (predicted_pos >= self.config.holistic_tokens).long()  # (B, T)
        return logits.masked_fill(~self._vocab_groups[patch_slot], float("-inf"))

    def _mix(self, state: DecodeState, logits: torch.Tensor, predicted_pos: torch.Tensor) -> torch.Tensor:
        """logits (B', T, V) -> CFG-mixed (B, T, V): u + s (c - u), restricted to the ids allowed there."""
        if state.cfg:
            c, u = logits.chunk(2)
            logits = u + self.cfg_scale_at(state, predicted_pos)[..., None] * (c - u)
        return self.restrict_vocab(logits, predicted_pos)

    def _heads(self, state, h, down, fed_pos):
        """Hidden states of fed tokens at positions fed_pos (B, T) -> mixed (right/base logits, down logits)."""
        g = self.grid_size
        step = self.block_size if self.order == "nbp" else 1
        logits = self._mix(state, self.output(h).float(), fed_pos + step)
        if down is None:
            return logits, None
        return logits, self._mix(state, self.down_output(down).float(), fed_pos + g)

    @torch.no_grad()
    def prefill(self, condition: Condition, guidance_scale: float = 1.0,
                cfg_interval: tuple[float, float] | None = None, extra_slots: int = 0) -> DecodeState:
        """Write the condition prefix into a fresh static cache.

        ``state.first_logits`` predicts the first step: (B, V) for token 0 (raster, NAR: both heads
        averaged) or (B, G, V) for row 0 (NBP). ``extra_slots`` reserves scratch positions past the
        last token (raster only: speculative windows at the end).
        """
        self.check_condition(condition)
        check_guidance(guidance_scale)
        if cfg_interval is not None and not (
                isinstance(cfg_interval, (tuple, list)) and len(cfg_interval) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in cfg_interval)
                and 0.0 <= cfg_interval[0] <= cfg_interval[1] <= 1.0):
            raise ValueError(f"cfg_interval must be a pair (start, end) with 0 <= start <= end <= 1, "
                             f"got {cfg_interval!r}")
        max_extra = MAX_EXTRA_SLOTS if self.order == "raster" else 0
        if not 0 <= extra_slots <= max_extra:
            raise ValueError(f"extra_slots must lie in [0, {max_extra}] (a speculative decoder's window W needs W - 1), "
                             f"got {extra_slots}")
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
        n_blocks = len(self.layers) + (1 if self.order == "nar" else 0)
        caches = [(torch.zeros(bb, self.config.n_heads, s_max, hd, device=dev, dtype=dt),
                   torch.zeros(bb, self.config.n_heads, s_max, hd, device=dev, dtype=dt)) for _ in range(n_blocks)]
        key_valid = torch.cat([pmask, torch.ones(bb, s_max - p, dtype=torch.bool, device=dev)], 1)
        slots = torch.arange(p, device=dev).expand(bb, -1)
        h, down = self._run(prefix, slots, key_valid[:, :p], caches, kv_end=p)
        state = DecodeState(caches, key_valid, p, self.num_tokens, b, guidance_scale, cfg_interval, None, None,
                            extra_slots)
        if self.order == "nbp":  # the G begin-of-image queries predict row 0
            first = self._mix(state, self.output(h[:, -self.bov:]).float(),
                              torch.arange(self.bov, device=dev).expand(b, -1))
            state.first_logits, state.first_hidden = first, h[:b, -self.bov:]
            return state
        zero = torch.zeros(b, 1, dtype=torch.long, device=dev)
        logits = self._mix(state, self.output(h[:, -1:]).float(), zero)[:, 0]
        if self.order == "nar":
            logits = 0.5 * (logits + self._mix(state, self.down_output(down[:, -1:]).float(), zero)[:, 0])
        state.first_logits, state.first_hidden = logits, h[:b, -1]
        return state

    @torch.no_grad()
    def forward_step(self, state: DecodeState, tokens: torch.Tensor, positions: torch.Tensor) -> StepOutput:
        """Feed image tokens (B, T) at raster positions (B, T).

        raster: positions = cache_len + arange(T); logits[:, j] predicts position + 1 (rollback allowed).
        nar: any set of positions (a diagonal); ``logits`` = right head (predicts (h, w + 1)),
        ``logits_down`` = down head (predicts (h + 1, w)). nbp: a whole block; logits predict the next block.
        """
        b, t = tokens.shape
        if b != state.batch_size or positions.shape != tokens.shape:
            raise ValueError(f"tokens and positions must both be ({state.batch_size}, T)")
        if self.order == "raster" and (not torch.equal(positions[:, 0], state.cache_len)
                                       or (t > 1 and not bool((positions.diff(dim=1) == 1).all()))):
            raise ValueError("positions must continue the cache contiguously from state.cache_len")
        if int(positions.max()) >= state.num_tokens + state.extra_slots or int(positions.min()) < 0:
            raise ValueError(f"positions must lie in [0, {state.num_tokens + state.extra_slots})")
        if state.cfg:
            tokens, positions2 = tokens.repeat(2, 1), positions.repeat(2, 1)
        else:
            positions2 = positions
        slots = positions2 + state.prefix_len  # (B', T) raster slots: RoPE and rank
        write = self.cache_index[positions2] + state.prefix_len  # (B', T) cache slots
        kv_end = int(write.max()) + 1
        h, down = self._run(self.tok_embeddings(tokens), slots, state.key_valid[:, :kv_end], state.caches, kv_end,
                            write_slots=write)
        state.cache_len = positions[:, -1] + 1 if self.order == "raster" else state.cache_len + t
        logits, logits_down = self._heads(state, h, down, positions)
        return StepOutput(logits=logits, hidden=h[:b], logits_down=logits_down)
