"""Speculative Jacobi Decoding (SJD; Teng et al. 2024, "Accelerating Auto-regressive Text-to-Image
Generation with Training-free Speculative Jacobi Decoding", arXiv 2410.01699, ICLR 2025).

The generator drafts for itself by Jacobi iteration over a sliding window (no draft model).
Per iteration and row (committed tokens ``a_0..a_{n-1}``, draft buffer ``d_1..d_K`` for positions
``n..n+K-1`` with the distributions ``q_1..q_K`` they were drawn from, ``K = window - 1``):

1. one ``forward_step`` over ``[a_{n-1}, d_1..d_K]`` at positions ``n-1..n+K-1`` gives
   ``P_0..P_K`` (``P_j`` = :func:`final_probs` of the CFG-mixed logits, predicting position ``n+j``);
2. verify ``i = 1..K``: accept ``d_i`` iff ``u_i < min(1, P_{i-1}(d_i) / q_i(d_i))``;
3. at the first rejection ``i*`` emit ``z ~ norm(max(P_{i*-1} - q_{i*}, 0))`` (built on the final
   probabilities, never re-warped: reference note section 1.6), else a bonus token ``~ P_K``;
4. Jacobi refresh: every window output ``y_j ~ P_j`` past the emitted tokens becomes the next draft
   with ``q := P_j`` (the distribution it was drawn from); the tail is topped up with fresh drafts;
5. KV rollback: ``state.truncate(n_new - 1)`` keeps exactly the K/V of the committed tokens
   except the last one, which is fed first in the next window.

This is standard speculative sampling per position with a proposal that never depends on the
acceptance randomness, hence lossless (every committed token has law ``p(.|prefix)``).

**Greedy** (``sampling.do_sample == False``): exact Jacobi decoding, accept ``d_i`` iff it equals
the argmax of the logits at slot ``i-1``; emits exactly greedy AR's tokens (up to float ties).

**Draft initialisation** (``init``; q is one-hot at the draft, so it stays lossless):
``"random"`` uniform over the vocabulary (Lumina-mGPT / Emu3 default in the code);
``"left"`` copies the raster predecessor (code's ``repeat_horizon``, which draws a random token in
column 0 instead);
``"above"`` copies the token one grid row above (the paper's "vertical repeat", Fig. 9), falling
back to the left neighbour in the first row. Neighbours may themselves be drafts.

**Batch >= 1.** Rows accept different lengths: every row keeps its own committed length ``n_b``
and its own window; the generator accepts per-row positions, so nothing is synchronised (unlike
the reference code, which cuts every row to the batch minimum). A row that finished, or whose
window runs past the last token, feeds its window into the scratch slots ``[N, N + extra_slots)``
(``extra_slots = window - 1``) and those outputs are ignored; drafts at positions ``>= N`` are
never verified. Finished rows ride along until every row is done (their compute is wasted, their
stats are not counted). ``callback`` gets the minimum committed prefix after each iteration.

**Randomness** comes only from ``rng`` (one ``torch.Generator`` or a list with one per row; with
a list every row draws a fixed number of variates per iteration from its own generator, so a
row's output does not depend on its batch mates).

Deviations from the reference code: first image token is sampled from the prefill logits (our
generator has no BOS to feed); per-row windows instead of batch-minimum acceptance; the residual
is not re-warped; no structural (end-of-line) tokens exist in this generator.

Subclasses (:mod:`.gsd`, :mod:`.lantern`) override only :meth:`SJDDecoder._accept_prob`,
:meth:`SJDDecoder._greedy_accept` and :meth:`SJDDecoder._residual`, so with their relaxation off
they run the identical code path and consume the identical random numbers.
"""

from __future__ import annotations

import math

import torch

from .base import DecodeResult, Decoder, register_decoder
from .sampling import SamplingConfig, draw_device, final_probs, is_count, multinomial

INITS = ("random", "left", "above")


# ---------------------------------------------------------------------------- random helpers
# every draw happens on the generator's device and is moved to ``device`` (sampling.draw_device)
def _rand(rng, b: int, k: int, device) -> torch.Tensor:
    """U(0, 1) variates (B, k); row b from ``rng[b]`` when ``rng`` is a list."""
    if isinstance(rng, (list, tuple)):
        return torch.stack([torch.rand(k, generator=g, device=draw_device(g, device)).to(device) for g in rng])
    return torch.rand(b, k, generator=rng, device=draw_device(rng, device)).to(device)


def _randint(rng, b: int, k: int, high: int, device) -> torch.Tensor:
    if isinstance(rng, (list, tuple)):
        return torch.stack([torch.randint(high, (k,), generator=g, device=draw_device(g, device)).to(device)
                            for g in rng])
    return torch.randint(high, (b, k), generator=rng, device=draw_device(rng, device)).to(device)


def _multinomial(probs: torch.Tensor, rng) -> torch.Tensor:
    """probs (B, T, V) -> one draw per (row, slot) (B, T); row b from ``rng[b]`` for a list."""
    b, t, v = probs.shape
    if isinstance(rng, (list, tuple)):
        if len(rng) != b:
            raise ValueError(f"generator list must have one generator per row ({b}), got {len(rng)}")
        return torch.stack([multinomial(probs[i], g) for i, g in enumerate(rng)])
    return multinomial(probs.reshape(b * t, v), rng).view(b, t)


def residual_probs(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)) on final probabilities; p, q (..., V). Falls back to p where the residual
    has no mass (only possible when the draft could not have been rejected)."""
    r = (p - q).clamp_min(0)  # (..., V)
    s = r.sum(-1, keepdim=True)
    return torch.where(s > 1e-12, r / s.clamp_min(1e-30), p)


# ---------------------------------------------------------------------------- the decoder
@register_decoder("sjd")
class SJDDecoder(Decoder):
    """Speculative Jacobi Decoding. Options: ``window`` L (default 16, as in every model of the
    reference code) and ``init`` in ``("random", "left", "above")`` (default ``"random"``)."""

    requires = "speculative"

    def __init__(self, window: int = 16, init: str = "random"):
        if not is_count(window) or window < 2:
            raise ValueError(f"window must be an integer >= 2, got {window!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.window, self.init = window, init
        self.extra_slots = window - 1  # a finished row feeds positions N-1 .. N+L-2

    # ---- hooks overridden by the relaxed variants ------------------------------------------
    def _accept_prob(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor):
        """p, q (B, K, V); drafts (B, K) -> acceptance probabilities (B, K) and an aux object for
        :meth:`_residual`. SJD: ``min(1, p(d) / q(d))``."""
        pd = p.gather(-1, drafts[..., None])[..., 0]  # (B, K)
        qd = q.gather(-1, drafts[..., None])[..., 0]  # (B, K)
        return (pd / qd.clamp_min(1e-30)).clamp(max=1.0), None

    def _greedy_accept(self, p: torch.Tensor, logits: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
        """Greedy Jacobi criterion: draft == argmax of the logits. p, logits (B, K, V) -> (B, K) bool."""
        return drafts == logits.argmax(-1)

    def _residual(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, slot: torch.Tensor, aux) -> torch.Tensor:
        """Residual at the first rejection. p, q (B, V) at the rejected slot; drafts (B,); slot (B,)."""
        return residual_probs(p, q)

    # ---- shared verification -----------------------------------------------------------------
    def _verify(self, logits, p, drafts, q, k_valid, sampling: SamplingConfig, rng):
        """One verification for all rows.

        logits, p (B, K+1, V): window outputs (p = final probs); drafts (B, K); q (B, K, V) the
        draft distributions; k_valid (B,) number of real drafts (positions < N).
        Returns m (B,) accepted drafts and nxt (B,) the token emitted after them (residual sample
        at a rejection, bonus sample otherwise; meaningless where m == k_valid == N - n).
        """
        b, k = drafts.shape
        slots = torch.arange(k, device=drafts.device)
        if not sampling.do_sample:
            ok = self._greedy_accept(p[:, :-1], logits[:, :-1], drafts)  # (B, K)
        else:
            u = _rand(rng, b, k, drafts.device)  # (B, K)
            a, aux = self._accept_prob(p[:, :-1], q, drafts)  # (B, K)
            ok = u < a
        ok &= slots[None] < k_valid[:, None]
        m = ok.long().cumprod(1).sum(1)  # (B,) accepted prefix length
        rows = torch.arange(b, device=drafts.device)
        p_m = p[rows, m]  # (B, V) target at the first non-accepted slot
        if not sampling.do_sample:
            return m, logits[rows, m].argmax(-1)
        rejected = m < k_valid  # (B,)
        mc = m.clamp(max=k - 1)
        target = torch.where(rejected[:, None], self._residual(p_m, q[rows, mc], drafts[rows, mc], mc, aux), p_m)
        return m, _multinomial(target[:, None], rng)[:, 0]

    # ---- draft initialisation ------------------------------------------------------------------
    def _init_drafts(self, canvas, drafts, q, n, start, rng, grid: int, vocab: int):
        """Fill draft slots j >= start (B,) in place. canvas (B, N + L) committed tokens;
        drafts (B, K); q (B, K, V) (set one-hot); n (B,) committed lengths."""
        b, k = drafts.shape
        rows = torch.arange(b, device=drafts.device)
        rand = _randint(rng, b, k, vocab, drafts.device) if self.init == "random" else None  # (B, K)
        for j in range(k):
            need = j >= start  # (B,)
            if not bool(need.any()):
                continue
            pos = n + j  # (B,) position of slot j
            if self.init == "random":
                new = rand[:, j]
            else:
                left = drafts[:, j - 1] if j > 0 else canvas[rows, (n - 1).clamp_min(0)]
                if self.init == "left":
                    new = left
                else:  # above: a committed token (pos - grid < n) or an earlier draft of this window
                    src = pos - grid
                    above = torch.where(src < n, canvas[rows, src.clamp_min(0)],
                                        drafts[rows, (j - grid) if j >= grid else 0])
                    new = torch.where(src >= 0, above, left)
            drafts[:, j] = torch.where(need, new, drafts[:, j])
            onehot = torch.nn.functional.one_hot(new, vocab).to(q.dtype)  # (B, V)
            q[:, j] = torch.where(need[:, None], onehot, q[:, j])

    # ---- main loop -----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, generator, state, sampling: SamplingConfig, rng=None, callback=None) -> DecodeResult:
        self.check_generator(generator)  # the raster contract: contiguous per-row positions + rollback
        stats, t0 = self._start(state)
        if state.extra_slots < self.extra_slots:
            raise ValueError(f"{self.name} needs prefill(..., extra_slots={self.extra_slots}), got {state.extra_slots}")
        b, n_tok = state.batch_size, state.num_tokens
        dev = state.first_logits.device
        vocab = state.first_logits.shape[-1]
        grid = getattr(generator, "grid_width", None) or math.isqrt(n_tok)  # "above" = one grid row back
        L, K = self.window, self.window - 1
        ar_l = torch.arange(L, device=dev)
        rows = torch.arange(b, device=dev)

        canvas = torch.zeros(b, n_tok + L, dtype=torch.long, device=dev)  # committed tokens (B, N + L)
        # token 0 comes from the prefill logits (one forward pass, one token)
        first = state.first_logits  # (B, V)
        if sampling.do_sample:
            canvas[:, 0] = _multinomial(final_probs(first, sampling)[:, None], rng)[:, 0]
        else:
            canvas[:, 0] = first.argmax(-1)
        n = torch.ones(b, dtype=torch.long, device=dev)  # committed length per row
        stats.accepted_lengths.extend([1] * b)
        self._emit(callback, 0, canvas, n)

        drafts = torch.zeros(b, K, dtype=torch.long, device=dev)  # (B, K) for positions n..n+K-1
        q = torch.zeros(b, K, vocab, device=dev)  # (B, K, V) distribution each draft was drawn from
        self._init_drafts(canvas, drafts, q, n, torch.zeros_like(n), rng, grid, vocab)
        step = 0
        while bool((n < n_tok).any()):
            active = n < n_tok  # (B,)
            inp = torch.cat([canvas[rows, n - 1][:, None], drafts], 1)  # (B, L)
            pos = (n - 1)[:, None] + ar_l  # (B, L)
            logits = generator.forward_step(state, inp, pos).logits  # (B, L, V)
            stats.forward_passes += 1
            p = final_probs(logits, sampling)  # (B, L, V)
            k_valid = (n_tok - n).clamp(min=0, max=K)  # (B,)
            m, nxt = self._verify(logits, p, drafts, q, k_valid, sampling, rng)
            # Jacobi outputs y_j ~ P_j (argmax when greedy) become the next drafts
            y = _multinomial(p, rng) if sampling.do_sample else logits.argmax(-1)  # (B, L)
            at_end = m + n >= n_tok  # all remaining tokens accepted: no bonus
            e = torch.where(at_end, m, m + 1) * active  # (B,) tokens committed this pass
            # commit: accepted drafts then the emitted token
            idx = n[:, None] + torch.arange(K, device=dev)  # (B, K)
            keep = torch.arange(K, device=dev)[None] < m[:, None]
            canvas.scatter_(1, idx, torch.where(keep, drafts, canvas.gather(1, idx)))
            put = (e > m) & active
            canvas[rows, (n + m).clamp(max=n_tok + L - 1)] = torch.where(put, nxt, canvas[rows, (n + m).clamp(max=n_tok + L - 1)])
            stats.accepted_lengths.extend(e[active].tolist())
            n_new = n + e
            state.truncate(n_new - 1)  # keep K/V of a_0..a_{n_new-2}; a_{n_new-1} is fed next
            # Jacobi refresh: new slot t <- y[e + t] (q := P[e + t]) while e + t <= L - 1
            src = (e[:, None] + torch.arange(K, device=dev)[None]).clamp(max=L - 1)  # (B, K)
            drafts = y.gather(1, src)
            q = p.gather(1, src[..., None].expand(-1, -1, vocab)).clone()
            n = n_new
            self._init_drafts(canvas, drafts, q, n, L - e, rng, grid, vocab)
            step += 1
            self._emit(callback, step, canvas, n)
        stats.wall_time = self._elapsed(state, t0)
        return DecodeResult(canvas[:, :n_tok].clone(), stats)

    @staticmethod
    def _emit(callback, step, canvas, n):
        """callback(step, tokens (B, min committed)). Speculative decoders cannot take edited
        tokens back (the KV cache already holds them), so a returned edit must be a no-op."""
        if callback is None:
            return
        lo = int(n.min())
        new = callback(step, canvas[:, :lo].clone())
        if new is not None and not torch.equal(torch.as_tensor(new).to(canvas.device), canvas[:, :lo]):
            raise ValueError("speculative decoders do not support editing tokens from the step callback")
