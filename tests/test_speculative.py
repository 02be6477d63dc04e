"""Speculative decoders (SJD, GSD, LANTERN): exactness where the maths promises it."""

import itertools
from pathlib import Path

import pytest
import torch
from scipy.stats import chi2

from conftest import load_benchmark, randomize
from mmgen.decoding import SamplingConfig, final_probs, get_decoder
from mmgen.decoding.sjd import SJDDecoder, residual_probs
from mmgen.models import ARTransformer, Condition
from mmgen.models.drafter import Drafter, generator_features

GREEDY = SamplingConfig(do_sample=False)


def run(gen, cond, name, sampling, rng=None, guidance=3.0, callback=None, **opts):
    dec = get_decoder(name, **opts) if isinstance(name, str) else name
    state = gen.prefill(cond, guidance_scale=guidance, extra_slots=dec.extra_slots)
    return dec.decode(gen, state, sampling, rng, callback), state


def tiny_drafter(gen, seed=3):
    c = gen.config
    return randomize(Drafter(dim=c.dim, n_heads=c.n_heads, vocab_size=c.vocab_size), std=0.05, seed=seed)


# ------------------------------------------------------------------ greedy == AR
@pytest.mark.parametrize("window", [2, 3, 5, 16])
@pytest.mark.parametrize("init", ["random", "above"])
def test_greedy_sjd_equals_greedy_ar(c2i, window, init):
    cond = Condition(class_labels=torch.tensor([3, 7]))
    ar, _ = run(c2i, cond, "ar", GREEDY)
    sjd, _ = run(c2i, cond, "sjd", GREEDY, torch.Generator().manual_seed(0), window=window, init=init)
    assert torch.equal(sjd.tokens, ar.tokens)
    assert sum(sjd.stats.accepted_lengths) == 2 * 16 and sjd.stats.forward_passes <= 16


def test_greedy_equals_ar_t2i_and_unrelaxed_variants(t2i, text_cond):
    ar, _ = run(t2i, text_cond, "ar", GREEDY, guidance=2.0)
    for name, opts in [("sjd", {"window": 6, "init": "left"}), ("gsd", {"group_size": 1, "window": 4}),
                       ("lantern", {"delta": 0.0, "window": 7}), ("lantern", {"lam": 1.0}),
                       ("lantern", {"delta": 0.0, "drafter": tiny_drafter(t2i), "depth": 3})]:
        res, _ = run(t2i, text_cond, name, GREEDY, guidance=2.0, **opts)
        assert torch.equal(res.tokens, ar.tokens), (name, opts)


# ------------------------------------------------------------------ exact distribution (enumeration + chi-squared)
def exact_sequence_probs(gen, label, guidance, sampling):
    """All V^N sequences of a tiny generator -> (sequences (V^N, N), exact AR probabilities (V^N,))."""
    v, n = gen.config.vocab_size, gen.num_tokens
    seqs = torch.tensor(list(itertools.product(range(v), repeat=n)))
    cond = Condition(class_labels=torch.full((len(seqs),), label))
    with torch.no_grad():
        lc = gen(seqs, cond)
        lu = gen(seqs, Condition(class_labels=torch.full((len(seqs),), gen.config.num_classes)))
    p = final_probs(lu + guidance * (lc - lu), sampling)  # (S, N, V)
    return seqs, p.gather(-1, seqs[..., None])[..., 0].prod(-1).double()


def chi2_pvalue(name, opts, sampling, b=3000, reps=2):
    """Sample ``b * reps`` sequences of a tiny 3-token, 2 x 2 generator with decoder ``name`` and return the
    chi-squared p-value of their counts against the exact AR distribution (rare cells pooled)."""
    gen = randomize(ARTransformer(vocab_size=3, grid_size=2, dim=16, n_layers=1, n_heads=2, num_classes=2), std=0.6)
    if opts.get("drafter") == "tiny":
        opts = {**opts, "drafter": tiny_drafter(gen, seed=0)}  # a random head whose top-1 the target often accepts
    seqs, probs = exact_sequence_probs(gen, 1, 2.0, sampling)
    assert abs(float(probs.sum()) - 1) < 1e-5
    rng = torch.Generator().manual_seed(1234)
    counts = torch.zeros(len(seqs), dtype=torch.float64)
    code = (3 ** torch.arange(3, -1, -1))  # base-3 index matching itertools.product order
    for _ in range(reps):
        res, _ = run(gen, Condition(class_labels=torch.ones(b, dtype=torch.long)), name, sampling, rng, 2.0, **opts)
        counts += torch.bincount((res.tokens * code).sum(1), minlength=len(seqs)).double()
        acc = res.stats.accepted_lengths
        assert sum(acc) / len(acc) > 1.1  # it did speculate (forward passes = the slowest of 3000 rows)
    total = b * reps
    keep = probs * total >= 5  # pool rare cells (chi-squared validity)
    exp = torch.cat([probs[keep] * total, (probs[~keep] * total).sum()[None]])
    obs = torch.cat([counts[keep], counts[~keep].sum()[None]])
    if exp[-1] < 5:
        exp, obs = exp[:-1], obs[:-1]
        assert counts[~keep].sum() <= 10  # a sequence with ~0 probability must (almost) never appear
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(chi2.sf(stat, len(exp) - 1))


@pytest.mark.parametrize("name,opts,sampling", [
    ("sjd", {"window": 3}, SamplingConfig()),
    ("sjd", {"window": 4, "init": "above"}, SamplingConfig(temperature=0.7, top_k=2)),
    ("sjd", {"window": 2}, SamplingConfig(top_p=0.8)),
    ("lantern", {"delta": 0.0, "drafter": "tiny", "depth": 2}, SamplingConfig(temperature=1.3)),
    ("lantern", {"delta": 0.0, "drafter": "tiny", "depth": 3, "draft_sampling": "top1"},
     SamplingConfig(temperature=2.0)),
])
def test_speculative_sampling_preserves_the_ar_distribution(name, opts, sampling):
    pval = chi2_pvalue(name, opts, sampling)
    assert pval > 1e-3, pval


def test_the_distribution_test_detects_a_subtly_wrong_sampler(monkeypatch):
    """Power of the chi-squared test above: the same test rejects SJD whose rejected drafts are resampled from
    the target p instead of the residual norm(max(0, p - q)) (the classic speculative-sampling bug), and GSD
    with a relaxed group."""
    import mmgen.decoding.sjd as sjd

    assert chi2_pvalue("gsd", {"window": 3, "group_size": 2, "delta_p": 1.0, "dist_thr": 10.0}, SamplingConfig()) < 1e-3
    monkeypatch.setattr(sjd, "residual_probs", lambda p, q: p)
    assert chi2_pvalue("sjd", {"window": 3}, SamplingConfig()) < 1e-3


def test_relaxed_variants_are_detectably_lossy():
    """GSD with a large group does move the distribution (total variation > 0.05)."""
    gen = randomize(ARTransformer(vocab_size=3, grid_size=2, dim=16, n_layers=1, n_heads=2, num_classes=2), std=0.6)
    seqs, probs = exact_sequence_probs(gen, 1, 2.0, SamplingConfig())
    res, _ = run(gen, Condition(class_labels=torch.ones(4000, dtype=torch.long)), "gsd", SamplingConfig(),
                 torch.Generator().manual_seed(0), 2.0, window=3, group_size=3, delta_p=1.0, dist_thr=10.0)
    code = (3 ** torch.arange(3, -1, -1))
    counts = torch.bincount((res.tokens * code).sum(1), minlength=len(seqs)).double()
    tv = 0.5 * (counts / 4000 - probs).abs().sum()
    assert tv > 0.05


# ------------------------------------------------------------------ reductions to SJD under the same seed
@pytest.mark.parametrize("variant", [("gsd", {"group_size": 1}), ("gsd", {"delta_p": 0.0}), ("lantern", {"delta": 0.0}),
                                     ("lantern", {"lam": 1.0})])
@pytest.mark.parametrize("per_row", [False, True])
def test_unrelaxed_variants_reproduce_sjd_exactly(c2i, variant, per_row):
    cond = Condition(class_labels=torch.tensor([1, 4, 9]))
    sampling = SamplingConfig(top_k=12, temperature=0.9)

    def rng():
        return [torch.Generator().manual_seed(10 + i) for i in range(3)] if per_row else torch.Generator().manual_seed(5)

    ref, _ = run(c2i, cond, "sjd", sampling, rng(), window=5)
    name, opts = variant
    res, _ = run(c2i, cond, name, sampling, rng(), window=5, **opts)
    assert torch.equal(res.tokens, ref.tokens)
    assert res.stats.accepted_lengths == ref.stats.accepted_lengths
    # and with the relaxation on, the same seeds accept more (the knob acts; one seed alone can tie)
    relaxed = {"gsd": {"group_size": 14, "delta_p": 1.0, "dist_thr": 10.0}, "lantern": {"delta": 0.5}}[name]

    def mean_accepted(dec, opts):
        lengths = []
        for seed in range(6):
            gens = ([torch.Generator().manual_seed(100 + 10 * seed + i) for i in range(3)] if per_row
                    else torch.Generator().manual_seed(100 + seed))
            lengths += run(c2i, cond, dec, sampling, gens, window=5, **opts)[0].stats.accepted_lengths
        return sum(lengths) / len(lengths)

    assert mean_accepted(name, relaxed) > mean_accepted("sjd", {}) + 0.1


def test_per_row_generators_make_rows_batch_independent(c2i):
    sampling = SamplingConfig(top_k=10)
    both, _ = run(c2i, Condition(class_labels=torch.tensor([2, 6])), "sjd", sampling,
                  [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], window=4)
    alone, _ = run(c2i, Condition(class_labels=torch.tensor([6])), "sjd", sampling,
                   [torch.Generator().manual_seed(2)], window=4)
    assert torch.equal(both.tokens[1], alone.tokens[0])


# ------------------------------------------------------------------ KV cache after rollback == AR's cache
def ar_reference_cache(gen, cond, tokens, guidance):
    """Cache that AR decoding builds for ``tokens`` (B, n): feed them one at a time."""
    state = gen.prefill(cond, guidance_scale=guidance)
    for i in range(tokens.shape[1] - 1):
        gen.forward_step(state, tokens[:, i:i + 1], torch.full((tokens.shape[0], 1), i))
    return state


class OracleInit(SJDDecoder):
    """Drafts = the greedy AR tokens: every draft is accepted (all-accepted case)."""

    def __init__(self, target, **kw):
        super().__init__(**kw)
        self.target = target

    def _init_drafts(self, canvas, drafts, q, n, start, rng, grid, vocab):
        k = drafts.shape[1]
        t = torch.nn.functional.pad(self.target, (0, k + 1))
        for j in range(k):
            need = j >= start
            drafts[:, j] = torch.where(need, t[torch.arange(len(n)), n + j], drafts[:, j])
            q[:, j] = torch.where(need[:, None], torch.nn.functional.one_hot(drafts[:, j], vocab).float(), q[:, j])


@pytest.mark.parametrize("case", ["sampled", "all_accepted", "drafter"])
def test_kv_cache_after_rollback_equals_ar_cache(c2i, case):
    cond = Condition(class_labels=torch.tensor([3, 8]))
    guidance, window = 2.5, 6  # 16 tokens, window 6: the last windows run past the grid end
    sampling = SamplingConfig() if case != "all_accepted" else GREEDY
    if case == "all_accepted":
        ar, _ = run(c2i, cond, "ar", GREEDY, guidance=guidance)
        dec = OracleInit(ar.tokens, window=window)
    elif case == "drafter":
        dec = get_decoder("lantern", delta=0.0, drafter=tiny_drafter(c2i), depth=4)
    else:
        dec = get_decoder("sjd", window=window)
    seen = []
    holder = {}

    def check(step, tokens):
        state = holder["state"]
        n = state.cache_len  # (B,) == committed - 1 for every row
        ref = ar_reference_cache(c2i, cond, tokens, guidance)
        lo = state.prefix_len + int(n.min())
        for (k, v), (rk, rv) in zip(state.caches, ref.caches):
            assert torch.allclose(k[:, :, :lo], rk[:, :, :lo], atol=1e-5)
            assert torch.allclose(v[:, :, :lo], rv[:, :, :lo], atol=1e-5)
        seen.append(tokens.shape[1])

    state = c2i.prefill(cond, guidance_scale=guidance, extra_slots=dec.extra_slots)
    holder["state"] = state
    res = dec.decode(c2i, state, sampling, torch.Generator().manual_seed(3), check)
    assert seen[-1] == 16 and int(state.cache_len.min()) == 15
    spec = res.stats.accepted_lengths[2:]  # the first entry per row (b = 2) is the prefill's token, always 1
    if case == "all_accepted":
        assert max(spec) == window  # full windows accepted (K drafts + bonus)
    else:
        assert 1 in spec and max(spec) > 1  # first-draft rejections (rollback) and multi-token accepts both occurred


def test_kv_cache_rows_per_row_lengths(c2i):
    """Rows accept different lengths: every row's own prefix [0, P + cache_len_b) equals AR's."""
    cond = Condition(class_labels=torch.tensor([0, 5, 9]))
    dec = get_decoder("sjd", window=5)
    snap = {}

    def grab(step, tokens):
        if step == 2:
            snap["len"] = state.cache_len.clone()
            snap["caches"] = [(k.clone(), v.clone()) for k, v in state.caches]

    state = c2i.prefill(cond, guidance_scale=2.0, extra_slots=dec.extra_slots)
    res = dec.decode(c2i, state, SamplingConfig(), torch.Generator().manual_seed(11), grab)
    assert len(set(snap["len"].tolist())) > 1  # the rows really are at different lengths
    ref = ar_reference_cache(c2i, cond, res.tokens, 2.0)
    b = 3
    for row in range(b):
        lo = state.prefix_len + int(snap["len"][row])
        for (k, v), (rk, rv) in zip(snap["caches"], ref.caches):
            for r in (row, row + b):  # conditional and unconditional halves
                assert torch.allclose(k[r, :, :lo], rk[r, :, :lo], atol=1e-5)
                assert torch.allclose(v[r, :, :lo], rv[r, :, :lo], atol=1e-5)


# ------------------------------------------------------------------ residual on final probabilities
def test_residual_is_built_on_final_probabilities(c2i):
    logits = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)) * 3
    sampling = SamplingConfig(top_k=5, temperature=0.7, top_p=0.9)
    p = final_probs(logits, sampling)
    q = torch.softmax(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)), -1)
    r = residual_probs(p, q)
    assert torch.allclose(r.sum(-1), torch.ones(4))
    assert (r[p == 0] == 0).all()  # nothing outside top-k / top-p
    assert (r[q >= p] == 0).all()
    expect = (p - q).clamp_min(0)
    assert torch.allclose(r, expect / expect.sum(-1, keepdim=True))  # no re-warping (temperature applied once)
    d = p.topk(2, -1).indices[:, 1]  # one-hot q at the second most likely token
    onehot = torch.nn.functional.one_hot(d, 32).float()
    r1 = residual_probs(p, onehot)
    p0 = p.scatter(-1, d[:, None], 0.0)
    assert torch.allclose(r1, p0 / p0.sum(-1, keepdim=True))
    # inside the decoder, with top-k: residual samples never leave the top-k of the target
    cond = Condition(class_labels=torch.tensor([1, 2]))
    res, _ = run(c2i, cond, "sjd", SamplingConfig(top_k=3), torch.Generator().manual_seed(0), window=8)
    lc, lu = c2i(res.tokens, cond), c2i(res.tokens, Condition(class_labels=torch.tensor([10, 10])))
    top = (lu + 3.0 * (lc - lu)).topk(3, -1).indices
    assert (top == res.tokens[..., None]).any(-1).all()


def test_lantern_relaxation_matches_its_definition():
    dec = get_decoder("lantern", delta=0.3, k=3)
    p = torch.tensor([[[0.4, 0.25, 0.1, 0.2, 0.05]]])  # (1, 1, 5)
    dec._nbr_now = torch.tensor([[1, 2, 3], [3, 0, 2], [0, 1, 4], [1, 0, 4], [2, 3, 0]])
    # draft 1: neighbours 3 (0.2), 0 (0.4): c = 0.2, 0.6, 0.7 -> m* = 1, P~ = 0.25 + 0.2
    pt, _, mstar = dec._relaxed(p, torch.tensor([[1]]))
    assert mstar.item() == 1 and abs(pt.item() - 0.45) < 1e-6
    dec.lam, dec.delta = 2.0, 0.0  # LANTERN++: c_m <= (lam - 1) P(x) = 0.25 -> m* = 1 again
    pt, _, mstar = dec._relaxed(p, torch.tensor([[1]]))
    assert mstar.item() == 1 and abs(pt.item() - 0.45) < 1e-6
    a, aux = dec._accept_prob(p, torch.full_like(p, 0.2), torch.tensor([[4]]))  # P(4)=.05, nbrs 2 (.1), 3 (.2)
    assert abs(a.item() - 0.05 / 0.2) < 1e-6  # budget 0.05 < c_1 = 0.1: m* = 0, P~ = P
    r = dec._residual(p[:, 0], torch.nn.functional.one_hot(torch.tensor([1]), 5).float(), torch.tensor([1]),
                      torch.tensor([0]), dec._accept_prob(p, torch.ones_like(p), torch.tensor([[1]]))[1])
    # residual = norm(max(0, P~ - q)), P~ moving neighbour 3's mass onto x = 1, q one-hot at x: only x and the
    # moved neighbour are zeroed, the other neighbours (0, 2) keep their mass
    assert torch.allclose(r, torch.tensor([[0.4, 0.0, 0.1, 0.0, 0.05]]) / 0.55, atol=1e-6)


# ------------------------------------------------------------------ drafter plumbing and pipeline
def test_drafter_training_features_equal_inference_hidden(t2i, text_cond):
    gen = t2i
    tokens = torch.randint(32, (2, 16), generator=torch.Generator().manual_seed(0))
    h, logits = generator_features(gen, tokens, text_cond)
    state = gen.prefill(text_cond)
    assert torch.allclose(state.first_hidden, h[:, 0], atol=1e-5)
    out = gen.forward_step(state, tokens[:, :15], torch.arange(15).expand(2, -1))
    assert torch.allclose(out.hidden, h[:, 1:], atol=1e-5)
    assert torch.allclose(out.logits, logits[:, 1:], atol=1e-4)
    # cached drafter == uncached drafter on the same inputs
    dr = tiny_drafter(gen)
    pos = torch.arange(16).expand(2, -1)
    fc, fu = dr(gen, h, tokens, pos)
    st = dr.start(2, 20)
    fc1, _ = dr(gen, h[:, :9], tokens[:, :9], pos[:, :9], st)
    fc2, fu2 = dr(gen, h[:, 9:], tokens[:, 9:], pos[:, 9:], st)
    assert torch.allclose(torch.cat([fc1, fc2], 1), fc, atol=1e-5) and torch.allclose(fu2, fu[:, 9:], atol=1e-5)


def test_drafter_save_load_roundtrip(tmp_path, c2i):
    dr = tiny_drafter(c2i)
    dr.save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / "diffusion_pytorch_model.safetensors").exists()
    dec = get_decoder("lantern", drafter=str(tmp_path / "d"), delta=0.0)
    for a, b in zip(dec.drafter.parameters(), dr.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,opts", [("sjd", {}), ("gsd", {"group_size": 3}), ("lantern", {"delta": 0.2})])
def test_pipeline_runs_registered_decoders(tiny_pipeline, name, opts):
    out = tiny_pipeline(["a small red circle on the left, blue background"] * 2, decoding=name, decoding_options=opts,
                        generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="np")
    assert out.images.shape[0] == 2 and out.tokens.shape == (2, 16)
    assert out.stats.method == name and sum(out.stats.accepted_lengths) == 32
    assert out.stats.forward_passes <= 16


def test_bad_options():
    with pytest.raises(ValueError, match="window"):
        get_decoder("sjd", window=1)
    with pytest.raises(ValueError, match="init"):
        get_decoder("sjd", init="diagonal")
    with pytest.raises(ValueError, match="delta"):
        get_decoder("lantern", delta=2.0)
    with pytest.raises(ValueError, match="group_size"):
        get_decoder("gsd", group_size=0)
    # NaN thresholds used to pass (GSD with delta_p NaN silently ran SJD), booleans passed as integers
    for name, kw, msg in [("gsd", {"delta_p": float("nan")}, "delta_p"), ("gsd", {"dist_thr": float("inf")}, "dist_thr"),
                          ("lantern", {"lam": float("nan")}, "lam"), ("lantern", {"delta": float("nan")}, "delta"),
                          ("lantern", {"k": True}, "k must"), ("sjd", {"window": True}, "window"),
                          ("gsd", {"group_size": True}, "group_size")]:
        with pytest.raises(ValueError, match=msg):
            get_decoder(name, **kw)


def test_gsd_group_matches_its_definition():
    dec = get_decoder("gsd", group_size=3, delta_p=0.15, dist_thr=0.5)
    p = torch.tensor([[[0.30, 0.25, 0.20, 0.15, 0.10]]])  # ascending ranks: 4, 3, 2, 1, 0
    e = torch.eye(5)  # squared distance 2 between any two codes ...
    e[3] = torch.nn.functional.normalize(e[2] + 0.3 * e[3], dim=0)  # ... except 3, close to 2
    dec._emb_now = e
    d = torch.tensor([[2]])
    cand, member = dec.group(p, d)  # ranks r-1..r+1 = tokens 3, 2, 1; token 1 fails the distance filter
    assert sorted(cand[member].tolist()) == [2, 3]
    q = torch.nn.functional.one_hot(d, 5).float()
    a, _ = dec._accept_prob(p, q, d)
    assert abs(a.item() - 0.35) < 1e-6  # min(1, (P(2) + P(3)) / 1)
    q2 = torch.tensor([[[0.1, 0.1, 0.2, 0.5, 0.1]]])
    a2, _ = dec._accept_prob(p, q2, d)
    assert abs(a2.item() - 0.35 / 0.7) < 1e-6
    # at the top rank the window is cut at the vocabulary edge (no wrap-around / negative slice)
    dec2 = get_decoder("gsd", group_size=5, delta_p=1.0, dist_thr=10.0)
    dec2._emb_now = e
    cand, member = dec2.group(p, torch.tensor([[0]]))  # rank 4: ranks 2..6 -> only 2, 3, 4 exist
    assert sorted(cand[member].tolist()) == [0, 1, 2]


# ------------------------------------------------------------------ calibration on the shipped model (if present)
@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / "assets" / "digits-c2i" / "model_index.json").exists(),
                    reason="shipped digits model not built")
def test_sjd_is_calibrated_on_the_shipped_digits_model():
    """Randomised PIT u = F(x-) + V p(x) of every SJD token under the teacher-forced CFG target is
    U(0, 1) (KS) and the log-prob z-score is N(0, 1): lossless on a real model, not just a toy."""
    from scipy.stats import kstest

    gen = ARTransformer.from_pretrained(Path(__file__).resolve().parents[1] / "assets" / "digits-c2i" / "transformer")
    cond = Condition(class_labels=torch.arange(40) % 10)
    sampling = SamplingConfig(top_k=50)
    res, _ = run(gen, cond, "sjd", sampling, torch.Generator().manual_seed(0), guidance=3.0)
    x = res.tokens  # (40, 64)
    with torch.no_grad():
        lc, lu = gen(x, cond), gen(x, gen.null_condition(cond))
    p = final_probs(lu + 3.0 * (lc - lu), sampling).double()  # (40, 64, V)
    px = p.gather(-1, x[..., None])[..., 0]
    below = p.cumsum(-1).gather(-1, x[..., None])[..., 0] - px
    u = (below + torch.rand(px.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * px)
    assert kstest(u.flatten().clamp(0, 1).numpy(), "uniform").pvalue > 1e-3
    logp = p.clamp_min(1e-300).log()
    h = -(p * logp).sum(-1)
    var = (p * logp ** 2).sum(-1) - h ** 2
    z = float((px.log() + h).sum() / var.sum().sqrt())
    assert abs(z) < 4, z
    assert res.stats.tokens_per_forward > 1.3


def test_drafter_follows_the_generator_device_and_dtype(c2i):
    """The shipped drafters load as float32 on the CPU; LANTERN moves the drafter to the generator's device and
    dtype (here float64) instead of failing on the first drafter call."""
    import copy

    gen = copy.deepcopy(c2i).double()
    cond = Condition(class_labels=torch.tensor([3, 7]))
    ar, _ = run(gen, cond, "ar", GREEDY)
    dr = tiny_drafter(c2i)
    res, _ = run(gen, cond, "lantern", GREEDY, delta=0.0, drafter=dr, depth=3)
    assert torch.equal(res.tokens, ar.tokens) and dr.fc.weight.dtype == torch.float64


def test_speculative_benchmark_times_every_prompt_group(c2i, monkeypatch):
    """bench_speculative's timing averages over several prompt groups: with prompts=3 each method decodes
    3 conditions x repeats at every batch size (it used to time the first prompt only)."""
    from mmgen.pipelines import ARImagePipeline
    from mmgen.tokenizers_visual import VQTokenizer

    bench = load_benchmark("bench_speculative")
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=c2i.config.vocab_size).eval()
    pipe = ARImagePipeline(transformer=c2i, vq=vq)
    seen = []
    ar = get_decoder("ar")
    real = ar.decode
    monkeypatch.setattr(ar, "decode", lambda gen, state, *a: seen.append(state.batch_size) or real(gen, state, *a))
    res = bench.timing(pipe, [], [("AR", ar), ("SJD", get_decoder("sjd"))], [1, 2], repeats=2, guidance=1.0,
                       sampling=SamplingConfig(), prompts=3)
    assert seen == [1] * 6 + [2] * 6  # 3 groups x 2 repeats per batch size
    assert set(res) == {1, 2} and all(set(r) == {"AR", "SJD"} and min(r.values()) > 0 for r in res.values())


def test_lantern_drafter_that_is_not_a_drafter_folder_is_a_value_error(tmp_path):
    """A missing folder, a folder of another model and a non-path all name ``drafter`` (the app shows them as
    invalid input instead of an OSError)."""
    from mmgen.assets import assets_dir
    from mmgen.decoding import get_decoder

    for bad in (tmp_path / "missing", assets_dir() / "vq", 3):
        with pytest.raises(ValueError, match="drafter"):
            get_decoder("lantern", drafter=bad if bad == 3 else str(bad))
