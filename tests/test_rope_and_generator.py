import pytest
import torch

from mmgen.models import Condition
from mmgen.models.rope import apply_rope, rope_2d_table


def test_rope_2d_depends_only_on_relative_offset():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32, generator=g), torch.randn(1, 1, 1, 32, generator=g)

    def score(pq, pk):
        cos, sin = rope_2d_table(torch.tensor([pq, pk]), 32)
        qr = apply_rope(q, cos[None, :1], sin[None, :1])
        kr = apply_rope(k, cos[None, 1:], sin[None, 1:])
        return float((qr * kr).sum())

    base = score((3, 5), (1, 2))
    assert score((7, 9), (5, 6)) == pytest.approx(base, abs=1e-5)  # same (2, 3) offset
    assert score((10, 3), (8, 0)) == pytest.approx(base, abs=1e-5)
    assert abs(score((3, 5), (2, 2)) - base) > 1e-3  # a different row offset changes it
    assert abs(score((3, 5), (1, 3)) - base) > 1e-3  # a different column offset changes it


def test_rope_rejects_bad_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        rope_2d_table(torch.zeros(2, 2, dtype=torch.long), 30)


def _stepwise(model, cond, tokens, **kw):
    state = model.prefill(cond, **kw)
    out = [state.first_logits[:, None]]
    for i in range(tokens.shape[1] - 1):
        out.append(model.forward_step(state, tokens[:, i:i + 1], torch.full((tokens.shape[0], 1), i)).logits)
    return torch.cat(out, 1), state


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_cached_steps_equal_full_forward(kind, c2i, t2i, text_cond):
    model = c2i if kind == "c2i" else t2i
    cond = Condition(class_labels=torch.tensor([1, 7])) if kind == "c2i" else text_cond
    tokens = torch.randint(0, 32, (2, model.num_tokens), generator=torch.Generator().manual_seed(0))
    full = model(tokens, cond)
    step, _ = _stepwise(model, cond, tokens)
    assert torch.allclose(step, full, atol=1e-5)


def test_rollback_then_refeed_equals_never_fed(c2i):
    cond = Condition(class_labels=torch.tensor([2, 3]))
    tokens = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(1))
    full = c2i(tokens, cond)
    state = c2i.prefill(cond)
    wrong = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(2))
    c2i.forward_step(state, wrong, torch.arange(10).expand(2, -1))
    state.truncate(0)
    out = c2i.forward_step(state, tokens[:, :15], torch.arange(15).expand(2, -1)).logits
    assert torch.allclose(out, full[:, 1:], atol=1e-5)
    # per-row rollback lengths
    state.truncate(torch.tensor([4, 9]))
    assert state.cache_len.tolist() == [4, 9]
    with pytest.raises(ValueError, match="truncate"):
        state.truncate(12)


def test_forward_step_rejects_non_contiguous_positions(c2i):
    state = c2i.prefill(Condition(class_labels=torch.tensor([0])))
    with pytest.raises(ValueError, match="positions"):
        c2i.forward_step(state, torch.zeros(1, 1, dtype=torch.long), torch.tensor([[3]]))


def test_cfg_mixing_matches_definition(c2i):
    cond = Condition(class_labels=torch.tensor([4, 5]))
    null = Condition(class_labels=torch.tensor([10, 10]))
    tokens = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(3))
    lc, lu = c2i(tokens, cond), c2i(tokens, null)
    s = 2.5
    mixed, _ = _stepwise(c2i, cond, tokens, guidance_scale=s)
    assert torch.allclose(mixed, lu + s * (lc - lu), atol=1e-4)
    # CFG interval: guidance only for tokens whose index / N lies in [0.25, 0.5)
    mixed_iv, _ = _stepwise(c2i, cond, tokens, guidance_scale=s, cfg_interval=(0.25, 0.5))
    on = torch.zeros(16, dtype=torch.bool)
    on[4:8] = True
    assert torch.allclose(mixed_iv[:, on], (lu + s * (lc - lu))[:, on], atol=1e-4)
    assert torch.allclose(mixed_iv[:, ~on], lc[:, ~on], atol=1e-4)


def test_text_padding_is_masked(t2i, text_cond):
    """Changing features in padded slots must not change any logit."""
    tokens = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(4))
    a = t2i(tokens, text_cond)
    feats = text_cond.text_features.clone()
    feats[0, :3] = 5.0
    b = t2i(tokens, Condition(text_features=feats, text_mask=text_cond.text_mask))
    assert torch.allclose(a, b, atol=1e-6)


def test_prefill_validates_inputs(c2i, t2i):
    with pytest.raises(ValueError, match="class_labels"):
        c2i.prefill(Condition(class_labels=torch.tensor([10])))
    with pytest.raises(ValueError, match="guidance_scale"):
        c2i.prefill(Condition(class_labels=torch.tensor([1])), guidance_scale=-1.0)
    with pytest.raises(ValueError, match="text_features"):
        t2i.prefill(Condition(text_features=torch.zeros(1, 3, 16)))
