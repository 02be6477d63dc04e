"""Grouped Speculative Decoding (GSD; So et al. 2025, "Grouped Speculative Decoding for
Autoregressive Image Generation", arXiv 2508.07747, ICCV 2025).

A fork of SJD (:mod:`.sjd`) in which only the acceptance test changes. For a draft ``d`` verified
against the target ``P`` (final probabilities) with stored proposal ``q``:

1. rank the vocabulary by ``P`` (ascending; one sort per iteration for all slots, not per slot);
   ``r`` = rank of ``d``;
2. candidates = the tokens of ranks ``[r - G//2, r + G - G//2 - 1]`` (the code's ``[r-7, r+6]`` for
   ``G = 14``), ranks outside ``[0, V)`` dropped (the code's negative-slice bug is not reproduced);
3. keep a candidate ``y`` iff ``|P(y) - P(d)| < delta_p`` and ``||e_y - e_d||^2 < dist_thr``;
   ``d`` is always kept -> the dynamic group ``C(d)``;
4. accept iff ``u < min(1, sum_{y in C} P(y) / sum_{y in C} q(y))`` and emit ``d`` itself;
5. on rejection: SJD's token-level residual ``norm(max(P - q, 0))`` and Jacobi refresh.

Defaults follow the code (``test_GSD.py``): ``group_size=14``, ``delta_p=0.15``, ``dist_thr=0.5``
(squared L2), window 16, random init. The paper reports ``G = 25`` (COCO) / ``50`` (Parti) for an
8192-code vocabulary; pass ``group_size`` to change it.

Deviation: the embedding ``e`` is the tokenizer's l2-normalised VQ codebook (read in
:meth:`prepare`; "visually interchangeable" tokens), not the LLM's input-embedding rows that the
code uses (Lumina-mGPT's first 10000 ids); without ``prepare`` the generator's token embeddings
(l2-normalised) are used. ``embedding="generator"`` forces the latter.
Greedy mode (no paper counterpart): accept ``d`` iff the argmax of ``P`` lies in ``C(d)``.
**Lossy** (groups overlap and the emitted token is always the draft), reference note section 3.5.
``group_size=1`` (or ``delta_p=0``) runs exactly SJD, random numbers included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register_decoder
from .sampling import is_count, is_finite_number
from .sjd import SJDDecoder


@register_decoder("gsd")
class GSDDecoder(SJDDecoder):
    def __init__(self, window: int = 16, init: str = "random", group_size: int = 14, delta_p: float = 0.15,
                 dist_thr: float = 0.5, embedding: str = "codebook"):
        super().__init__(window=window, init=init)
        if not is_count(group_size) or group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
        if not (is_finite_number(delta_p) and is_finite_number(dist_thr) and delta_p >= 0 and dist_thr >= 0):
            raise ValueError(f"delta_p and dist_thr must be finite numbers >= 0, got {delta_p!r} and {dist_thr!r}")
        if embedding not in ("codebook", "generator"):
            raise ValueError(f"embedding must be 'codebook' or 'generator', got {embedding!r}")
        self.group_size, self.delta_p, self.dist_thr, self.embedding = group_size, delta_p, dist_thr, embedding
        self._emb = None  # (V, D) l2-normalised

    def prepare(self, tokenizer) -> None:
        if self.embedding == "codebook" and getattr(tokenizer, "codebook", None) is not None:
            self._emb = F.normalize(tokenizer.codebook.detach().float(), dim=-1)  # SEED's codes are not unit

    def decode(self, generator, state, sampling, rng=None, callback=None):
        emb = self._emb
        if emb is None or emb.shape[0] != state.first_logits.shape[-1]:
            emb = F.normalize(generator.token_embeddings().float(), dim=-1)
        self._emb_now = emb.to(state.first_logits.device)
        return super().decode(generator, state, sampling, rng, callback)

    def group(self, p: torch.Tensor, drafts: torch.Tensor):
        """p (B, K, V), drafts (B, K) -> candidate ids (B, K, G) and membership mask (B, K, G)."""
        v = p.shape[-1]
        order = p.argsort(dim=-1, stable=True)  # (B, K, V) ascending by P (the one sort per iteration)
        rank = (order == drafts[..., None]).int().argmax(-1, keepdim=True)  # (B, K, 1): where d sits, O(V)
        offs = torch.arange(self.group_size, device=p.device) - self.group_size // 2  # (G,)
        r = rank + offs  # (B, K, G)
        inside = (r >= 0) & (r < v)
        cand = order.gather(-1, r.clamp(0, v - 1))  # (B, K, G)
        pd = p.gather(-1, drafts[..., None])  # (B, K, 1)
        close_p = (p.gather(-1, cand) - pd).abs() < self.delta_p
        e = self._emb_now
        dist = (e[cand] - e[drafts][..., None, :]).pow(2).sum(-1)  # (B, K, G)
        member = inside & ((close_p & (dist < self.dist_thr)) | (cand == drafts[..., None]))  # d always kept
        return cand, member

    def _accept_prob(self, p, q, drafts):
        cand, member = self.group(p, drafts)
        w = member.to(p.dtype)
        ps = (p.gather(-1, cand) * w).sum(-1)  # (B, K)
        qs = (q.gather(-1, cand) * w).sum(-1)  # (B, K)
        return (ps / qs.clamp_min(1e-30)).clamp(max=1.0), None

    def _greedy_accept(self, p, logits, drafts):
        cand, member = self.group(p, drafts)
        top = logits.argmax(-1, keepdim=True)  # (B, K, 1)
        return ((cand == top) & member).any(-1)
