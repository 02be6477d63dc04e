"""Train the offline judges on real data only and export them.

    python -m mmgen.train.train_judges --out assets/judges

SceneJudge: fresh real renders (jittered positions/sizes, plus light pixel noise and blur so
the judge tolerates tokenizer artefacts); DigitJudge: scikit-learn digits train split with
random shifts. Held-out accuracy is measured on scenes from an unseen seed and on the digits
test split, and written to ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import SceneDataset, load_digits_rgb, to_tensor
from ..eval.judges import DigitJudge, SceneJudge, attribute_matches
from ..records import command_line
from .common import atomic_dir, check_train_args, set_threads


def _augment(x: torch.Tensor, g: torch.Generator, shift: int) -> torch.Tensor:
    """Random translation by up to ``shift`` px, blur with prob. 0.3, gaussian noise (sigma <= 0.1)."""
    if shift:
        dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
        x = torch.roll(x, (dy, dx), (2, 3))
    if float(torch.rand((), generator=g)) < 0.3:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    sigma = 0.1 * float(torch.rand((), generator=g))
    return x + sigma * torch.randn(x.shape, generator=g)


def scene_accuracy(judge: SceneJudge, n: int = 1000, seed: int = 998) -> dict:
    imgs, specs = SceneDataset(n, seed=seed).arrays()
    m = attribute_matches(judge.predict(to_tensor(imgs)), specs)
    return {f"acc_{k}": round(float(v.mean()), 4) for k, v in m.items()}


def digit_accuracy(judge: DigitJudge) -> float:
    x, y = load_digits_rgb("test")
    return round(float((judge.predict(to_tensor(x)) == y).mean()), 4)


def train_scene_judge(steps: int, batch: int, seed: int) -> SceneJudge:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    judge = SceneJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    data = SceneDataset(10_000_000, seed=2)
    rng = np.random.default_rng(seed)
    for _ in tqdm(range(steps), desc="scene judge"):
        items = [data[int(i)] for i in rng.integers(len(data), size=batch)]
        x = _augment(to_tensor(np.stack([im for im, _ in items])), g, shift=0)
        labels = [s.labels() for _, s in items]
        out = judge(x)
        loss = F.cross_entropy(out["background"], torch.tensor(np.array([lab["background"] for lab in labels])))
        for k in ("shape", "color", "size"):
            tgt = torch.from_numpy(np.stack([lab[k] for lab in labels]))  # (B, slots), -100 = ignore
            loss = loss + F.cross_entropy(out[k].flatten(0, 1), tgt.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval()


def train_digit_judge(steps: int, batch: int, seed: int) -> DigitJudge:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = load_digits_rgb("train")
    x_all, y_all = to_tensor(x_all), torch.from_numpy(y_all)
    judge = DigitJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for _ in tqdm(range(steps), desc="digit judge"):
        idx = torch.randint(len(y_all), (batch,), generator=g)
        loss = F.cross_entropy(judge(_augment(x_all[idx], g, shift=2)), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets/judges")
    ap.add_argument("--scene-steps", type=int, default=1500)
    ap.add_argument("--digit-steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    check_train_args(args)
    set_threads(args.threads)
    t0 = time.time()
    digit = train_digit_judge(args.digit_steps, args.batch, args.seed)
    scene = train_scene_judge(args.scene_steps, args.batch, args.seed)
    metrics = {"scene_judge": scene_accuracy(scene), "digit_judge": {"acc": digit_accuracy(digit)},
               "train_seconds": round(time.time() - t0, 1),
               "scene_steps": args.scene_steps, "digit_steps": args.digit_steps, "batch": args.batch,
               "threads": torch.get_num_threads(),
               "command": command_line("python -m mmgen.train.train_judges", argv)}
    with atomic_dir(args.out) as out:  # both judges and their figures, or nothing
        scene.save_pretrained(out / "scene_judge")
        digit.save_pretrained(out / "digit_judge")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
