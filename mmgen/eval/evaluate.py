"""Judge generated images: prompt adherence (scenes), class consistency (digits), judge-FD.

The judges never saw generated images. judge-FD is reported next to the FD between two
disjoint real sets (the floor that sampling noise alone produces): for scenes both real sets have the
generated set's size n; for digits they are the two halves of the 360-image test split (180 each),
while the generated set has 10 x n_per_class images, so that floor is only comparable for n near 180.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..data import SceneDataset, load_digits_rgb, to_tensor
from ..data.scenes import SceneSpec
from .judges import DigitJudge, SceneJudge, attribute_matches
from .metrics import frechet_distance

DEFAULT_JUDGES = Path(__file__).resolve().parents[2] / "assets" / "judges"


def load_judges(folder: str | Path = DEFAULT_JUDGES) -> tuple[SceneJudge, DigitJudge]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"judges folder {str(folder)!r} does not exist")
    return SceneJudge.from_pretrained(folder / "scene_judge").eval(), DigitJudge.from_pretrained(folder / "digit_judge").eval()


@torch.no_grad()
def _features(judge, images: np.ndarray, batch: int = 256) -> np.ndarray:
    judge.eval()
    return np.concatenate([judge.features(to_tensor(images[i:i + batch])).numpy() for i in range(0, len(images), batch)])


def scene_prompts(n: int, seed: int = 997) -> list[SceneSpec]:
    """Held-out evaluation prompts (a seed no model trained on)."""
    ds = SceneDataset(n, seed=seed)
    return [ds.spec(i) for i in range(n)]


def generate(pipe, n: int, batch: int, seed: int, prompts=None, labels=None, **call_kwargs):
    """Generate ``n`` images (uint8 (n, H, W, 3)); item i uses ``torch.Generator().manual_seed(seed + i)``."""
    images, stats = [], []
    for s in range(0, n, batch):
        e = min(n, s + batch)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(s, e)]
        kw = dict(prompt=prompts[s:e]) if prompts is not None else dict(class_labels=labels[s:e])
        out = pipe(**kw, generator=gens, output_type="np", **call_kwargs)
        images.append((out.images * 255).round().astype(np.uint8))
        stats.append(out.stats)
    return np.concatenate(images), stats


def summarize_stats(stats: list) -> dict:
    fwd = sum(s.forward_passes for s in stats)
    return {"forward_passes_per_batch": fwd / len(stats), "tokens_per_forward": stats[0].tokens * len(stats) / fwd,
            "wall_time": round(sum(s.wall_time for s in stats), 3)}


def evaluate_scene_pipeline(pipe, judge: SceneJudge, n: int = 200, batch: int = 50, seed: int = 0,
                            **call_kwargs) -> dict:
    specs = scene_prompts(n)
    t0 = time.perf_counter()
    images, stats = generate(pipe, n, batch, seed, prompts=[s.caption() for s in specs], **call_kwargs)
    elapsed = time.perf_counter() - t0
    m = attribute_matches(judge.predict(to_tensor(images)), specs)
    real_a = SceneDataset(n, seed=996).arrays()[0]
    real_b = np.stack([SceneDataset(n, seed=995)[i][0] for i in range(n)])
    fa, fb, fg = _features(judge, real_a), _features(judge, real_b), _features(judge, images)
    return {"n": n, "prompt_adherence": round(float(m["all"].mean()), 4),
            **{f"match_{k}": round(float(v.mean()), 4) for k, v in m.items() if k != "all"},
            "judge_fd": round(frechet_distance(fa, fg), 3), "judge_fd_real_vs_real": round(frechet_distance(fa, fb), 3),
            "seconds": round(elapsed, 2), **summarize_stats(stats)}, images


def evaluate_digit_pipeline(pipe, judge: DigitJudge, n_per_class: int = 30, batch: int = 100, seed: int = 0,
                            **call_kwargs) -> dict:
    labels = np.repeat(np.arange(10), n_per_class)
    t0 = time.perf_counter()
    images, stats = generate(pipe, len(labels), batch, seed, labels=labels.tolist(), **call_kwargs)
    elapsed = time.perf_counter() - t0
    pred = judge.predict(to_tensor(images))
    real, _ = load_digits_rgb("test")
    half = len(real) // 2
    fr, fr2, fg = _features(judge, real[:half]), _features(judge, real[half:]), _features(judge, images)
    return {"n": len(labels), "class_consistency": round(float((pred == labels).mean()), 4),
            "judge_fd": round(frechet_distance(fr, fg), 3), "judge_fd_real_vs_real": round(frechet_distance(fr, fr2), 3),
            "seconds": round(elapsed, 2), **summarize_stats(stats)}, images


@torch.no_grad()
def scene_reconstruction_matches(tok, judge: SceneJudge, n: int = 300, batch: int | None = None) -> dict:
    """Judge ``n`` held-out real scenes (seed 997) after a tokenizer round trip: attribute_matches
    (per-attribute and ``"all"`` boolean arrays). ``batch``: encode/decode in chunks (None = at once); a sampling
    decoder (SEED's renderer) draws from a generator seeded 0."""
    imgs, specs = SceneDataset(n, seed=997).arrays()
    x = to_tensor(imgs)
    step = batch or len(x)
    kw = tok.decode_kwargs(torch.Generator().manual_seed(0))
    rec = torch.cat([tok.decode(tok.encode(x[i:i + step]).ids, **kw) for i in range(0, len(x), step)]).clamp(-1, 1)
    return attribute_matches(judge.predict(rec), specs)


@torch.no_grad()
def tokenizer_ceiling(vq, scene_judge: SceneJudge | None = None, digit_judge: DigitJudge | None = None,
                      n: int = 300) -> dict:
    """Judge real held-out images after a tokenizer round trip: the best a generator on these tokens
    can score (prompt adherence of reconstructed scenes; class consistency of reconstructed digits)."""
    out = {}
    if scene_judge is not None:
        out["scenes_adherence_after_vq"] = round(float(scene_reconstruction_matches(vq, scene_judge, n)["all"].mean()), 4)
    if digit_judge is not None:
        x, y = load_digits_rgb("test")
        rec = vq.decode(vq.encode(to_tensor(x)).ids, **vq.decode_kwargs(torch.Generator().manual_seed(0))).clamp(-1, 1)
        out["digits_consistency_after_vq"] = round(float((digit_judge.predict(rec) == y).mean()), 4)
    return out
