import numpy as np
import pytest
import torch

from mmgen.data import SceneDataset, load_digits_rgb, parse_caption, photo_crops, to_tensor
from mmgen.data.scenes import SLOT_NAMES
from mmgen.tokenizers_visual import VQTokenizer


def test_scenes_are_deterministic_and_captions_parse_back():
    a, b = SceneDataset(20, seed=5), SceneDataset(20, seed=5)
    for i in range(20):
        ia, sa = a[i]
        ib, sb = b[i]
        assert np.array_equal(ia, ib) and sa == sb
        assert ia.shape == (64, 64, 3) and ia.dtype == np.uint8
        assert parse_caption(sa.caption()) == sa
    assert not np.array_equal(SceneDataset(5, seed=1)[0][0], SceneDataset(5, seed=2)[0][0])


def test_scene_labels_encode_slots():
    _, spec = SceneDataset(50, seed=0)[0]
    lab = spec.labels()
    occupied = {s.slot for s in spec.shapes}
    for k, slot in enumerate(SLOT_NAMES):
        assert (lab["shape"][k] > 0) == (slot in occupied)


def test_parse_caption_rejects_other_text():
    with pytest.raises(ValueError):
        parse_caption("a photo of a cat")


def test_digits_split_is_real_and_disjoint():
    xtr, ytr = load_digits_rgb("train")
    xte, yte = load_digits_rgb("test")
    assert xtr.shape[1:] == (32, 32, 3) and len(xtr) + len(xte) == 1797
    assert set(np.unique(ytr)) == set(range(10))
    # disjoint: train and test together are exactly the whole set (as a multiset: the set has duplicate images)
    def key(x, y):
        return sorted(a.tobytes() + bytes([int(b)]) for a, b in zip(x, y))

    assert key(np.concatenate([xtr, xte]), np.concatenate([ytr, yte])) == key(*load_digits_rgb("all"))
    with pytest.raises(ValueError, match="split"):
        load_digits_rgb("val")


def test_vq_shapes_round_trip_and_bad_inputs(tmp_path):
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=64).eval()
    x = to_tensor(SceneDataset(2, seed=0).arrays()[0])
    with torch.no_grad():
        vq(to_tensor(photo_crops(16, seed=0)))  # k-means init of the codebook on varied pixels
    batch = vq.encode(x)
    assert batch.ids.shape == (2, 256) and batch.layout.height == 16 and batch.layout.num_tokens == 256
    assert vq.decode(batch.ids).shape == (2, 3, 64, 64)
    assert vq.codebook.shape == (64, 8)
    assert torch.allclose(vq.codebook.norm(dim=-1), torch.ones(64), atol=1e-5)
    vq.save_pretrained(tmp_path)
    vq2 = VQTokenizer.from_pretrained(tmp_path).eval()
    assert torch.equal(vq2.encode(x).ids, batch.ids)
    assert torch.equal(vq2.decode(batch.ids), vq.decode(batch.ids))
    with pytest.raises(ValueError, match="images"):
        vq.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="images"):
        vq.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images"):
        vq.encode(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="ids"):
        vq.decode(torch.full((1, 256), 64))


def test_frechet_distance_matches_the_gaussian_formula():
    """FD(a, a) = 0; for equal covariances FD = ||mu_a - mu_b||^2; for N(0, I) vs N(0, 4I) in 8 dims the trace
    term gives 8 (1 + 4 - 2 * 2) = 8 (checked on 4000 samples)."""
    import numpy as np

    from mmgen.eval.metrics import frechet_distance

    r = np.random.default_rng(0)
    a = r.normal(size=(4000, 8))
    shift = np.full(8, 0.5)  # ||shift||^2 = 2
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, r.normal(size=(4000, 8)) + shift) - 2.0) < 0.1
    assert abs(frechet_distance(a, r.normal(size=(4000, 8)) * 2) - 8.0) < 0.5
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(a[:1], a)


@pytest.mark.parametrize("context", [0, 1])
def test_local_vq_encoder_sees_only_its_window(context):
    """With ``local_encoder`` a token's features depend on its (10 + 8 * context)-pixel window alone: pixels
    outside it change nothing, one pixel inside it changes the token (so equal patches get equal codes)."""
    torch.manual_seed(0)
    vq = VQTokenizer(channels=(8, 16), codebook_size=32, local_encoder=True, local_context=context).eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    r, c = 7, 9  # token row / column
    lo, hi = 4 * r - 3 - 4 * context, 4 * r + 6 + 4 * context  # window rows [lo, hi]: 4 pixels per 3x3 side
    clo, chi = 4 * c - 3 - 4 * context, 4 * c + 6 + 4 * context
    assert hi - lo + 1 == 10 + 8 * context
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[lo:hi + 1, clo:chi + 1] = False
    y = torch.where(outside, torch.rand(1, 3, 64, 64) * 2 - 1, x)
    with torch.no_grad():
        fx, fy = vq.encoder(x), vq.encoder(y)  # (1, D, 16, 16)
        assert torch.allclose(fx[..., r, c], fy[..., r, c], atol=1e-6)
        assert not torch.allclose(fx, fy, atol=1e-3)  # other tokens did change
        for py, px in ((lo, clo), (hi, chi)):  # the window's corners are inside it
            z = x.clone()
            z[..., py, px] = -z[..., py, px] + 0.5
            assert not torch.allclose(vq.encoder(z)[..., r, c], fx[..., r, c], atol=1e-7)


def test_local_context_needs_the_local_encoder():
    for kw in (dict(local_encoder=True, local_context=-1), dict(local_encoder=False, local_context=1)):
        with pytest.raises(ValueError, match="local_context"):
            VQTokenizer(channels=(8, 16), codebook_size=32, **kw)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        VQTokenizer(channels=(8, 16), codebook_size=32, dead_code_threshold=-1)
