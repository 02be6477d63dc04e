"""LANTERN relaxed speculative acceptance (Jang et al. 2024, "LANTERN: Accelerating Visual
Autoregressive Models with Relaxed Speculative Decoding", arXiv 2410.03355, ICLR 2025) and the
LANTERN++ variant (Park et al. 2025, arXiv 2502.06352).

**Relaxation** (reference note section 2.2, from the code's ``generate_codebook.py`` and the
verification in ``ea_model_*.py``): for the drafted token ``x`` take its latent proximity set, the
``k`` nearest other codes ``n_1(x), n_2(x), ...`` by VQ-codebook L2 distance (read from
``tokenizer.codebook`` in :meth:`prepare`), and ``c_m = sum_{j<=m} P(n_j(x))`` with P the final
target probabilities. LANTERN: ``m* = max{m <= k : c_m <= delta}`` (moving that mass onto x changes
the target by exactly TV ``c_m* <= delta``); LANTERN++: ``m* = max{m <= k : c_m <= (lam - 1) P(x)}``
(relaxed probability ``<= lam P(x)``). ``P~(x) = P(x) + c_m*``; accept iff ``u < min(1, P~(x)/q(x))``.
Greedy: accept iff x is the argmax of P with P(x) replaced by P~(x).

**Rejection**: the code differs between files (zero x and the first k+1 neighbours in p, or
``norm(max(p - q', 0))``). Here: ``norm(max(P~' - q, 0))`` where ``P~'`` is P with the moved mass
(the neighbours ``n_1..n_m*``) removed, i.e. standard speculative resampling against the relaxed
target; it equals the code's zeroing rule when ``m* = k``. With ``delta = 0`` / ``lam = 1`` nothing
moves and every quantity (and every random draw) is SJD's: exactly SJD.

**Drafts.** (a) ``drafter=None``: SJD self-drafting (window, Jacobi refresh, init as :mod:`.sjd`).
(b) ``drafter=<folder or Drafter>``: an EAGLE-style one-layer head (:mod:`mmgen.models.drafter`)
drafts a **chain** of ``depth`` tokens (LANTERN's dynamic tree / LANTERN++'s static tree are not
implemented: the generator contract verifies one causal chain per row). ``draft_sampling="top1"``
is LANTERN/EAGLE-2's deterministic top-1 proposal (``q := onehot``); ``"sample"`` is LANTERN++'s
point (drafts sampled from the drafter's distribution q~ after the same CFG/temperature/top-k/top-p,
so acceptance does not depend on drafter confidence; ``q := q~``). One verification forward per
iteration over ``[x_{n-1}, d_1..d_depth]``; the drafter then re-reads the accepted tokens with the
generator's real hidden states (EAGLE's ``stable_kv`` refresh) before drafting again.

``stats.forward_passes`` counts generator calls only (the NFE the papers report); the draft head's
calls (``depth`` one-layer steps per iteration) show up in ``wall_time``.

Defaults from the code (``--lantern_k 1000 --lantern_delta 0.1``, k clipped to V - 1); chain depth 4
(the code's tree depth for LlamaGen), window 16 for self-drafting. **Lossy** when relaxed
(section 2.7): TV <= delta holds per verification, not for the output distribution.
"""

from __future__ import annotations

import json

from pathlib import Path

import torch
import torch.nn.functional as F

from .base import DecodeResult, register_decoder
from .sampling import SamplingConfig, final_probs, is_count, is_finite_number
from .sjd import SJDDecoder, _multinomial


def proximity_sets(emb: torch.Tensor, k: int) -> torch.Tensor:
    """emb (V, D) -> (V, k) ids of each code's k nearest other codes (L2), nearest first."""
    d = torch.cdist(emb.float(), emb.float())  # (V, V)
    d.fill_diagonal_(float("inf"))
    return d.topk(min(k, emb.shape[0] - 1), dim=-1, largest=False).indices


@register_decoder("lantern")
class LanternDecoder(SJDDecoder):
    def __init__(self, delta: float = 0.1, k: int = 1000, lam: float | None = None, drafter=None, depth: int = 4,
                 draft_sampling: str = "sample", window: int = 16, init: str = "random"):
        super().__init__(window=window, init=init)
        if not (is_finite_number(delta) and 0 <= delta <= 1):
            raise ValueError(f"delta must lie in [0, 1], got {delta!r}")
        if lam is not None and not (is_finite_number(lam) and lam >= 1):
            raise ValueError(f"lam must be a finite number >= 1, got {lam!r}")
        if not is_count(k):
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        if draft_sampling not in ("sample", "top1"):
            raise ValueError(f"draft_sampling must be 'sample' or 'top1', got {draft_sampling!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self.delta, self.k, self.lam, self.depth, self.draft_sampling = delta, k, lam, depth, draft_sampling
        self.drafter = self._load_drafter(drafter) if drafter is not None else None
        if self.drafter is not None:
            self.extra_slots = depth  # a finished row feeds positions N-1 .. N-1+depth
        self._nbr = None  # (V, k) proximity sets

    @staticmethod
    def _load_drafter(d):
        from ..models.drafter import Drafter

        if isinstance(d, Drafter):
            return d.eval()
        from ..assets import model_path

        if not isinstance(d, (str, Path)):
            raise ValueError(f"drafter must be a Drafter, a folder or an asset name, got {type(d).__name__}")
        p = Path(d) if Path(d).is_dir() else model_path(str(d))
        cfg = p / "config.json"
        if not cfg.is_file() or json.loads(cfg.read_text()).get("_class_name") != Drafter.__name__:
            raise ValueError(f"drafter: {str(d)!r} is not a drafter folder (no Drafter config.json in {p}); "
                             "train one with `python -m mmgen.train.train_drafter`")
        return Drafter.from_pretrained(p).eval()

    def prepare(self, tokenizer) -> None:
        cb = getattr(tokenizer, "codebook", None)
        if cb is not None and self.k > 0:
            self._nbr = proximity_sets(cb.detach(), self.k)

    # ---- relaxed acceptance ------------------------------------------------------------------
    def _relaxed(self, p, drafts):
        """p (B, K, V), drafts (B, K) -> P~(d) (B, K), neighbour ids (B, K, k), m* (B, K)."""
        pd = p.gather(-1, drafts[..., None])[..., 0]  # (B, K)
        if self._nbr_now is None:
            z = torch.zeros_like(drafts)
            return pd, z[..., None], z
        nb = self._nbr_now[drafts]  # (B, K, k)
        c = p.gather(-1, nb).cumsum(-1)  # (B, K, k) c_m
        budget = (self.lam - 1.0) * pd if self.lam is not None else torch.full_like(pd, self.delta)
        mstar = (c <= budget[..., None]).sum(-1)  # (B, K); c is non-decreasing so this is max{m}
        moved = torch.where(mstar > 0, c.gather(-1, (mstar - 1).clamp_min(0)[..., None])[..., 0], torch.zeros_like(pd))
        return pd + moved, nb, mstar

    def _accept_prob(self, p, q, drafts):
        pt, nb, mstar = self._relaxed(p, drafts)
        qd = q.gather(-1, drafts[..., None])[..., 0]  # (B, K)
        return (pt / qd.clamp_min(1e-30)).clamp(max=1.0), (nb, mstar)

    def _greedy_accept(self, p, logits, drafts):
        pt, _, _ = self._relaxed(p, drafts)
        return (drafts == logits.argmax(-1)) | (pt >= p.max(-1).values)

    def _residual(self, p, q, drafts, slot, aux):
        nb, mstar = aux
        rows = torch.arange(p.shape[0], device=p.device)
        nb_s, m_s = nb[rows, slot], mstar[rows, slot]  # (B, k), (B,)
        drop = torch.arange(nb_s.shape[-1], device=p.device)[None] < m_s[:, None]  # (B, k) moved neighbours
        p = p.scatter(-1, nb_s, p.gather(-1, nb_s).masked_fill(drop, 0.0))
        return super()._residual(p, q, drafts, slot, aux)

    # ---- decode ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, generator, state, sampling: SamplingConfig, rng=None, callback=None) -> DecodeResult:
        v = state.first_logits.shape[-1]
        nbr = self._nbr
        if self.k > 0 and (nbr is None or nbr.shape[0] != v):
            # no prepare(tokenizer): fall back to the generator's (l2-normalised) token embeddings
            key = id(generator)
            if getattr(self, "_fallback", (None, None))[0] != key:
                emb = F.normalize(generator.token_embeddings().float(), dim=-1)
                self._fallback = (key, proximity_sets(emb, self.k))
            nbr = self._fallback[1]
        self._nbr_now = nbr.to(state.first_logits.device) if (nbr is not None and self.k > 0) else None
        if self.drafter is None:
            return super().decode(generator, state, sampling, rng, callback)
        return self._decode_drafter(generator, state, sampling, rng, callback)

    def _decode_drafter(self, generator, state, sampling, rng, callback) -> DecodeResult:
        """Chain drafting with the EAGLE head; per-row lengths as in SJD (see :mod:`.sjd`)."""
        self.check_generator(generator)
        dr = self.drafter.to(device=state.first_logits.device, dtype=state.first_hidden.dtype)
        dr.check_generator(generator)
        if state.extra_slots < self.extra_slots:
            raise ValueError(f"lantern needs prefill(..., extra_slots={self.extra_slots}), got {state.extra_slots}")
        stats, t0 = self._start(state)
        b, n_tok = state.batch_size, state.num_tokens
        dev = state.first_logits.device
        vocab = state.first_logits.shape[-1]
        g = self.depth
        rows = torch.arange(b, device=dev)
        ar_w = torch.arange(g + 1, device=dev)
        top1 = (not sampling.do_sample) or self.draft_sampling == "top1"

        canvas = torch.zeros(b, n_tok + g + 2, dtype=torch.long, device=dev)  # committed tokens
        first = state.first_logits  # (B, V)
        canvas[:, 0] = (_multinomial(final_probs(first, sampling)[:, None], rng)[:, 0] if sampling.do_sample
                        else first.argmax(-1))
        n = torch.ones(b, dtype=torch.long, device=dev)
        stats.accepted_lengths.extend([1] * b)
        self._emit(callback, 0, canvas, n)
        dstate = dr.start(b, n_tok + 2 * g + 2, dev)
        hid = state.first_hidden[:, None]  # (B, r, d): real h_{t-1} for the catch-up positions
        dl = torch.zeros(b, dtype=torch.long, device=dev)  # drafter positions < dl hold real inputs
        r = torch.ones(b, dtype=torch.long, device=dev)  # real catch-up inputs this iteration
        step = 0
        while bool((n < n_tok).any()):
            active = n < n_tok
            # 1) drafter catch-up on the newly committed tokens x_dl..x_{n-1} with real h_{t-1}
            t = int(r.max())
            cpos = dl[:, None] + torch.arange(t, device=dev)  # (B, T)
            ctok = canvas.gather(1, cpos.clamp(max=canvas.shape[1] - 1))
            chid = hid[:, :t] if hid.shape[1] >= t else F.pad(hid, (0, 0, 0, t - hid.shape[1]))
            fc, fu = dr(generator, chid, ctok, cpos, dstate)  # (B, T, d)
            last = (r - 1).clamp_min(0)
            f_c, f_u = fc[rows, last][:, None], fu[rows, last][:, None]  # (B, 1, d): feature at n-1
            # 2) chain drafting d_1..d_g for positions n..n+g-1
            drafts = torch.zeros(b, g, dtype=torch.long, device=dev)
            q = torch.zeros(b, g, vocab, device=dev)
            for j in range(g):
                ppos = (n + j)[:, None]  # (B, 1) predicted position
                lg = dr.draft_logits(generator, state, f_c, f_u, ppos)[:, 0]  # (B, V)
                qj = final_probs(lg, sampling)  # (B, V)
                if top1:
                    d = lg.argmax(-1)
                    q[:, j] = F.one_hot(d, vocab).float()
                else:
                    d = _multinomial(qj[:, None], rng)[:, 0]
                    q[:, j] = qj
                drafts[:, j] = d
                if j + 1 < g:
                    f_c, f_u = dr(generator, f_c, d[:, None], ppos, dstate)
            # 3) one verification forward of the generator
            inp = torch.cat([canvas[rows, n - 1][:, None], drafts], 1)  # (B, g+1)
            pos = (n - 1)[:, None] + ar_w
            out = generator.forward_step(state, inp, pos)
            stats.forward_passes += 1
            p = final_probs(out.logits, sampling)  # (B, g+1, V)
            k_valid = (n_tok - n).clamp(min=0, max=g)
            m, nxt = self._verify(out.logits, p, drafts, q, k_valid, sampling, rng)
            at_end = m + n >= n_tok
            e = torch.where(at_end, m, m + 1) * active
            idx = n[:, None] + torch.arange(g, device=dev)
            keep = torch.arange(g, device=dev)[None] < m[:, None]
            canvas.scatter_(1, idx, torch.where(keep, drafts, canvas.gather(1, idx)))
            put = (e > m) & active
            at = (n + m).clamp(max=canvas.shape[1] - 1)
            canvas[rows, at] = torch.where(put, nxt, canvas[rows, at])
            stats.accepted_lengths.extend(e[active].tolist())
            n_new = n + e
            state.truncate(n_new - 1)
            hid, dl, r, n = out.hidden, n, e, n_new  # window hidden 0..e-1 = h_{n-1}..h_{n_new-2}
            step += 1
            self._emit(callback, step, canvas, n)
        stats.wall_time = self._elapsed(state, t0)
        return DecodeResult(canvas[:, :n_tok].clone(), stats)
