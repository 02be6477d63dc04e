"""Parallel prediction vs AR: NAR (next-neighbour) and NBP (next-block) generators against the raster
AR generator of the same size, side by side in one run.

    python benchmarks/bench_parallel.py --task digits --n-per-class 20 --repeats 3 --threads 1
    python benchmarks/bench_parallel.py --task scenes --n-prompts 200 --repeats 5 --temperature 0.4 --device cuda

Reports forward passes per image, wall-clock speed-up over AR at batch 1 and 8 (interleaved
repeats, median), and judged quality (class consistency / prompt adherence, judge-FD). ``--device cuda``
runs every pipeline on the GPU; its clock waits for the queued kernels (``device_clock``), and the
sampling draws stay on the CPU generator, so the tokens are those of a CPU run up to float rounding.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date

import torch

from mmgen.assets import model_path
from mmgen.decoding.base import device_clock
from mmgen.eval.evaluate import evaluate_digit_pipeline, evaluate_scene_pipeline, load_judges
from mmgen.pipelines import ARImagePipeline
from mmgen.pipelines.batch import atomic_write_json
from mmgen.train.common import set_threads
from mmgen.records import command_line


def _load(name, device: str = "cpu"):
    pipe = ARImagePipeline.from_pretrained(model_path(name)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_device(device: str) -> torch.device:
    """``--device``: cpu, or cuda[:N] where CUDA is available -> torch.device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device must be cpu or cuda[:N], got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {device!r}")
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {device!r}: CUDA device not available here (devices: "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 0})")
    return dev


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["digits", "scenes"], default="digits")
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--n-prompts", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for every method")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the quality runs and the main timing")
    ap.add_argument("--time-threads", type=int, nargs="+", default=None,
                    help="also time at these thread counts (keys speedup_b{b}_t{n}); the box must be idle")
    ap.add_argument("--extra-models", nargs="+", default=[], metavar="FOLDER",
                    help="more generators (shipped names or folders, e.g. an NBP with half-row blocks) judged and timed "
                         "in the same interleaved run, each with its own decoding; keyed by folder name")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where every pipeline runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = check_device(args.device)
    if any(t < 1 for t in args.time_threads or []):
        raise ValueError(f"time-threads must be >= 1, got {args.time_threads}")
    if args.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {args.temperature}")
    threads = set_threads(args.threads)
    base = "digits-c2i" if args.task == "digits" else "scenes-t2i"
    methods = {"ar": _load(base, device), "nar": _load(f"{base}-nar", device), "nbp": _load(f"{base}-nbp", device)}
    for folder in args.extra_models:
        key = model_path(folder).name
        if key in methods:
            raise ValueError(f"--extra-models: {folder!r} is named like a model already in the run ({sorted(methods)})")
        methods[key] = _load(folder, device)
    scene_judge, digit_judge = load_judges()
    rows = {}
    for name, pipe in methods.items():  # no decoding= anywhere: each pipeline runs its generator's own order
        if args.task == "digits":
            res, _ = evaluate_digit_pipeline(pipe, digit_judge, n_per_class=args.n_per_class,
                                             guidance_scale=args.cfg, temperature=args.temperature)
        else:
            res, _ = evaluate_scene_pipeline(pipe, scene_judge, n=args.n_prompts,
                                             guidance_scale=args.cfg, temperature=args.temperature)
        rows[name] = {k: res[k] for k in res if k in ("class_consistency", "prompt_adherence", "judge_fd",
                                                       "judge_fd_real_vs_real", "n")}
        rows[name]["decoding"] = pipe.transformer.native_decoding
    extra = list(dict.fromkeys(t for t in (args.time_threads or []) if t != threads))
    try:
        _time_methods(methods, rows, args, threads, extra)
    finally:
        set_threads(threads)
    meta = {"task": args.task, "cfg": args.cfg, "temperature": args.temperature, "threads": threads,
            "time_threads": [threads] + extra, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "date": str(date.today()), "torch": torch.__version__, "repeats": args.repeats,
            "command": command_line("python benchmarks/bench_parallel.py", argv)}
    print(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.json:
        atomic_write_json(args.json, {"meta": meta, "rows": rows})


def _time_methods(methods: dict, rows: dict, args, threads: int, extra: list) -> None:
    """Interleaved timing of every method at batch 1 and 8, at ``threads`` and then each of ``extra``, on the
    pipelines' device (``device_clock`` waits for CUDA's queued kernels before each reading)."""
    device = next(iter(methods.values())).device
    for n_threads in [threads] + extra:
        set_threads(n_threads)
        suffix = "" if n_threads == threads else f"_t{n_threads}"
        for b in (1, 8):
            kw = (dict(class_labels=[i % 10 for i in range(b)]) if args.task == "digits"
                  else dict(prompt=["a large green square in the center, white background"] * b))
            for pipe in methods.values():  # untimed warm-up at this thread count and batch
                pipe(**kw, generator=torch.Generator().manual_seed(0), guidance_scale=args.cfg,
                     temperature=args.temperature, output_type="latent")
            times = {k: [] for k in methods}
            fwd = {}
            for _ in range(args.repeats):  # interleaved: the same noise hits every method
                for name, pipe in methods.items():
                    t = device_clock(device)
                    out = pipe(**kw, generator=torch.Generator().manual_seed(0), guidance_scale=args.cfg,
                               temperature=args.temperature, output_type="latent")
                    times[name].append(device_clock(device) - t)
                    fwd[name] = out.stats.forward_passes
            for name in methods:
                rows[name][f"forward_passes_b{b}"] = fwd[name]
                rows[name][f"speedup_b{b}{suffix}"] = round(statistics.median(times["ar"])
                                                            / statistics.median(times[name]), 2)
                rows[name][f"sec_per_batch_b{b}{suffix}"] = round(statistics.median(times[name]), 4)


if __name__ == "__main__":
    main()
