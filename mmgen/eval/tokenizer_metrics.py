"""Reconstruction figures for any visual tokenizer: PSNR / SSIM on held-out scenes and photo crops,
codebook usage, tokens and bits per image, encode/decode time, and the judge's prompt adherence on
reconstructed scenes (the ceiling a generator on these tokens can reach)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from skimage.metrics import structural_similarity

from ..data import SceneDataset, photo_crops, to_tensor
from .metrics import psnr


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean SSIM of two image batches (B, 3, H, W) in [-1, 1] (skimage, data range 1, per channel)."""
    a = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    b = ((y.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return float(np.mean([structural_similarity(p, q, channel_axis=-1, data_range=1.0) for p, q in zip(a, b)]))


def held_out(n: int = 256) -> dict[str, torch.Tensor]:
    """Held-out images no tokenizer trains on: scenes (seed 999) and photo crops (seed 123), (n, 3, 64, 64)."""
    return {"scenes": to_tensor(SceneDataset(n, seed=999).arrays()[0]), "photos": to_tensor(photo_crops(n, seed=123))}


@torch.no_grad()
def tokenizer_report(tok, n: int = 256, judge=None, batch: int = 64) -> dict:
    """Figures for the BENCHMARKS table. ``judge``: a SceneJudge for the adherence ceiling."""
    tok.eval()
    out: dict = {"name": type(tok).__name__, "tokens_per_image": tok.layout_for(64).num_tokens}
    out["bits_per_image"] = round(out["tokens_per_image"] * math.log2(tok.vocab_size) if not hasattr(tok, "bits_per_image")
                                  else tok.bits_per_image, 1)
    used = torch.zeros(tok.vocab_size, dtype=torch.bool)
    for name, x in held_out(n).items():
        t0 = time.perf_counter()
        ids = torch.cat([tok.encode(x[i:i + batch]).ids for i in range(0, n, batch)])
        t1 = time.perf_counter()
        kw = tok.decode_kwargs(torch.Generator().manual_seed(0))  # a sampling decoder: seeded
        rec = torch.cat([tok.decode(ids[i:i + batch], **kw) for i in range(0, n, batch)]).clamp(-1, 1)
        t2 = time.perf_counter()
        used[ids.flatten()] = True
        out[f"psnr_{name}"] = round(psnr(rec, x), 2)
        out[f"ssim_{name}"] = round(ssim(rec, x), 3)
        if name == "scenes":
            out["encode_ms_per_image"] = round(1000 * (t1 - t0) / n, 2)
            out["decode_ms_per_image"] = round(1000 * (t2 - t1) / n, 2)
    out["codebook_usage"] = round(float(used.float().mean()), 4)
    if judge is not None:  # the judge on reconstructed held-out scenes: all attributes, then each one
        from .evaluate import scene_reconstruction_matches
        m = scene_reconstruction_matches(tok, judge, 300, batch)
        out["scenes_adherence_after_vq"] = round(float(m["all"].mean()), 4)
        out.update({f"recon_match_{k}": round(float(v.mean()), 4) for k, v in m.items() if k != "all"})
    return out


def prefix_lengths(k: int) -> list[int]:
    """The prefix lengths a One-D-Piece curve is measured at: the powers of two up to ``k`` tokens."""
    return [2 ** i for i in range(k.bit_length())]


@torch.no_grad()
def prefix_curve(tok, lengths: list[int], n: int = 256) -> dict[str, dict[int, float]]:
    """One-D-Piece: PSNR (dB) of ``decode(ids, length=k)`` for each k, on held-out scenes and photos."""
    tok.eval()
    out = {}
    for name, x in held_out(n).items():
        ids = tok.encode(x).ids
        out[name] = {k: round(psnr(tok.decode(ids, length=k).clamp(-1, 1), x), 2) for k in lengths}
    return out


@torch.no_grad()
def prefix_adherence(tok, judge, lengths: list[int], n: int = 300) -> dict[str, dict[int, float]]:
    """One-D-Piece: the scene judge on ``decode(ids, length=k)`` of ``n`` held-out scenes (seed 997), for
    each k: prompt adherence (``"all"``) and each attribute's match rate."""
    from .judges import attribute_matches

    tok.eval()
    imgs, specs = SceneDataset(n, seed=997).arrays()
    ids = tok.encode(to_tensor(imgs)).ids
    out: dict[str, dict[int, float]] = {}
    for k in lengths:
        m = attribute_matches(judge.predict(tok.decode(ids, length=k).clamp(-1, 1)), specs)
        for attr, v in m.items():
            out.setdefault(attr, {})[k] = round(float(v.mean()), 4)
    return out
