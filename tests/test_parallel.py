"""NAR (next-neighbour) and NBP (next-block) generators and decoders."""

import pytest
import torch

from mmgen.decoding import SamplingConfig, get_decoder
from mmgen.decoding.nar import diagonals
from mmgen.models import ARTransformer, Condition

from conftest import load_benchmark, randomize


def _model(order, g=4, **kw):
    torch.manual_seed(0)
    kw = kw or dict(num_classes=10)
    return randomize(ARTransformer(vocab_size=24, grid_size=g, dim=32, n_layers=2, n_heads=2, order=order, **kw))


@pytest.mark.parametrize("order,rank", [
    ("nar", lambda h, w: h + w),
    ("nbp", lambda h, w: h),
    ("raster", lambda h, w: h * 5 + w),
])
def test_mask_equals_rank_definition(order, rank):
    g, p = 5, 1
    m = _model(order, g=g)
    bov = m.bov
    n = g * g
    slots = torch.arange(p + bov + n)[None]
    mask = m.attention_mask(slots, torch.ones(1, p + bov + n, dtype=torch.bool))[0]
    img = mask[p + bov:, p + bov:]
    for i in range(n):
        for j in range(n):
            hi, wi = divmod(i, g)
            hj, wj = divmod(j, g)
            assert bool(img[i, j]) == (rank(hj, wj) <= rank(hi, wi)), (i, j)
    assert bool(mask[p + bov:, :p + bov].all())  # every image token sees the condition (and bov queries)
    if bov:
        assert bool(mask[p:p + bov, p:p + bov].all()) and not bool(mask[p:p + bov, p + bov:].any())


@pytest.mark.parametrize("order", ["nar", "nbp"])
def test_no_leak_gradient(order):
    """The loss at a target never depends on that target or on tokens of its rank or later."""
    g = 4
    m = _model(order, g=g)
    m.train(False)
    tokens = torch.randint(0, 24, (1, g * g))
    emb = m.tok_embeddings
    for t in [0, 5, 6, 10, 15]:
        x = emb(tokens).detach().requires_grad_(True)
        # route embeddings through a hook: replace the embedding lookup by x
        orig = m.tok_embeddings.forward
        m.tok_embeddings.forward = lambda ids, x=x: x[:, : ids.shape[1]]
        try:
            logits = m(tokens, Condition(class_labels=torch.tensor([1])))
        finally:
            m.tok_embeddings.forward = orig
        logits[0, t].sum().backward()
        grad = x.grad[0].abs().sum(-1)  # (N,)
        ht, wt = divmod(t, g)
        for j in range(g * g):
            hj, wj = divmod(j, g)
            later = (hj + wj >= ht + wt) if order == "nar" else (hj >= ht)
            if later:
                assert grad[j] == 0, (t, j)


@pytest.mark.parametrize("order", ["nar", "nbp"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_cached_parallel_decoding_equals_full_masked_forward(order, cfg):
    """Decode greedily step by step with the KV cache; the logits used at every step must equal the
    teacher-forced full masked forward on the final tokens (CFG-mixed the same way)."""
    m = _model(order)
    cond = Condition(class_labels=torch.tensor([2, 7]))
    seen = {}
    dec = get_decoder(order)
    res = dec.decode(m, m.prefill(cond, guidance_scale=cfg), SamplingConfig(do_sample=False))
    full_c = m(res.tokens, cond)
    full_u = m(res.tokens, m.null_condition(cond))
    full = full_u + cfg * (full_c - full_u)
    assert torch.equal(full.argmax(-1), res.tokens)
    # exact logits: rebuild the step logits from the decoder's own path
    state = m.prefill(cond, guidance_scale=cfg)
    if order == "nbp":
        assert torch.allclose(state.first_logits, full[:, :4], atol=1e-5)
        for r in range(1, 4):
            pos = torch.arange((r - 1) * 4, r * 4).expand(2, -1)
            out = m.forward_step(state, res.tokens[:, (r - 1) * 4:r * 4], pos)
            assert torch.allclose(out.logits, full[:, r * 4:(r + 1) * 4], atol=1e-5)
    else:
        assert torch.allclose(state.first_logits, full[:, 0], atol=1e-5)
        diags = diagonals(4)
        for s in range(1, 7):
            prev = diags[s - 1]
            out = m.forward_step(state, res.tokens[:, prev], prev.expand(2, -1))
            for j, p in enumerate(prev.tolist()):
                seen[p] = (out.logits[:, j], out.logits_down[:, j])
            for p in diags[s].tolist():
                h, w = divmod(p, 4)
                parts = ([seen[p - 1][0]] if w else []) + ([seen[p - 4][1]] if h else [])
                assert torch.allclose(sum(parts) / len(parts), full[:, p], atol=1e-5)


@pytest.mark.parametrize("order,g,expected", [("nar", 4, 7), ("nar", 16, 31), ("nbp", 4, 4), ("nbp", 8, 8)])
def test_forward_pass_counts_follow_the_formulas(order, g, expected):
    m = _model(order, g=g)
    res = get_decoder(order).decode(m, m.prefill(Condition(class_labels=torch.tensor([1]))), SamplingConfig(),
                                    torch.Generator().manual_seed(0))
    assert res.stats.forward_passes == expected
    assert res.tokens.shape == (1, g * g) and sum(res.stats.accepted_lengths) == g * g


def test_diagonal_order_round_trips_to_raster():
    for g in (1, 2, 5, 16):
        d = diagonals(g)
        assert len(d) == 2 * g - 1
        flat = torch.cat(d)
        assert sorted(flat.tolist()) == list(range(g * g))  # a partition of the grid
        for s, cells in enumerate(d):
            assert all(sum(divmod(int(c), g)) == s for c in cells)


@pytest.mark.parametrize("order", ["raster", "nar", "nbp"])
def test_kv_cache_layout(order):
    """NAR keeps its cache in generation order: feeding the diagonals in turn fills one contiguous prefix of
    the cache, so each step attends over exactly the slots written so far; the other orders store raster."""
    m = _model(order)
    n = m.num_tokens
    idx = m.cache_index[:n]
    if order == "nar":
        assert torch.equal(idx[torch.cat(diagonals(4))], torch.arange(n))
    else:
        assert torch.equal(m.cache_index, torch.arange(len(m.cache_index)))  # incl. raster's scratch slots
    stored = m.prefix_slots + idx  # the token at raster position i lives in cache slot stored[i]
    assert torch.equal(m.key_rank[stored], m.slot_rank[m.prefix_slots + torch.arange(n)])
    assert torch.equal(m.key_rank[:m.prefix_slots], m.slot_rank[:m.prefix_slots])
    if order == "nar":
        assert bool((m.key_rank.diff() >= 0).all())  # generation order = non-decreasing rank


def test_parallel_decoders_reject_the_wrong_generator():
    m = _model("raster")
    state = m.prefill(Condition(class_labels=torch.tensor([1])))
    for name in ("nar", "nbp"):
        with pytest.raises(ValueError, match=name):
            get_decoder(name).decode(m, state, SamplingConfig())


def test_t2i_parallel_orders_and_batch_seeding():
    for order in ("nar", "nbp"):
        m = _model(order, caption_dim=8, prefix_len=3)
        cond = Condition(text_features=torch.randn(2, 3, 8), text_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]).bool())
        dec = get_decoder(order)
        a = dec.decode(m, m.prefill(cond, guidance_scale=2.0), SamplingConfig(top_k=5),
                       [torch.Generator().manual_seed(i) for i in range(2)]).tokens
        b = dec.decode(m, m.prefill(cond, guidance_scale=2.0), SamplingConfig(top_k=5),
                       [torch.Generator().manual_seed(i) for i in range(2)]).tokens
        assert torch.equal(a, b)
        # batch independence: row 1 decoded alone with its own generator equals row 1 of the batch
        alone = Condition(text_features=cond.text_features[1:], text_mask=cond.text_mask[1:])
        c = dec.decode(m, m.prefill(alone, guidance_scale=2.0), SamplingConfig(top_k=5),
                       [torch.Generator().manual_seed(1)]).tokens
        assert torch.equal(c[0], a[1])
        assert not torch.equal(a[0], a[1])


def test_neighbour_plan_equals_its_definition():
    """Each cell of diagonal s reads the left neighbour (h, w - 1) and the upper one (h - 1, w),
    both on diagonal s - 1; the plan's in-diagonal positions must point at exactly those cells."""
    from mmgen.decoding.nar import neighbour_plan
    for g in (1, 2, 3, 8):
        d = diagonals(g)
        for s, (cells, left, up) in enumerate(neighbour_plan(g), start=1):
            assert torch.equal(cells, d[s])
            prev = d[s - 1].tolist()
            for c, l, u in zip(cells.tolist(), left.tolist(), up.tolist()):
                h, w = divmod(c, g)
                assert (l >= 0) == (w > 0) and (u >= 0) == (h > 0)
                if w > 0:
                    assert prev[l] == c - 1
                if h > 0:
                    assert prev[u] == c - g


def test_native_decoding_and_ar_rejects_parallel_generators(tmp_path):
    """A pipeline called without ``decoding`` runs the generator's own order; 'ar' on a NAR/NBP
    generator is a clear error instead of raster-sampling a model that was never trained for it."""
    from mmgen.pipelines import ARImagePipeline
    from mmgen.tokenizers_visual import VQTokenizer

    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=24).eval()
    expected = {"raster": 16, "nar": 7, "nbp": 4}
    for order, passes in expected.items():
        m = _model(order)
        assert m.native_decoding == ("ar" if order == "raster" else order)
        pipe = ARImagePipeline(transformer=m, vq=vq)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(class_labels=[3], generator=torch.Generator().manual_seed(0), output_type="latent")
        assert out.stats.method == m.native_decoding and out.stats.forward_passes == passes
        if order != "raster":
            with pytest.raises(ValueError, match=f"decoding='ar' needs a raster-order generator.*{order}"):
                pipe(class_labels=[3], decoding="ar", output_type="latent")


def test_model_for_decoding_picks_the_trained_sibling(tmp_path, monkeypatch):
    from mmgen.assets import model_for_decoding

    monkeypatch.setenv("MMGEN_ASSETS", str(tmp_path))
    for name in ("m", "m-nbp"):
        (tmp_path / name).mkdir()
    assert model_for_decoding("m", "nbp", "x") == str(tmp_path / "m-nbp")  # shipped name -> sibling
    assert model_for_decoding(None, "nbp", "m") == str(tmp_path / "m-nbp")  # default model
    assert model_for_decoding(str(tmp_path / "m"), "nbp", "x") == str(tmp_path / "m-nbp")  # folder -> sibling
    assert model_for_decoding("m", "nar", "x") == "m"  # no -nar sibling: unchanged (the decoder explains)
    assert model_for_decoding("m", "sjd", "x") == "m" and model_for_decoding("m-nbp", "nbp", "x") == "m-nbp"
    assert model_for_decoding("missing", "nar", "x") == "missing"


@pytest.mark.parametrize("kw,blk", [(dict(block_rows=2), 8), (dict(block_size=2), 2)])
def test_nbp_blocks_other_than_one_row(kw, blk):
    """Blocks of two rows (block_rows=2) and of half a row (block_size=2, as in NBP's block-size ablation) on a
    4 x 4 grid: the mask is block-causal over blocks of ``blk`` raster tokens, the begin-of-image queries sit (for
    RoPE) on the ``blk`` raster positions before token 0, decoding takes N / blk passes and every step's logits
    equal the teacher-forced full masked forward."""
    from mmgen.models.rope import rope_2d_table

    g, p = 4, 1
    m = _model("nbp", g=g, num_classes=10, **kw)
    assert m.block_size == blk and m.bov == blk
    slots = torch.arange(p + m.bov + g * g)[None]
    mask = m.attention_mask(slots, torch.ones(1, slots.shape[1], dtype=torch.bool))[0, p + m.bov:, p + m.bov:]
    for i in range(g * g):
        for j in range(g * g):
            assert bool(mask[i, j]) == (j // blk <= i // blk), (i, j)
    before = torch.arange(-blk, 0)
    cos, _ = rope_2d_table(torch.stack([torch.div(before, g, rounding_mode="floor"), before % g], 1),
                           m.config.dim // m.config.n_heads, m.config.rope_base)
    assert torch.equal(m.rope_cos[p:p + blk], cos)
    cond = Condition(class_labels=torch.tensor([2, 7]))
    res = get_decoder("nbp").decode(m, m.prefill(cond, guidance_scale=2.0), SamplingConfig(do_sample=False))
    n_blocks = g * g // blk
    assert res.stats.forward_passes == n_blocks and res.stats.histogram() == {blk: 2 * n_blocks}
    full = m(res.tokens, m.null_condition(cond))
    full = full + 2.0 * (m(res.tokens, cond) - full)
    assert torch.equal(full.argmax(-1), res.tokens)
    state = m.prefill(cond, guidance_scale=2.0)
    assert torch.allclose(state.first_logits, full[:, :blk], atol=1e-5)
    for b in range(1, n_blocks):
        fed = torch.arange((b - 1) * blk, b * blk)
        out = m.forward_step(state, res.tokens[:, fed], fed.expand(2, -1))
        assert torch.allclose(out.logits, full[:, b * blk:(b + 1) * blk], atol=1e-5)


def test_nbp_block_settings_are_checked():
    for bad in (3, 0, 5):
        with pytest.raises(ValueError, match="block_rows"):
            _model("nbp", num_classes=10, block_rows=bad)
    with pytest.raises(ValueError, match="block_rows"):
        _model("nar", num_classes=10, block_rows=2)
    for bad in (3, 32, -2):
        with pytest.raises(ValueError, match="block_size"):
            _model("nbp", num_classes=10, block_size=bad)
    with pytest.raises(ValueError, match="not both"):
        _model("nbp", num_classes=10, block_size=2, block_rows=2)
    with pytest.raises(ValueError, match="block_size is an NBP setting"):
        _model("nar", num_classes=10, block_size=2)


@pytest.mark.parametrize("order", ["nar", "nbp"])
def test_step_callback_sees_committed_tokens_and_its_edits_are_used(order):
    """NAR passes the committed cells in generation order (diagonal by diagonal), NBP the committed rows; an
    edit returned by the callback replaces them before they are fed (here: every committed token set to 5).
    Greedy, so each step's new cells must be the full masked forward's argmax *given all-5 predecessors*: a
    decoder that fed the unedited tokens would predict them from other contexts."""
    from mmgen.decoding.nar import emission_order

    m = _model(order)
    cond = Condition(class_labels=torch.tensor([1, 2]))
    order_pos = emission_order(4) if order == "nar" else torch.arange(16)  # cell ids in the callback's order
    seen, fresh = [], []

    def edit(step, tokens):
        prev = seen[-1] if seen else 0
        seen.append(tokens.shape[1])
        fresh.append((order_pos[prev:tokens.shape[1]], tokens[:, prev:].clone()))  # before the edit
        return torch.full_like(tokens, 5)

    res = get_decoder(order).decode(m, m.prefill(cond), SamplingConfig(do_sample=False), None, edit)
    assert torch.equal(res.tokens, torch.full((2, 16), 5))
    if order == "nar":
        sizes = [len(d) for d in diagonals(4)]
        assert seen == [sum(sizes[:s + 1]) for s in range(7)]  # 1, 3, 6, 10, 13, 15, 16
        assert sorted(emission_order(4).tolist()) == list(range(16))
    else:
        assert seen == [4, 8, 12, 16]
    given_fives = m(torch.full((2, 16), 5), cond).argmax(-1)  # (2, 16): each cell's greedy pick after all-5 cells
    for pos, new in fresh:
        assert torch.equal(new, given_fives[:, pos])
    plain = get_decoder(order).decode(m, m.prefill(cond), SamplingConfig(do_sample=False)).tokens
    assert not torch.equal(plain[:, order_pos[seen[0]:]], given_fives[:, order_pos[seen[0]:]])  # the edit mattered


def test_speculative_decoding_on_a_parallel_generator_is_a_clear_error():
    """Checked before the prefill (whose cache layout depends on the decoder), naming the decoder to use."""
    from mmgen.pipelines import ARImagePipeline
    from mmgen.tokenizers_visual import VQTokenizer

    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=24).eval()
    for order in ("nar", "nbp"):
        pipe = ARImagePipeline(transformer=_model(order), vq=vq)
        pipe.set_progress_bar_config(disable=True)
        for name in ("sjd", "gsd", "lantern"):
            with pytest.raises(ValueError, match=f"decoding='{name}' needs a raster-order generator.*'{order}'"):
                pipe(class_labels=[3], decoding=name, output_type="latent")
    with pytest.raises(ValueError, match="decoding='nar' needs a generator trained with order='nar'"):
        ARImagePipeline(transformer=_model("raster"), vq=vq)(class_labels=[3], decoding="nar", output_type="latent")


def test_parallel_benchmark_times_extra_models_with_their_own_decoding():
    """bench_parallel's ``--extra-models`` (e.g. an NBP with half-row blocks): each model is timed in the same
    interleaved run with its generator's own decoding, so the half-row NBP takes G^2 / 2 passes, not G."""
    from argparse import Namespace

    from mmgen.pipelines import ARImagePipeline
    from mmgen.tokenizers_visual import VQTokenizer

    bench = load_benchmark("bench_parallel")
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=24).eval()
    models = {"ar": _model("raster"), "nar": _model("nar"), "nbp": _model("nbp"),
              "nbp-half": _model("nbp", block_size=2, num_classes=10)}
    methods = {k: ARImagePipeline(transformer=m, vq=vq) for k, m in models.items()}
    for p in methods.values():
        p.set_progress_bar_config(disable=True)
    rows = {k: {} for k in methods}
    bench._time_methods(methods, rows, Namespace(task="digits", repeats=1, cfg=1.5, temperature=1.0), 1, [])
    assert {k: r["forward_passes_b1"] for k, r in rows.items()} == {"ar": 16, "nar": 7, "nbp": 4, "nbp-half": 8}
    assert all(r["forward_passes_b8"] == r["forward_passes_b1"] and r["speedup_b8"] > 0 for r in rows.values())
    assert rows["ar"]["speedup_b1"] == 1.0


def test_parallel_benchmark_device_option_is_checked():
    """``--device``: cpu passes; a device kind other than cpu/cuda, or a CUDA device this machine lacks, is a
    ValueError naming the option (before any model is loaded)."""
    bench = load_benchmark("bench_parallel")
    assert bench.check_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "cuda:banana", f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"):
        with pytest.raises(ValueError, match="--device"):
            bench.check_device(bad)
    with pytest.raises(ValueError, match="--device"):
        bench.main(["--device", "nope"])


@pytest.mark.parametrize("order", ["ar", "nar", "nbp"])
def test_a_bad_callback_edit_given_straight_to_a_decoder_is_refused(order):
    """The decoders check an edit themselves (not only the pipeline): a broadcastable (1, n) edit, floats,
    and ids outside [0, V) raise a ValueError naming the edit before anything is written or fed."""
    m = _model("raster" if order == "ar" else order)
    cond = Condition(class_labels=torch.tensor([1, 2]))
    v = m.config.vocab_size
    for bad in (lambda t: t[:1], lambda t: t.float(), lambda t: torch.full_like(t, v), lambda t: t - t - 1):
        with pytest.raises(ValueError, match="step callback's edit must be integer ids of shape"):
            get_decoder(order).decode(m, m.prefill(cond), SamplingConfig(do_sample=False), None,
                                      lambda step, tokens, bad=bad: bad(tokens))
