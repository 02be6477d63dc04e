"""Judge the shipped generators and record their figures.

    python scripts/evaluate.py [--n 200] [--cfg-grid 1.5 2 3 4] [--temperature-grid 1.0] [--threads 1]
                               [--models scenes-t2i-hita ...]

1. Picks the guidance scale (and, with several ``--temperature-grid`` values, the sampling
   temperature) jointly on a *validation* prompt set (seed 990 / class seeds 10_000+), never on the
   reported set, and stores them in ``<model>/recommended.json``.
2. Reports prompt adherence (scenes, >= 200 held-out prompts, seed 997) or class consistency
   (digits) plus judge-FD and the real-vs-real FD floor, in ``<model>/eval.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmgen.assets import model_path  # noqa: E402
from mmgen.data import SceneDataset  # noqa: E402
from mmgen.decoding.sampling import check_guidance, check_temperature  # noqa: E402
from mmgen.eval.evaluate import (  # noqa: E402
    evaluate_digit_pipeline,
    evaluate_scene_pipeline,
    generate,
    load_judges,
    tokenizer_ceiling,
)
from mmgen.eval.judges import attribute_matches  # noqa: E402
from mmgen.data import to_tensor  # noqa: E402
from mmgen.pipelines import ARImagePipeline  # noqa: E402
from mmgen.pipelines.batch import atomic_write_json  # noqa: E402
from mmgen.train.common import set_threads  # noqa: E402
from mmgen.records import command_line  # noqa: E402


def pick_cfg_scenes(pipe, judge, grid, temps=(1.0,), n=60):
    """-> ((cfg, temperature) with the best validation adherence, {(cfg, temperature): score})."""
    ds = SceneDataset(n, seed=990)
    specs = [ds.spec(i) for i in range(n)]
    scores = {}
    for t in temps:
        for s in grid:
            imgs, _ = generate(pipe, n, 60, seed=50_000, prompts=[x.caption() for x in specs], guidance_scale=s,
                               temperature=t)
            scores[(s, t)] = float(attribute_matches(judge.predict(to_tensor(imgs)), specs)["all"].mean())
    return max(scores, key=scores.get), scores


def pick_cfg_digits(pipe, judge, grid, temps=(1.0,), per_class=6):
    """-> ((cfg, temperature) with the best validation class consistency, {(cfg, temperature): score})."""
    import numpy as np

    labels = np.repeat(np.arange(10), per_class)
    scores = {}
    for t in temps:
        for s in grid:
            imgs, _ = generate(pipe, len(labels), 60, seed=50_000, labels=labels.tolist(), guidance_scale=s,
                               temperature=t)
            scores[(s, t)] = float((judge.predict(to_tensor(imgs)) == labels).mean())
    return max(scores, key=scores.get), scores


def _key(cfg: float, temperature: float, temps) -> str:
    """validation_scores key: the cfg alone when only one temperature was tried (older eval.json files)."""
    return str(cfg) if len(temps) == 1 else f"cfg={cfg},temperature={temperature}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--cfg-grid", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0])
    ap.add_argument("--temperature-grid", type=float, nargs="+", default=[1.0],
                    help="sampling temperatures tried jointly with --cfg-grid on the validation set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", "--only", nargs="+", default=["scenes-t2i", "digits-c2i"],
                    help="shipped pipeline names or folders (text-to-image scenes or class-to-image digits)")
    args = ap.parse_args(argv)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    for c in args.cfg_grid:  # the pipeline's own ranges, checked before any model is loaded
        check_guidance(c, "--cfg-grid values")
    for t in args.temperature_grid:
        check_temperature(t, name="--temperature-grid values")
    temps = list(dict.fromkeys(args.temperature_grid))
    threads = set_threads(args.threads)
    scene_judge, digit_judge = load_judges()
    for name in args.models:
        folder = model_path(name)
        pipe = ARImagePipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        t0 = time.time()
        scenes = not pipe.transformer.is_class_conditional
        if scenes:
            (cfg, temp), scores = pick_cfg_scenes(pipe, scene_judge, args.cfg_grid, temps)
            res, _ = evaluate_scene_pipeline(pipe, scene_judge, n=args.n, guidance_scale=cfg, temperature=temp)
        else:
            (cfg, temp), scores = pick_cfg_digits(pipe, digit_judge, args.cfg_grid, temps)
            res, _ = evaluate_digit_pipeline(pipe, digit_judge, n_per_class=max(1, args.n // 10), guidance_scale=cfg,
                                             temperature=temp)
        res.update(tokenizer_ceiling(pipe.vq, scene_judge if scenes else None, None if scenes else digit_judge))
        res.update(guidance_scale=cfg, temperature=temp,
                   validation_scores={_key(*k, temps): round(v, 4) for k, v in scores.items()},
                   decoding=pipe.transformer.native_decoding, threads=threads, date=str(date.today()),
                   eval_seconds=round(time.time() - t0, 1),
                   tokenizer=type(pipe.vq).__name__, command=command_line("python scripts/evaluate.py",
                       ["--cfg-grid", *map(str, args.cfg_grid)]
                       + (["--temperature-grid", *map(str, temps)] if len(temps) > 1 else []) + ["--models", name]))
        # both files written only once every figure is in, eval.json first: a run that fails part-way
        # leaves the pair as it was; atomic, since the CLI and the app read recommended.json
        atomic_write_json(folder / "eval.json", res)
        atomic_write_json(folder / "recommended.json", {"guidance_scale": cfg, "temperature": temp})
        print(name, json.dumps(res))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
