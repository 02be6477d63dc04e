"""Floors on the shipped tokenizer family (assets/scenes-t2i-{seed,tokenflow,hita}/vq, assets/tok-onedpiece)
and the text-to-image generators trained on their tokens. Floors sit about 1 dB / 0.1 under the measured
figures in docs/BENCHMARKS.md (measured on 256 held-out images; these tests use fewer)."""

import json

import pytest
import torch

from mmgen.assets import assets_dir
from mmgen.data import SceneDataset, photo_crops, to_tensor
from mmgen.eval.metrics import psnr
from mmgen.tokenizers_visual import load_tokenizer


def _tok(path):
    return load_tokenizer(assets_dir() / path).eval()


@pytest.fixture(scope="module")
def scenes():
    imgs, specs = SceneDataset(96, seed=999).arrays()
    return to_tensor(imgs), [s.caption() for s in specs]


def _psnr(tok, x, **kw):
    kw.update(tok.decode_kwargs(torch.Generator().manual_seed(0)))  # SEED's renderer samples: seeded
    with torch.no_grad():
        return psnr(tok.decode(tok.encode(x).ids, **kw).clamp(-1, 1), x)


# measured on 256 held-out scenes (docs/BENCHMARKS.md): SEED 18.18 (sampled by its renderer; 18.47 on these 96),
# TokenFlow 28.74, Hita 28.94 dB (6000 steps; the 3000-step Hita tokenizer, 27.47 dB, fails its floor)
@pytest.mark.parametrize("path,floor", [("scenes-t2i-seed/vq", 17.5), ("scenes-t2i-tokenflow/vq", 27.5),
                                        ("scenes-t2i-hita/vq", 28.0)])
def test_reconstruction_floor_on_held_out_scenes(scenes, path, floor):
    assert _psnr(_tok(path), scenes[0]) >= floor


@pytest.mark.parametrize("path,floor", [("scenes-t2i-seed/vq", 0.8), ("scenes-t2i-tokenflow/vq", 0.8)])
def test_semantic_tokens_retrieve_their_caption(scenes, path, floor):
    """Caption -> image top-1 among 96 held-out scenes (chance ~1%): SEED's causal tokens and TokenFlow's
    semantic codebook carry the caption (measured on 128: SEED 0.89, TokenFlow 0.93; on these 96 SEED 0.95; the
    previous SEED, 0.66 on 128, fails)."""
    tok = _tok(path)
    x, caps = scenes
    sim = tok.embed_captions(caps) @ tok.embed_images(x).T
    assert (sim.argmax(1) == torch.arange(len(caps))).float().mean() >= floor


def test_onedpiece_quality_grows_with_length():
    """PSNR of decode(ids, length=k) on 48 held-out scenes + 48 photo crops, every k in 1..32: it never falls
    by more than 0.15 dB below the best shorter prefix (measured worst -0.06 dB) and rises by 6.93 dB from 1 to
    32 tokens (17.89 -> 24.82 dB). The session-17 checkpoint (18.15 dB flat, background only) fails this."""
    tok = _tok("tok-onedpiece")
    x = torch.cat([to_tensor(SceneDataset(48, seed=999).arrays()[0]), to_tensor(photo_crops(48, seed=123))])
    with torch.no_grad():
        ids = tok.encode(x).ids
        curve = [psnr(tok.decode(ids, length=k).clamp(-1, 1), x) for k in range(1, tok.config.num_latent_tokens + 1)]
    assert all(b >= max(curve[:i + 1]) - 0.15 for i, b in enumerate(curve[1:])), curve
    assert curve[-1] - curve[0] >= 5.9 and curve[-1] >= 23.8, curve


def test_onedpiece_prefixes_draw_more_of_the_scene():
    """The scene judge on 96 held-out scenes (seed 997) decoded from 1, 8 and 32 tokens: adherence measured
    0.021 / 0.25 / 0.406 (shape 0.021 / 0.375 / 0.469): the first tokens give the background, later ones the
    shapes, colours and sizes."""
    from mmgen.eval.evaluate import load_judges
    from mmgen.eval.judges import attribute_matches

    tok = _tok("tok-onedpiece")
    imgs, specs = SceneDataset(96, seed=997).arrays()
    judge = load_judges()[0]
    with torch.no_grad():
        ids = tok.encode(to_tensor(imgs)).ids
        rate = {k: attribute_matches(judge.predict(tok.decode(ids, length=k).clamp(-1, 1)), specs)
                for k in (1, 8, 32)}
    assert rate[1]["background"].mean() >= 0.95
    assert rate[8]["all"].mean() - rate[1]["all"].mean() >= 0.13
    assert rate[32]["all"].mean() >= 0.3 and rate[32]["shape"].mean() >= 0.37


@pytest.mark.parametrize("name", ["scenes-t2i-seed", "scenes-t2i-tokenflow", "scenes-t2i-hita", "scenes-t2i-onedpiece"])
def test_generators_on_family_tokens_generate(name):
    from mmgen.pipelines import ARImagePipeline

    folder = assets_dir() / name
    pipe = ARImagePipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    cfg = json.loads((folder / "recommended.json").read_text())["guidance_scale"]
    out = pipe(["a large red square in the center, white background"] * 2, guidance_scale=cfg,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 64, 64, 3) and out.tokens.shape[1] == pipe.vq.layout_for(64).num_tokens
    assert out.stats.forward_passes == out.tokens.shape[1]
