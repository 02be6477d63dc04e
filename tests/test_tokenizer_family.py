"""Structural tests of the tokenizer family (random init, seconds): the shared contract, SEED causality,
TokenFlow's shared index, Hita's ordering and fusion read-out, One-D-Piece prefixes, and generators
on non-square / holistic layouts."""

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize
from mmgen.decoding import SamplingConfig, get_decoder
from mmgen.models import ARTransformer, Condition
from mmgen.tokenizers_visual import (HitaTokenizer, OneDPieceTokenizer, SEEDTokenizer, TokenFlowTokenizer,
                                     VQTokenizer, load_tokenizer)
from mmgen.tokenizers_visual.tokenflow import joint_index

SMALL = {
    SEEDTokenizer: dict(width=32, vit_depth=1, heads=2, qformer_layers=1, num_queries=8, codebook_size=64,
                        gen_dim=32, decoder_channels=(8, 8, 16, 16), embed_dim=16),
    TokenFlowTokenizer: dict(width=32, sem_depth=1, sem_decoder_depth=1, heads=2, pixel_channels=(8, 16, 16),
                             codebook_size=64, embed_dim=16),
    HitaTokenizer: dict(channels=(8, 16, 16), width=32, heads=2, bidirectional_depth=1, causal_depth=1, fusion_depth=1,
                        num_holistic=8, patch_codebook_size=64, holistic_codebook_size=32, shift=4),
    OneDPieceTokenizer: dict(channels=(8, 16, 16), width=32, encoder_depth=1, decoder_depth=1, heads=2,
                             num_latent_tokens=8, codebook_size=64),
}


def images(n=4, seed=0):
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def trained_a_step(cls):
    """A small instance after one training forward (initialises the codebooks from data), in eval mode."""
    torch.manual_seed(0)
    tok = cls(**SMALL[cls])
    tok.train()
    tok.losses(images(8, 1), ["a small red circle on the left, blue background"] * 4,
               generator=torch.Generator().manual_seed(0))
    return tok.eval()


def small_vq_saved(folder) -> VQTokenizer:
    """A small VQ tokenizer (16 x 16 codes on 64 px) after one training forward (k-means codebook init), saved to
    ``folder`` for the trainer's ``--proxy``; returned in eval mode."""
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=32, codebook_dim=4)
    vq.train()
    vq(images(8, 3))
    vq.eval().save_pretrained(folder)
    return vq


@pytest.fixture(scope="module", params=list(SMALL), ids=lambda c: c.__name__)
def tok(request):
    return trained_a_step(request.param)


# ------------------------------------------------------------------ the shared contract
def test_contract_shapes_ranges_and_roundtrip(tok, tmp_path):
    x = images()
    batch = tok.encode(x)
    layout = tok.layout_for(64)
    assert batch.ids.dtype == torch.long and batch.ids.shape == (4, layout.num_tokens)
    assert batch.layout == layout
    assert int(batch.ids.min()) >= 0 and int(batch.ids.max()) < tok.vocab_size
    assert tok.codebook.shape[0] == tok.vocab_size
    out = tok.decode(batch.ids)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert tok.codebook.dtype == torch.float32 and tok.codebook.ndim == 2
    assert torch.equal(tok.encode(x).ids, batch.ids)  # deterministic in eval
    tok.save_pretrained(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert type(again) is type(tok)
    assert torch.equal(again.encode(x).ids, batch.ids)
    assert torch.allclose(again.decode(batch.ids), out, atol=1e-6)
    rows, cols = layout.generator_grid()
    assert rows * cols == layout.num_tokens
    assert 0 < tok.codebook_usage(x) <= 1


def test_contract_bad_inputs(tok):
    with pytest.raises(ValueError, match="images"):
        tok.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="images"):
        tok.encode(torch.randint(0, 255, (2, 3, 64, 64)))
    ids = tok.encode(images(2)).ids
    with pytest.raises(ValueError, match="ids"):
        tok.decode(ids.clone().fill_(tok.vocab_size))
    with pytest.raises(ValueError, match="ids"):
        tok.decode(torch.cat([ids, ids], 1))


@pytest.mark.parametrize("cls", list(SMALL), ids=lambda c: c.__name__)
def test_constructor_refuses_an_image_size_its_grids_do_not_divide(cls):
    """60 px is divisible by none of the family's strides (8, 16): every class refuses it by name instead of building
    a model whose decode returns 48 or 56 px images."""
    for bad in (60, 0, 64.0):
        with pytest.raises(ValueError, match="image_size"):
            cls(**SMALL[cls], image_size=bad)


def test_tokenflow_refuses_mismatched_grids_and_negative_weights():
    small = {k: v for k, v in SMALL[TokenFlowTokenizer].items()}
    with pytest.raises(ValueError, match="patch_size"):
        TokenFlowTokenizer(**{**small, "patch_size": 16})
    for bad in ({"w_sem": -1.0}, {"w_sem": 0.0, "w_pix": 0.0}):
        with pytest.raises(ValueError, match="w_sem and w_pix"):
            TokenFlowTokenizer(**{**small, **bad})
    with pytest.raises(ValueError, match="beta"):
        TokenFlowTokenizer(**{**small, "beta": -0.1})


def test_load_tokenizer_rejects_foreign_folders(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text('{"_class_name": "os.system"}')
    with pytest.raises(ValueError, match="known tokenizers"):
        load_tokenizer(tmp_path)


def test_vq_baseline_implements_the_contract(tmp_path):
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=64).eval()
    vq.save_pretrained(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), VQTokenizer)
    assert vq.layout_for(64).generator_grid() == (16, 16)


# ------------------------------------------------------------------ SEED: causal tokens
def test_seed_queries_are_causal():
    tok = trained_a_step(SEEDTokenizer)
    x = images(2)
    q = tok.query_tokens.detach().clone()
    base = tok.causal_embeddings(x, q)
    for j in (0, 3, 7):
        q2 = q.clone()
        q2[:, j] += torch.randn(q.shape[-1], generator=torch.Generator().manual_seed(j))
        out = tok.causal_embeddings(x, q2)
        assert torch.equal(out[:, :j], base[:, :j])  # bit-identical before j
        assert not torch.allclose(out[:, j], base[:, j])
    # gradient of token i reaches no later query
    qg = q.clone().requires_grad_(True)
    w = torch.randn(q.shape[-1], generator=torch.Generator().manual_seed(9))  # (a plain sum is flat after LayerNorm)
    (tok.causal_embeddings(x, qg)[:, 4] @ w).sum().backward()
    assert qg.grad[:, 5:].abs().max() == 0 and qg.grad[:, :5].abs().max() > 0


def test_seed_id_prefix_is_fixed_by_the_query_prefix():
    tok = trained_a_step(SEEDTokenizer)
    x = images(4)
    q = tok.query_tokens.detach().clone()
    ids = lambda qq: tok.quantizer(tok.encode_task_layer(tok.causal_embeddings(x, qq)))[1]
    base = ids(q)
    q2 = q.clone()
    q2[:, 5:] = torch.randn_like(q2[:, 5:])
    assert torch.equal(ids(q2)[:, :5], base[:, :5])
    assert "generation_embedding" in tok.encode(x).extras


def test_seed_contrastive_loss_prefers_matched_pairs():
    from mmgen.tokenizers_visual._parts import contrastive_loss
    e = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    scale = torch.tensor(2.0)
    assert contrastive_loss(e, e, scale) < contrastive_loss(e, e.roll(1, 0), scale)


def test_seed_captioning_loss_reads_the_codes_word_by_word(tmp_path):
    """ITG option: the loss trains the encoder through the codes, word i is predicted from words < i only,
    and the option round-trips through save/load (the shipped config, without it, still builds no captioner)."""
    assert SEEDTokenizer(**SMALL[SEEDTokenizer]).captioner is None
    with pytest.raises(ValueError, match="caption_weight"):
        SEEDTokenizer(**SMALL[SEEDTokenizer], caption_weight=-1.0)
    torch.manual_seed(0)
    tok = SEEDTokenizer(**SMALL[SEEDTokenizer], caption_weight=1.0)
    tok.train()
    caps = ["a small red circle on the left, blue background", "a large green square at the top and a small "
            "yellow diamond at the bottom, black background"]
    out = tok.losses(images(4, 1), caps, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["captioning"]) and out["captioning"] > 0
    out["loss"].backward()
    assert tok.query_tokens.grad.abs().max() > 0 and tok.caption_head.weight.grad.abs().max() > 0
    tok.eval()
    zq = tok.codebook[tok.encode(images(2, 2)).ids]
    with torch.no_grad():  # per-word losses of two captions that share their first two words
        a, b = tok.caption_loss(zq[:1].expand(2, -1, -1), [caps[0], "a small blue square at the top, gray "
                                                           "background"], reduction="none")
    assert torch.allclose(a[:2], b[:2]) and not torch.allclose(a[2], b[2])  # word i sees words < i only
    assert a.shape == (24,) and (a[10:] == 0).all() and (a[:10] > 0).all()  # 9 words and the comma, then padding
    tok.save_pretrained(tmp_path)
    again = SEEDTokenizer.from_pretrained(tmp_path).eval()
    assert again.captioner is not None
    with torch.no_grad():
        assert torch.allclose(again.caption_loss(zq[:1], caps[:1]), tok.caption_loss(zq[:1], caps[:1]))


# ------------------------------------------------------------------ TokenFlow: one index, two codebooks
def test_tokenflow_joint_index_is_the_weighted_argmin():
    g = torch.Generator().manual_seed(0)
    zs, zp = F.normalize(torch.randn(200, 6, generator=g), dim=-1), F.normalize(torch.randn(200, 3, generator=g), dim=-1)
    es, ep = F.normalize(torch.randn(50, 6, generator=g), dim=-1), F.normalize(torch.randn(50, 3, generator=g), dim=-1)
    for ws, wp in [(1.0, 1.0), (0.3, 2.0)]:
        brute = torch.tensor([min(range(50), key=lambda k: ws * float(((zs[i] - es[k]) ** 2).sum())
                                 + wp * float(((zp[i] - ep[k]) ** 2).sum())) for i in range(200)])
        assert torch.equal(joint_index(zs, zp, es, ep, ws, wp), brute)
    only_sem = joint_index(zs, zp, es, ep, 1.0, 0.0)
    only_pix = joint_index(zs, zp, es, ep, 0.0, 1.0)
    assert torch.equal(only_sem, torch.cdist(zs, es).argmin(1)) and torch.equal(only_pix, torch.cdist(zp, ep).argmin(1))
    joint = joint_index(zs, zp, es, ep)
    differ = only_sem != only_pix
    assert differ.any() and (joint != only_sem).any() and (joint != only_pix).any()  # both codebooks are addressed


def test_tokenflow_one_id_addresses_both_codebooks():
    tok = trained_a_step(TokenFlowTokenizer)
    x = images(2)
    q_sem, q_pix, ids, _ = tok._quantize(x)
    e_sem, e_pix = tok.codebook_pair.tables()
    assert torch.allclose(q_sem, e_sem[ids], atol=1e-6) and torch.allclose(q_pix, e_pix[ids], atol=1e-6)
    assert torch.equal(tok.codebook[ids][..., :e_sem.shape[1]], e_sem[ids])
    batch = tok.encode(x)
    assert torch.allclose(batch.extras["semantic_features"], tok.semantic_features(batch.ids), atol=1e-5)
    assert torch.allclose(tok.decode(batch.ids), tok._pixels(q_pix), atol=1e-5)  # decoded from the pixel side


def test_tokenflow_restarts_idle_codes_from_batch_vectors():
    """A code idle for more than ``restart_after`` steps (and only such a code) jumps to a vector of the current
    batch, in both codebooks."""
    cb = TokenFlowTokenizer(**SMALL[TokenFlowTokenizer]).codebook_pair.train()
    cb.restart_after = 1
    (k, ds), dp = cb.sem.shape, cb.pix.shape[1]
    g = torch.Generator().manual_seed(0)
    batch = lambda: (torch.randn(4, ds, generator=g), torch.randn(4, dp, generator=g))  # 4 vectors << k codes
    cb(*batch())  # data init
    cb.idle.zero_()
    before = (cb.sem.detach().clone(), cb.pix.detach().clone())
    _, _, ids_a, _ = cb(*batch())  # unpicked codes now idle 1: not more than restart_after, so kept
    assert torch.equal(cb.sem, before[0]) and torch.equal(cb.pix, before[1])
    zs, zp = batch()
    _, _, ids_b, _ = cb(zs, zp)  # idle 2 > 1: restarted from this batch
    dead = torch.ones(k, dtype=torch.bool)
    dead[torch.cat([ids_a, ids_b])] = False
    assert dead.sum() >= k - 8
    assert torch.equal(cb.sem[~dead], before[0][~dead]) and torch.equal(cb.pix[~dead], before[1][~dead])
    for table, z in ((cb.sem, zs), (cb.pix, zp)):  # each restarted code is one of the batch's (normalised) vectors
        gap = (table[dead][:, None] - torch.nn.functional.normalize(z, dim=-1)[None]).abs().amax(-1)  # (dead, 4)
        assert gap.min(1).values.max() < 1e-6


# ------------------------------------------------------------------ Hita: holistic first, fusion read-out
def test_hita_ids_put_holistic_tokens_first():
    tok = trained_a_step(HitaTokenizer)
    ids = tok.encode(images(3)).ids
    kh = tok.config.holistic_codebook_size
    assert (ids[:, :8] < kh).all() and (ids[:, 8:] >= kh).all()
    h, p = tok.split_ids(ids)
    assert h.shape == (3, 8) and p.shape == (3, 64)
    swapped = torch.cat([ids[:, 8:16], ids[:, :8], ids[:, 16:]], 1)
    with pytest.raises(ValueError, match="first 8 ids"):
        tok.decode(swapped)


def test_hita_fusion_reads_patch_i_before_its_own_code():
    tok = trained_a_step(HitaTokenizer)
    g = torch.Generator().manual_seed(0)
    qh, qp = torch.randn(1, 8, 12, generator=g), torch.randn(1, 64, 8, generator=g)
    base = tok.fuse(qh, qp).flatten(2)  # (1, W, 64)
    for j in (0, 10, 40):
        qp2 = qp.clone()
        qp2[:, j] += 1.0
        diff = (tok.fuse(qh, qp2).flatten(2) - base).abs().amax(1)[0]  # per read-out patch
        changed = diff > 1e-6
        assert not changed[: j + tok.config.shift].any() and changed[j + tok.config.shift:].any()
    qh2 = qh.clone()
    qh2[:, 7] += 1.0  # the last holistic token is visible to patches i >= 3 (read at n_h - shift + i)
    diff = (tok.fuse(qh2, qp).flatten(2) - base).abs().amax(1)[0]
    assert not (diff[:3] > 1e-6).any() and (diff[3:] > 1e-6).all()


# ------------------------------------------------------------------ One-D-Piece: prefixes
@pytest.mark.parametrize("latent_io", ["linear", "attention"])
def test_onedpiece_decodes_every_prefix(latent_io):
    """Both ways of reading the K tokens (position-specific mixing, TiTok's latent queries): every prefix
    length decodes, ``length=k`` equals passing the first k ids, and one token decodes differently from all."""
    torch.manual_seed(0)
    tok = OneDPieceTokenizer(**SMALL[OneDPieceTokenizer], latent_io=latent_io).train()
    tok.losses(images(8, 1), generator=torch.Generator().manual_seed(0))
    tok.eval()
    x = images(2)
    ids = tok.encode(x).ids
    for k in range(1, 9):
        out = tok.decode(ids, length=k)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert torch.equal(out, tok.decode(ids[:, :k]))
    assert not torch.allclose(tok.decode(ids, length=1), tok.decode(ids))
    for bad in (0, 9, 2.5):
        with pytest.raises(ValueError, match="length"):
            tok.decode(ids, length=bad)


def test_onedpiece_latent_io_and_mix_dim_are_checked():
    for bad in dict(latent_io="queries"), dict(mix_dim=0), dict(mix_dim=2.5):
        with pytest.raises(ValueError, match=next(iter(bad))):
            OneDPieceTokenizer(**SMALL[OneDPieceTokenizer], **bad)
    small = {k: v for k, v in SMALL[OneDPieceTokenizer].items() if not k.endswith("_depth")}
    with pytest.raises(ValueError, match="encoder_depth and decoder_depth must be >= 1"):
        OneDPieceTokenizer(**small, latent_io="attention", encoder_depth=0, decoder_depth=1)
    assert len(OneDPieceTokenizer(**small, encoder_depth=0, decoder_depth=0).encoder) == 0  # linear: blocks optional


def test_onedpiece_tail_drop_length_comes_from_the_generator():
    tok = OneDPieceTokenizer(**SMALL[OneDPieceTokenizer]).train()
    ks = [float(tok.losses(images(2), generator=torch.Generator().manual_seed(s))["kept_tokens"]) for s in range(12)]
    again = [float(tok.losses(images(2), generator=torch.Generator().manual_seed(s))["kept_tokens"]) for s in range(12)]
    assert ks == again and len(set(ks)) > 3 and min(ks) >= 1 and max(ks) <= 8
    off = OneDPieceTokenizer(**SMALL[OneDPieceTokenizer], tail_drop=False).train()
    assert float(off.losses(images(2))["kept_tokens"]) == 8


def test_onedpiece_proxy_mode_predicts_the_frozen_proxy_codes(tmp_path):
    """TiTok stage 1: the target is the proxy VQ's code grid, decode renders argmax codes with the
    proxy's decoder, and training never changes the proxy (weights or EMA codebook)."""
    from mmgen.train.train_visual_tokenizer import build_model

    torch.manual_seed(0)
    vq = small_vq_saved(tmp_path / "vq")
    tok = build_model("onedpiece", SMALL[OneDPieceTokenizer], proxy=str(tmp_path / "vq"))
    before = {k: v.clone() for k, v in tok.proxy.state_dict().items()}
    assert all(torch.equal(v, vq.state_dict()[k]) for k, v in before.items())
    opt = torch.optim.AdamW(tok.parameters(), lr=1e-2)
    tok.train()
    assert not tok.proxy.training
    x = images(4, 1)
    losses = []
    for _ in range(3):
        out = tok.losses(x, generator=torch.Generator().manual_seed(0))
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out["reconstruction"]))
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, before[k]) for k, v in tok.proxy.state_dict().items())
    tok.eval()
    ids = tok.encode(x).ids
    logits = tok.proxy_logits(tok.codebook[ids])
    assert logits.shape == (4, 256, 32)
    assert torch.equal(tok.decode(ids), vq.decode(logits.argmax(-1)))
    tok.save_pretrained(tmp_path / "od")
    again = load_tokenizer(tmp_path / "od")
    assert torch.equal(again.decode(ids), tok.decode(ids))
    with pytest.raises(ValueError, match="--proxy"):
        build_model("hita", {}, proxy=str(tmp_path / "vq"))


def test_seed_reads_a_frozen_vq_encoder_and_stays_causal(tmp_path):
    """``vision_vq``: the Q-Former reads a frozen VQ's code grid (SEED's frozen ViT); training never changes the
    VQ, token i still depends on queries <= i only, and the whole tokenizer round-trips through save/load."""
    from mmgen.train.train_visual_tokenizer import build_model

    torch.manual_seed(0)
    small_vq_saved(tmp_path / "vq")
    tok = build_model("seed", {**SMALL[SEEDTokenizer], "caption_weight": 1.0}, proxy=str(tmp_path / "vq"))
    assert tok.patch_embed is None and tok.sub == 2  # 16 x 16 codes, 2 x 2 per patch of the 8 x 8 grid
    before = {k: v.clone() for k, v in tok.vision.state_dict().items()}
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=1e-2)
    tok.train()
    assert not tok.vision.training
    for _ in range(2):
        out = tok.losses(images(4, 1), ["a small red circle on the left, blue background"] * 2)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(v, before[k]) for k, v in tok.vision.state_dict().items())
    tok.eval()
    x, q = images(2), tok.query_tokens.detach().clone()
    q2 = q.clone()
    q2[:, 3:] += torch.randn(q2[:, 3:].shape, generator=torch.Generator().manual_seed(3))  # (not a constant: LayerNorm)
    base, out = tok.causal_embeddings(x, q), tok.causal_embeddings(x, q2)
    assert torch.equal(out[:, :3], base[:, :3]) and not torch.allclose(out[:, 3], base[:, 3])
    ids = tok.encode(x).ids
    tok.save_pretrained(tmp_path / "seed")
    again = load_tokenizer(tmp_path / "seed")
    assert torch.equal(again.encode(x).ids, ids) and torch.equal(again.decode(ids), tok.decode(ids))


# ------------------------------------------------------------------ generators on these layouts
def test_generator_on_a_one_row_layout_greedy_speculative_equals_ar():
    gen = randomize(ARTransformer(vocab_size=32, grid_size=1, grid_width=12, dim=32, n_layers=2, n_heads=2,
                                  num_classes=4))
    cond = Condition(class_labels=torch.tensor([1, 2]))
    greedy = SamplingConfig(do_sample=False)

    def run(name, **kw):
        dec = get_decoder(name, **kw)
        return dec.decode(gen, gen.prefill(cond, guidance_scale=2.0, extra_slots=dec.extra_slots), greedy,
                          torch.Generator().manual_seed(0), None)

    ar = run("ar")
    assert ar.tokens.shape == (2, 12)
    assert torch.equal(run("sjd", window=4).tokens, ar.tokens)
    with pytest.raises(ValueError, match="square"):
        ARTransformer(vocab_size=32, grid_size=2, grid_width=6, num_classes=4, order="nar")


def test_generator_respects_hita_id_ranges():
    gen = randomize(ARTransformer(vocab_size=48, grid_size=3, grid_width=4, dim=32, n_layers=1, n_heads=2,
                                  num_classes=4, holistic_tokens=4, holistic_vocab=16), std=0.3)
    cond = Condition(class_labels=torch.tensor([0, 1, 2, 3]))
    for name, kw in [("ar", {}), ("sjd", {"window": 3})]:
        dec = get_decoder(name, **kw)
        out = dec.decode(gen, gen.prefill(cond, extra_slots=dec.extra_slots), SamplingConfig(temperature=1.5),
                         torch.Generator().manual_seed(0), None)
        assert (out.tokens[:, :4] < 16).all() and (out.tokens[:, 4:] >= 16).all()
    logits = gen(torch.randint(16, 48, (2, 12)), Condition(class_labels=torch.tensor([0, 1])))
    assert torch.isinf(logits[:, :4, 16:]).all() and torch.isinf(logits[:, 4:, :16]).all()


# ------------------------------------------------------------------ CLI
def test_cli_tokenize_roundtrip_and_errors(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from mmgen.cli import main

    tok = trained_a_step(OneDPieceTokenizer)
    tok.save_pretrained(tmp_path / "tok")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    capsys.readouterr()
    assert main(["tokenize", str(tmp_path / "in.png"), "--tokenizer", str(tmp_path / "tok"), "--out",
                 str(tmp_path / "rec.png"), "--length", "3"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["layout"] == "sequence" and len(line["ids"]) == 8
    assert Image.open(tmp_path / "rec.png").size == (64, 64)
    assert main(["tokenize", str(tmp_path / "in.png"), "--tokenizer", str(tmp_path / "tok"), "--length", "99"]) == 2
    assert "--length must be in [1, 8]" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["tokenize", str(tmp_path / "bad.png"), "--tokenizer", str(tmp_path / "tok")]) == 2
    assert "cannot be read as an image" in capsys.readouterr().err
    hita = trained_a_step(HitaTokenizer)
    hita.save_pretrained(tmp_path / "hita")
    assert main(["tokenize", str(tmp_path / "in.png"), "--tokenizer", str(tmp_path / "hita"), "--length", "2"]) == 2
    assert "only supported by prefix tokenizers" in capsys.readouterr().err


def test_encode_takes_images_of_any_float_dtype(tok):
    x = images(2)
    assert torch.equal(tok.encode(x.double()).ids, tok.encode(x).ids)


def test_empty_or_mismatched_inputs_are_value_errors(tmp_path, capsys, monkeypatch):
    from mmgen.cli import main
    from mmgen.models.drafter import Drafter

    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=24).eval()
    with pytest.raises(ValueError, match="non-empty square grid"):
        vq.decode(torch.zeros(1, 0, dtype=torch.long))
    gen = ARTransformer(vocab_size=24, grid_size=4, dim=32, n_layers=1, n_heads=2, num_classes=10)
    with pytest.raises(ValueError, match="does not match"):
        Drafter(dim=32, n_heads=4, vocab_size=24).check_generator(gen)  # same width, other head size
    monkeypatch.setenv("MMGEN_ASSETS", str(tmp_path / "nowhere"))
    assert main(["info"]) == 2
    assert "assets folder" in capsys.readouterr().err


def test_cli_tokenize_uses_the_pipeline_generators_image_size(tmp_path, capsys):
    """A pipeline folder's VQ is read at the size its generator was trained on (digits: 32 px, 8 x 8 tokens)."""
    import json

    import numpy as np
    from PIL import Image

    from mmgen.cli import main

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "d.png")
    capsys.readouterr()
    assert main(["tokenize", str(tmp_path / "d.png"), "--tokenizer", "digits-c2i"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_tokens"] == 64
    assert main(["tokenize", str(tmp_path / "d.png")]) == 0  # default: the shipped patch-local VQ, 64 px
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_tokens"] == 256


def test_visual_tokenizer_trainer_resumes_exports_and_records_every_run(tmp_path):
    """The family's trainer: stopped after one step, resumed to two, exported with its figures; the record keeps
    both runs (steps, command) and the exported tokenizer loads and round-trips."""
    import json

    from mmgen.tokenizers_visual import load_tokenizer
    from mmgen.train import train_visual_tokenizer

    cfg = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in SMALL[OneDPieceTokenizer].items()})
    common = ["--kind", "onedpiece", "--config", cfg, "--out", str(tmp_path / "tok"), "--work", str(tmp_path / "w"),
              "--steps", "2", "--batch", "4", "--save-every", "1", "--threads", "1"]
    train_visual_tokenizer.main(common + ["--max-minutes", "1e-9"])
    train_visual_tokenizer.main(common)
    m = json.loads((tmp_path / "tok" / "metrics.json").read_text())
    assert m["steps"] == 2 and [g["steps"] for g in m["segments"]] == ["0-1", "1-2"]
    assert m["segments"][0]["command"].endswith("--max-minutes 1e-9") and m["command"] == m["segments"][1]["command"]
    assert "psnr_scenes" in m and set(m["psnr_vs_length"]["scenes"]) == {"1", "2", "4", "8"}
    judged = m["judge_vs_length"]  # the scene judge at each prefix length, every attribute
    assert set(judged) == {"all", "background", "shape", "color", "size"}
    assert all(set(v) == {"1", "2", "4", "8"} and all(0 <= r <= 1 for r in v.values()) for v in judged.values())
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.decode(tok.encode(images(2)).ids).shape == (2, 3, 64, 64)


def test_seed_renderer_warm_starts_trains_and_decodes_by_sampling(tmp_path, tiny_pipeline):
    """SEED's generative renderer (unCLIP's role): warm-started from a raster generator over the same frozen VQ
    (all but the condition's input layer and null prefix), trained by its script, exported as the same tokenizer
    (identical ids) whose ``decode`` samples the VQ grid from the passed generator only; bad configs raise."""
    from mmgen.pipelines import ARImagePipeline
    from mmgen.train.train_seed_renderer import main, warm_start
    from mmgen.train.train_visual_tokenizer import build_model

    torch.manual_seed(0)
    small_vq_saved(tmp_path / "pipe" / "vq")
    seed = build_model("seed", SMALL[SEEDTokenizer], proxy=str(tmp_path / "pipe" / "vq")).train()
    seed.losses(images(8, 1), ["a small red circle on the left, blue background"] * 4)  # k-means codebook init
    seed.eval().save_pretrained(tmp_path / "seed")
    small = dict(dim=32, n_layers=1, n_heads=2)
    src = randomize(ARTransformer(vocab_size=32, grid_size=16, caption_dim=12, prefix_len=5, **small), std=0.05)
    src.save_pretrained(tmp_path / "pipe" / "transformer")
    renderer = seed.build_renderer(small)
    assert warm_start(renderer, tmp_path / "pipe", seed.vision) == ["caption_proj.0.weight", "uncond_embedding"]
    assert torch.equal(renderer.layers[0].wqkv.weight, src.layers[0].wqkv.weight)
    other = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=32, codebook_dim=4)
    other.save_pretrained(tmp_path / "other" / "vq")
    src.save_pretrained(tmp_path / "other" / "transformer")
    with pytest.raises(ValueError, match="vision VQ"):
        warm_start(seed.build_renderer(small), tmp_path / "other", seed.vision)
    with pytest.raises(ValueError, match="caption_dim"):
        seed.build_renderer({**small, "caption_dim": 7})
    with pytest.raises(ValueError, match="needs vision_vq"):
        trained_a_step(SEEDTokenizer).build_renderer(small)

    main(["--tokenizer", str(tmp_path / "seed"), "--init-from", str(tmp_path / "pipe"), "--out", str(tmp_path / "out"),
          "--work", str(tmp_path / "work"), "--steps", "2", "--batch", "2", "--num-scenes", "8", "--threads", "1",
          "--cache-dir", str(tmp_path / "cache"), "--renderer-config", '{"dim": 32, "n_layers": 1, "n_heads": 2}',
          "--render-guidance", "3", "--render-temperature", "0.5"])
    tok = load_tokenizer(tmp_path / "out")
    assert (tok.config.render_guidance, tok.config.render_temperature) == (3, 0.5)
    x = images(2)
    ids = tok.encode(x).ids
    assert tok.stochastic_decode and not seed.stochastic_decode and torch.equal(ids, seed.encode(x).ids)
    assert tok.render_condition(ids).text_features.shape == (2, 8, 32)
    g = lambda s: torch.Generator().manual_seed(s)
    a, b, c = tok.decode(ids, generator=g(0)), tok.decode(ids, generator=g(0)), tok.decode(ids, generator=g(1))
    assert a.shape == (2, 3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="temperature"):
        tok.decode(ids, temperature=0)
    # a pipeline hands its generator to a stochastic tokenizer: same seed, same images
    gen = randomize(ARTransformer(vocab_size=64, grid_size=1, grid_width=8, caption_dim=32, prefix_len=24, **small),
                    std=0.2)  # over SEED's 8 ids; the tiny pipeline's text encoder (32-d) and tokenizer
    pipe = ARImagePipeline(transformer=gen, vq=tok, text_encoder=tiny_pipeline.text_encoder,
                           tokenizer=tiny_pipeline.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    run = lambda s: pipe("a small red circle on the left, blue background", generator=g(s), output_type="pt").images
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_seed_render_settings_share_the_samplers_ranges():
    """render_guidance / render_temperature (the renderer's defaults) follow the pipeline's ranges: CFG in
    [0, 1000], temperature in [1e-4, 1e4]; infinite or NaN values used to pass the constructor."""
    for bad, match in ((dict(render_guidance=float("inf")), r"render_guidance must be a number in \[0, 1000\]"),
                       (dict(render_guidance=-1.0), "render_guidance"),
                       (dict(render_temperature=0.0), r"render_temperature must be a number in \[0.0001, 10000\]"),
                       (dict(render_temperature=float("nan")), "render_temperature")):
        with pytest.raises(ValueError, match=match):
            SEEDTokenizer(**SMALL[SEEDTokenizer], **bad)


def test_visual_tokenizer_trainer_warm_starts_from_a_trained_tokenizer(tmp_path):
    """``--init-from``: One-D-Piece trained without tail drop, then with it from those weights (codebook included);
    a tokenizer of another class or of other shapes is refused before anything is written."""
    import json

    from mmgen.tokenizers_visual import load_tokenizer
    from mmgen.train import train_visual_tokenizer

    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL[OneDPieceTokenizer].items()}
    src = trained_a_step(OneDPieceTokenizer)
    src.save_pretrained(tmp_path / "src")
    common = ["--kind", "onedpiece", "--steps", "1", "--batch", "4", "--threads", "1", "--lr", "1e-12"]
    no_restarts = {**cfg, "tail_drop": True, "dead_code_threshold": 0.0}  # so only the EMA moves the codebook
    train_visual_tokenizer.main(common + ["--config", json.dumps(no_restarts), "--init-from",
                                          str(tmp_path / "src"), "--out", str(tmp_path / "tok"), "--work",
                                          str(tmp_path / "w")])
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.config.tail_drop and json.loads((tmp_path / "tok" / "metrics.json").read_text())["init_from"]
    # the codebook came across (one EMA step moves the used codes a little; a k-means re-init would scatter them)
    assert float(torch.nn.functional.cosine_similarity(tok.codebook, src.codebook, dim=-1).min()) > 0.8
    # lr 1e-12: one step leaves the weights where --init-from put them
    assert torch.allclose(tok.enc_mix.weight, src.enc_mix.weight, atol=1e-6)
    trained_a_step(HitaTokenizer).save_pretrained(tmp_path / "hita")
    for folder, conf, match in ((tmp_path / "hita", cfg, "a HitaTokenizer, not a OneDPieceTokenizer"),
                                (tmp_path / "src", {**cfg, "num_latent_tokens": 4}, "weights do not fit --config")):
        with pytest.raises(ValueError, match=match):
            train_visual_tokenizer.main(common + ["--config", json.dumps(conf), "--init-from", str(folder),
                                                  "--out", str(tmp_path / "bad"), "--work", str(tmp_path / "wb")])
        assert not (tmp_path / "bad").exists() and not (tmp_path / "wb").exists()
