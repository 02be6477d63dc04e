import pytest
import torch

from mmgen.decoding import DecodeStats, SamplingConfig, final_probs, get_decoder, pick
from mmgen.models import Condition


def test_top_k_and_top_p_follow_their_definitions():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    p = final_probs(logits, SamplingConfig(top_k=2))
    assert torch.allclose(p, torch.tensor([[5 / 7, 2 / 7, 0, 0, 0]]), atol=1e-6)
    # top-p 0.6: 0.5 < 0.6 so the token crossing 0.6 (0.2) stays
    p = final_probs(logits, SamplingConfig(top_p=0.6))
    assert torch.allclose(p, torch.tensor([[5 / 7, 2 / 7, 0, 0, 0]]), atol=1e-6)
    p = final_probs(logits, SamplingConfig(top_p=0.3))
    assert torch.allclose(p, torch.tensor([[1.0, 0, 0, 0, 0]]))
    p = final_probs(logits, SamplingConfig(temperature=0.5))
    q = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]) ** 2
    assert torch.allclose(p, q / q.sum(), atol=1e-6)


@pytest.mark.parametrize("kwargs,arg", [({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                                        ({"temperature": 0.0}, "temperature"), ({"top_k": -1}, "top_k"),
                                        ({"top_k": 2.5}, "top_k"), ({"top_k": None}, "top_k"), ({"top_k": True}, "top_k"),
                                        ({"temperature": None}, "temperature"),
                                        ({"temperature": float("inf")}, "temperature"), ({"top_p": "0.9"}, "top_p")])
def test_bad_sampling_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        SamplingConfig(**kwargs)


def test_sampling_is_seeded_and_per_row_generators_are_batch_independent():
    probs = torch.softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), -1)
    cfg = SamplingConfig()
    a = pick(torch.log(probs), cfg, torch.Generator().manual_seed(3))
    b = pick(torch.log(probs), cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    rows = pick(torch.log(probs), cfg, [torch.Generator().manual_seed(10 + i) for i in range(4)])
    alone = pick(torch.log(probs[2:3]), cfg, [torch.Generator().manual_seed(12)])
    assert rows[2] == alone[0]


def test_ar_decoder_greedy_is_argmax_of_the_model(c2i):
    cond = Condition(class_labels=torch.tensor([3]))
    state = c2i.prefill(cond, guidance_scale=2.0)
    res = get_decoder("ar").decode(c2i, state, SamplingConfig(do_sample=False))
    assert res.tokens.shape == (1, 16)
    # teacher-forced check: every token is the argmax of the CFG-mixed logits given its prefix
    lc = c2i(res.tokens, cond)
    lu = c2i(res.tokens, Condition(class_labels=torch.tensor([10])))
    assert torch.equal((lu + 2.0 * (lc - lu)).argmax(-1), res.tokens)
    assert isinstance(res.stats, DecodeStats)
    assert res.stats.forward_passes == 16 and res.stats.tokens_per_forward == 1.0
    assert res.stats.histogram() == {1: 16}


def test_unknown_decoder_name():
    with pytest.raises(ValueError, match="decoding"):
        get_decoder("nope")


def test_unknown_decoder_options_name_the_option():
    with pytest.raises(ValueError, match=r"decoding_options \['windw'\] are not options of decoding='sjd'.*window"):
        get_decoder("sjd", windw=8)
    with pytest.raises(ValueError, match="decoding_options"):
        get_decoder("ar", window=8)  # AR takes no options
    with pytest.raises(ValueError, match="delta_p and dist_thr must be finite numbers"):
        get_decoder("gsd", delta_p=None)  # a known option of the wrong type, named by the decoder
    assert get_decoder("gsd", group_size=3, window=4).group_size == 3


def test_gsd_reads_a_unit_norm_codebook():
    """GSD's distance threshold assumes l2-normalised code vectors; SEED's codebook is not normalised."""

    class Tok:
        codebook = 3.0 * torch.nn.functional.normalize(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), dim=-1)

    dec = get_decoder("gsd")
    dec.prepare(Tok())
    assert torch.allclose(dec._emb.norm(dim=-1), torch.ones(12))


def test_device_clock_waits_for_queued_cuda_work(monkeypatch):
    """CUDA launches are asynchronous: the clock behind every decoder's wall time synchronises a CUDA device first
    (and only a CUDA device)."""
    from mmgen.decoding.base import device_clock

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(str(device)))
    device_clock("cpu")
    device_clock(None)
    assert calls == []
    device_clock(torch.device("cuda", 0))
    assert calls == ["cuda:0"]


@pytest.mark.parametrize("name,order", [("ar", "raster"), ("sjd", "raster"), ("gsd", "raster"), ("lantern", "raster"),
                                        ("nar", "nar"), ("nbp", "nbp")])
def test_every_decoder_times_itself_with_the_device_clock(monkeypatch, name, order):
    import mmgen.decoding.base as base
    from mmgen.decoding import get_decoder
    from mmgen.models import ARTransformer, Condition

    ticks = []
    monkeypatch.setattr(base, "device_clock", lambda device=None: ticks.append(str(device)) or 10.0 * len(ticks))
    gen = ARTransformer(vocab_size=16, grid_size=4, dim=16, n_layers=1, n_heads=2, num_classes=3, order=order).eval()
    dec = get_decoder(name)
    if name in ("gsd", "lantern"):
        dec.prepare(type("Tok", (), {"codebook": torch.randn(16, 4, generator=torch.Generator().manual_seed(0))})())
    state = gen.prefill(Condition(class_labels=torch.tensor([1])), extra_slots=dec.extra_slots)
    res = dec.decode(gen, state, SamplingConfig(), torch.Generator().manual_seed(0))
    assert ticks == ["cpu", "cpu"] and res.stats.wall_time == 10.0  # one reading at the start, one at the end


def test_draws_happen_on_the_generators_device():
    """A generator drives draws on its own device (a CPU generator can drive a CUDA model, as in diffusers); on one
    device the helpers draw exactly what torch would."""
    from mmgen.decoding.sampling import draw_device, multinomial

    g = torch.Generator().manual_seed(3)
    assert draw_device(g, "cuda") == torch.device("cpu") and draw_device(None, "cpu") == torch.device("cpu")
    probs = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), -1)
    expect = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3))[:, 0]
    assert torch.equal(multinomial(probs, g), expect)
