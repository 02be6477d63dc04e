"""AR text-to-speech generator over RVQ codec tokens, with cascaded multi-token prediction (MCTP).

Backbone: the image generator's blocks (pre-norm RMSNorm, SwiGLU, :func:`mmgen.models.attention`)
with 1D RoPE, a static KV cache and a voice + character prefix (VALL-E-style decoder-only TTS).

RVQ levels use MusicGen's **delay pattern** (Copet et al. 2023): level q of frame f is emitted at
step s = f + q, so one step carries M tokens (one per level) from M heads, and the input of step
s + 1 is the sum of the M level embeddings of step s. Special ids per level: ``PAD = K`` (before a
level starts), ``END = K + 1`` (level 0 emits END at step F; later levels end M - 1 steps after).

MCTP (VITA-Audio, Long et al. 2025, arXiv 2505.03739; the MTP of GOAT-TTS, arXiv 2504.12339):
``mctp - 1`` light modules; module i fuses RMSNorm(embedding of step s + i - 1's tokens) with
RMSNorm(the previous module's state; the backbone's last hidden for i = 1) through a bias-free
Linear(2d -> d), runs one residual SwiGLU block and the **shared** output heads, and predicts step
s + i. One backbone forward therefore yields ``mctp`` steps; the next backbone forward feeds all
of them at once (KV appended). ``mctp = 1`` is plain AR, token for token.
Deviations from VITA-Audio: the module block is a feed-forward block without self-attention (the
module needs no KV cache of its own); modules are trained jointly with the backbone
(loss = CE_main + w * mean_i CE_i) instead of in frozen-backbone stages.

Dual tokens (DualSpeechLM idea): with ``input_kind="semantic"`` the prefix holds the text-aligned
semantic tokens of a source utterance instead of characters, and the model outputs acoustic tokens
in the requested voice (:class:`~mmgen.pipelines.speech.DualTokenSpeechPipeline`).

Generator contract for speech: ``prefill(text_ids, voices) -> SpeechState`` and
``forward_step(state, step_tokens (B, T, M)) -> hidden (B, T, d)``; ``generate`` and
``generate_stream`` drive them (see :meth:`generate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..decoding.sampling import multinomial
from ..safetensors_only import SafetensorsOnly
from .ar_transformer import Block, RMSNorm, ffn_hidden
from .rope import rope_1d_table

TEXT_PAD = 0
# what the prefix ids are: "text" = characters (ALPHABET index + 1); "semantic" = CTC semantic speech
# tokens + 1 (:class:`~mmgen.audio.dual.CTCSpeechTokenizer`, the dual-token model); 0 pads either
INPUT_KINDS = ("text", "semantic")


class MCTPModule(nn.Module):
    """One cascaded multi-token-prediction module: fuse(token embedding, previous state) -> SwiGLU block."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm_emb, self.norm_state = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.fuse = nn.Linear(2 * dim, dim, bias=False)
        self.ffn_norm = RMSNorm(dim, eps)
        hidden = ffn_hidden(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, emb: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """emb, state (..., d) -> new state (..., d)."""
        h = self.fuse(torch.cat([self.norm_emb(emb), self.norm_state(state)], dim=-1))
        y = self.ffn_norm(h)
        return h + self.w2(F.silu(self.w1(y)) * self.w3(y))


@dataclass
class SpeechState:
    """KV cache and bookkeeping of one batch being generated."""

    caches: list                # per layer (k, v), each (B, H, S_max, hd)
    pad: torch.Tensor           # (B,) left padding of the prefix
    length: int                 # slots written so far
    hidden: torch.Tensor        # (B, d) last backbone hidden state (predicts the next step)
    forward_passes: int = 1


@dataclass
class SpeechGeneration:
    codes: list                 # per row: (M, F) long codec codes
    steps: torch.Tensor         # (B, S, M) delayed-grid tokens as generated
    forward_passes: int = 0
    steps_per_forward: list = field(default_factory=list)


class SpeechTransformer(SafetensorsOnly, ModelMixin, ConfigMixin):
    """Decoder-only TTS over delay-pattern RVQ tokens with optional MCTP modules (see module docstring)."""

    @register_to_config
    def __init__(self, text_vocab_size: int = 29, voices: tuple = ("en-us+f2",), num_quantizers: int = 2,
                 codebook_size: int = 256, dim: int = 192, n_layers: int = 4, n_heads: int = 4,
                 max_text_len: int = 200, max_frames: int = 600, mctp: int = 4, dropout: float = 0.0,
                 norm_eps: float = 1e-5, rope_base: float = 10000.0, input_kind: str = "text"):
        super().__init__()
        if mctp < 1:
            raise ValueError(f"mctp must be >= 1, got {mctp}")
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
        v = codebook_size + 2
        self.text_emb = nn.Embedding(text_vocab_size, dim)
        self.voice_emb = nn.Embedding(len(voices), dim)
        self.audio_emb = nn.ModuleList([nn.Embedding(v, dim) for _ in range(num_quantizers)])
        self.start = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList([Block(dim, n_heads, norm_eps, dropout) for _ in range(n_layers)])
        self.norm = RMSNorm(dim, norm_eps)
        self.heads = nn.ModuleList([nn.Linear(dim, v, bias=False) for _ in range(num_quantizers)])
        self.modules_mctp = nn.ModuleList([MCTPModule(dim, norm_eps) for _ in range(mctp - 1)])
        self.mod_norm = RMSNorm(dim, norm_eps)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    # --- ids and layout -----------------------------------------------------------------------------
    @property
    def PAD(self) -> int:
        return self.config.codebook_size

    @property
    def END(self) -> int:
        return self.config.codebook_size + 1

    @property
    def num_levels(self) -> int:
        return self.config.num_quantizers

    def voice_index(self, voice: str) -> int:
        voices = list(self.config.voices)
        if voice not in voices:
            raise ValueError(f"voice must be one of {voices}, got {voice!r}")
        return voices.index(voice)

    def delay(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (M, F) -> delayed grid (S, M), S = F + M (level 0's END at step F, every level ended by S - 1)."""
        m, f = codes.shape
        grid = torch.full((f + m, m), self.END, dtype=torch.long)
        for q in range(m):
            grid[:q, q] = self.PAD
            grid[q:q + f, q] = codes[q]
        return grid

    def undelay(self, grid: torch.Tensor) -> torch.Tensor:
        """delayed grid (S, M) -> codes (M, F) up to level 0's first END."""
        m = grid.shape[1]
        ends = (grid[:, 0] == self.END).nonzero()
        f = int(ends[0]) if len(ends) else grid.shape[0]
        f = max(0, min(f, grid.shape[0] - (m - 1)))  # a partial grid shorter than the delay holds no full frame
        return torch.stack([grid[q:q + f, q] for q in range(m)])

    # --- backbone -----------------------------------------------------------------------------------
    def embed_steps(self, steps: torch.Tensor) -> torch.Tensor:
        """steps (B, T, M) ids -> (B, T, d) sum of the level embeddings."""
        return sum(self.audio_emb[q](steps[..., q]) for q in range(self.num_levels))

    def _prefix(self, text_ids: torch.Tensor, voices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, Tt) left-padded, voices (B,) -> prefix embeddings (B, 1 + Tt + 1, d) incl. start, pad (B,)."""
        b = text_ids.shape[0]
        pad = (text_ids == TEXT_PAD).sum(1)
        x = torch.cat([self.voice_emb(voices)[:, None], self.text_emb(text_ids), self.start.expand(b, 1, -1)], 1)
        # the voice token sits right before the first character: move it past the left padding
        idx = torch.arange(x.shape[1], device=x.device)[None].expand(b, -1)
        src = torch.where(idx < pad[:, None], idx + 1, torch.where(idx == pad[:, None], 0, idx))
        return x.gather(1, src[..., None].expand_as(x)), pad

    def _run(self, x, slots, pad, caches=None, kv_end=None):
        """x (B, T, d) at slots (T,) -> hidden (B, T, d); causal mask without the left padding."""
        b = x.shape[0]
        positions = slots[None] - pad[:, None]  # (B, T)
        cos, sin = rope_1d_table(positions.clamp_min(0), self.config.dim // self.config.n_heads, self.config.rope_base)
        s = kv_end if caches is not None else x.shape[1]
        keys = torch.arange(s, device=x.device)
        mask = (keys[None, None] <= slots[None, :, None]) & (keys[None, None] >= pad[:, None, None])  # (B, T, S)
        mask = mask[:, None]
        write = slots[None].expand(b, -1)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, mask, cache=None if caches is None else caches[i], write_slots=write, kv_end=kv_end)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., d) -> (..., M, K + 2)."""
        return torch.stack([head(h) for head in self.heads], dim=-2)

    def forward(self, text_ids: torch.Tensor, voices: torch.Tensor, steps: torch.Tensor):
        """Teacher forcing. text (B, Tt), voices (B,), steps (B, S, M) delayed grids (END-padded).

        Returns backbone logits (B, S, M, K+2) for steps 0..S-1 and, per MCTP module i, logits
        (B, S - i, M, K+2) for steps i..S-1.
        """
        prefix, pad = self._prefix(text_ids, voices)
        x = torch.cat([prefix, self.embed_steps(steps[:, :-1])], 1)  # inputs: prefix+start, steps 0..S-2
        p = prefix.shape[1]
        h = self._run(x, torch.arange(x.shape[1], device=x.device), pad)[:, p - 1:]  # (B, S, d) predicts step s
        out = [self.logits(h)]
        state = h
        emb = self.embed_steps(steps)  # (B, S, d)
        for i, mod in enumerate(self.modules_mctp, start=1):
            state = mod(emb[:, i - 1:-1], state[:, :-1])  # predicts steps i..S-1
            out.append(self.logits(self.mod_norm(state)))
        return out

    # --- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, text_ids: torch.Tensor, voices: torch.Tensor, max_steps: int) -> SpeechState:
        prefix, pad = self._prefix(text_ids, voices)
        b, p, _ = prefix.shape
        hd = self.config.dim // self.config.n_heads
        s_max = p + max_steps + 1
        caches = [(prefix.new_zeros(b, self.config.n_heads, s_max, hd), prefix.new_zeros(b, self.config.n_heads, s_max, hd))
                  for _ in self.blocks]
        h = self._run(prefix, torch.arange(p, device=prefix.device), pad, caches, kv_end=p)
        return SpeechState(caches, pad, p, h[:, -1])

    @torch.no_grad()
    def forward_step(self, state: SpeechState, steps: torch.Tensor) -> torch.Tensor:
        """Feed step tokens (B, T, M) after the cache; returns hidden (B, T, d); the last predicts the next step."""
        t = steps.shape[1]
        slots = torch.arange(state.length, state.length + t, device=steps.device)
        h = self._run(self.embed_steps(steps), slots, state.pad, state.caches, kv_end=state.length + t)
        state.length += t
        state.hidden = h[:, -1]
        state.forward_passes += 1
        return h

    def _pick(self, logits: torch.Tensor, step: int, end_at: torch.Tensor, temperature: float, top_k: int | None,
              generator, min_frames: int = 0) -> torch.Tensor:
        """logits (B, M, K+2) for delayed step ``step`` -> tokens (B, M) with the delay pattern enforced."""
        b, m, v = logits.shape
        k = self.config.codebook_size
        allowed = torch.zeros(b, m, v, dtype=torch.bool, device=logits.device)
        allowed[..., :k] = True
        allowed[:, 0, self.END] = step >= min_frames  # only level 0 may decide to stop
        logits = logits.masked_fill(~allowed, float("-inf"))
        if temperature <= 0:
            tok = logits.argmax(-1)
        else:
            z = logits / temperature
            if top_k:
                kth = z.topk(min(top_k, v), dim=-1).values[..., -1:]
                z = z.masked_fill(z < kth, float("-inf"))
            probs = z.softmax(-1).reshape(b * m, v)
            tok = multinomial(probs, generator).reshape(b, m)  # drawn on the generator's device
        q = torch.arange(m, device=logits.device)
        frame = step - q  # (M,) frame index each level is on
        tok = torch.where(frame[None] < 0, torch.full_like(tok, self.PAD), tok)
        ended = frame[None] >= end_at[:, None]  # level already past the row's last frame
        return torch.where(ended, torch.full_like(tok, self.END), tok)

    @torch.no_grad()
    def generate_stream(self, text_ids: torch.Tensor, voices: torch.Tensor, mctp: int | None = None,
                        temperature: float = 0.0, top_k: int | None = None, max_frames: int | None = None,
                        min_frames: int = 0, generator: torch.Generator | None = None):
        """Yield ``(new_steps (B, n, M), forward_passes)`` after every backbone forward, until every row ends.

        ``mctp`` (1..config.mctp) = steps per backbone forward; 1 = plain AR. Greedy when
        ``temperature`` is 0. Rows that end early keep emitting END (forced) until the batch ends.
        ``min_frames`` forbids END before that frame (like ``min_new_tokens`` in transformers).
        """
        k_max = self.config.mctp
        mctp = k_max if mctp is None else int(mctp)
        if not 1 <= mctp <= k_max:
            raise ValueError(f"mctp must be in [1, {k_max}] for this model, got {mctp}")
        max_frames = int(max_frames or self.config.max_frames)
        if not 1 <= max_frames <= self.config.max_frames:
            raise ValueError(f"max_frames must be in [1, {self.config.max_frames}], got {max_frames}")
        b, m = text_ids.shape[0], self.num_levels
        max_steps = max_frames + m
        state = self.prefill(text_ids, voices, max_steps)
        end_at = torch.full((b,), max_frames, dtype=torch.long, device=text_ids.device)
        step = 0
        while step < max_steps:
            new, h = [], state.hidden
            for i in range(mctp):
                if step + i >= max_steps:
                    break
                if i > 0:
                    h = self.modules_mctp[i - 1](self.embed_steps(new[-1][:, None])[:, 0], h)
                logits = self.logits(self.mod_norm(h) if i > 0 else h)
                tok = self._pick(logits, step + i, end_at, temperature, top_k, generator, min_frames)  # (B, M)
                stopped = (tok[:, 0] == self.END) & (end_at > step + i)
                end_at = torch.where(stopped, torch.full_like(end_at, step + i), end_at)
                new.append(tok)
            steps = torch.stack(new, 1)  # (B, n, M)
            step += steps.shape[1]
            done = bool((step >= end_at + m).all())
            yield steps, state.forward_passes
            if done or step >= max_steps:
                return
            self.forward_step(state, steps)

    @torch.no_grad()
    def generate(self, text_ids: torch.Tensor, voices: torch.Tensor, **kw) -> SpeechGeneration:
        """Whole-utterance generation: concatenates :meth:`generate_stream` and undelays each row."""
        chunks, per_forward, passes = [], [], 0
        for steps, passes in self.generate_stream(text_ids, voices, **kw):
            chunks.append(steps)
            per_forward.append(steps.shape[1])
        grid = torch.cat(chunks, 1)  # (B, S, M)
        return SpeechGeneration([self.undelay(g) for g in grid], grid, passes, per_forward)
