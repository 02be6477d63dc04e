"""Speculative decoding on the shipped models: AR vs SJD vs GSD vs LANTERN (self-draft and trained drafter).

    python benchmarks/bench_speculative.py --model scenes-t2i --n 100 --json docs/speculative_scenes.json
    python benchmarks/bench_speculative.py --model digits-c2i --n 100 --json docs/speculative_digits.json
    python benchmarks/bench_speculative.py --plot docs/speculative_scenes.json docs/speculative_digits.json \
        --out docs/speculative_tradeoff.png

Run time on one CPU thread: digits (64 tokens) ~6 min at n=100; scenes (256 tokens) ~1 min per
method at n=50, so ~20 min for all 19 methods (``--methods`` picks a subset; AR always runs).
The scenes drafter must exist first (``python -m mmgen.train.train_drafter --model assets/scenes-t2i
--out assets/scenes-t2i-drafter``), else the drafter rows are skipped.

Per method, on ``--n`` held-out prompts / labels (per-item seeds, the model's recommended sampling):

* **quality**: ``evaluate_scene_pipeline`` (prompt adherence, judge-FD) or ``evaluate_digit_pipeline``
  (class consistency, judge-FD) with the judges from ``load_judges()``;
* **NFE per image**: generator forward passes per row (prefill included) = number of commits of
  that row; **step compression** = tokens / NFE per image; the accepted-length histogram;
* **calibration** (lossless check on the real model): randomised probability-integral transform of
  every generated token under the teacher-forced CFG target, ``u = F(x-) + V p(x)`` (ids in a fixed
  order), KS distance and p-value vs U(0,1), and the log-prob z-score
  ``sum(log p(x) + H) / sqrt(sum Var[log p])`` (N(0,1) if exact);
* **wall clock** at batch 1 and 8 in the same run, methods interleaved, median per image, one
  thread, decoder time only (``stats.wall_time``: no text encoder / VQ decode); speed-up vs AR.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from mmgen.assets import model_path
from mmgen.cli import recommended
from mmgen.decoding import SamplingConfig, final_probs
from mmgen.eval.evaluate import evaluate_digit_pipeline, evaluate_scene_pipeline, load_judges, scene_prompts
from mmgen.models import Condition
from mmgen.pipelines import ARImagePipeline
from mmgen.pipelines.batch import atomic_write_bytes, atomic_write_json
from mmgen.train.common import set_threads
from mmgen.records import command_line


def methods(drafter: str | None, only=None):
    m = [("AR", "ar", {}),
         ("SJD", "sjd", {}),
         ("SJD above-init", "sjd", {"init": "above"}),
         ("GSD G=3", "gsd", {"group_size": 3}),
         ("GSD G=14 (code)", "gsd", {}),
         ("GSD G=25", "gsd", {"group_size": 25}),
         ("GSD G=14 above-init", "gsd", {"init": "above"}),
         ("GSD G=25 above-init", "gsd", {"group_size": 25, "init": "above"}),
         ("SJD L=32", "sjd", {"window": 32}),
         ("SJD above-init L=32", "sjd", {"init": "above", "window": 32}),
         ("GSD G=25 L=32", "gsd", {"group_size": 25, "window": 32}),
         ("GSD G=25 above-init L=32", "gsd", {"group_size": 25, "init": "above", "window": 32}),
         ("LANTERN self d=0.1", "lantern", {"delta": 0.1}),
         ("LANTERN self d=0.25", "lantern", {"delta": 0.25})]
    if drafter:
        m += [("Drafter chain (d=0, lossless)", "lantern", {"delta": 0.0, "drafter": drafter}),
              ("LANTERN drafter d=0.1", "lantern", {"delta": 0.1, "drafter": drafter}),
              ("LANTERN drafter d=0.25", "lantern", {"delta": 0.25, "drafter": drafter}),
              ("LANTERN++ drafter lam=3", "lantern", {"lam": 3.0, "delta": 0.0, "drafter": drafter})]
    if only:
        m = [x for x in m if x[0] == "AR" or any(o.lower() in x[0].lower() for o in only)]
    return m


class Recorder:
    """Wraps the pipeline for the evaluators and keeps every call's tokens and stats."""

    def __init__(self, pipe):
        self.pipe, self.tokens, self.stats = pipe, [], []

    def __call__(self, *a, **k):
        out = self.pipe(*a, **k)
        self.tokens.append(out.tokens)
        self.stats.append(out.stats)
        return out

    def __getattr__(self, name):
        return getattr(self.pipe, name)


@torch.no_grad()
def calibration(pipe, tokens, cond, guidance, sampling, seed=0):
    """Randomised PIT + log-prob z-score of tokens (n, N) under the exact teacher-forced target."""
    from scipy.stats import kstest

    gen = pipe.transformer
    us, lp, ent, var = [], [], [], []
    g = torch.Generator().manual_seed(seed)
    for s in range(0, len(tokens), 50):
        x = tokens[s:s + 50]
        c = Condition(**{k: (v[s:s + 50] if v is not None else None) for k, v in vars(cond).items()})
        lc = gen(x, c)
        if guidance != 1.0:
            lu = gen(x, gen.null_condition(c))
            lc = lu + guidance * (lc - lu)
        p = final_probs(lc, sampling).double()  # (b, N, V)
        px = p.gather(-1, x[..., None])[..., 0]
        below = p.cumsum(-1).gather(-1, x[..., None])[..., 0] - px  # F(x-) in id order
        us.append((below + torch.rand(px.shape, generator=g, dtype=torch.float64) * px).flatten())
        logp = p.clamp_min(1e-300).log()
        h = -(p * logp).sum(-1)
        lp.append(px.log().flatten()); ent.append(h.flatten())
        var.append(((p * logp ** 2).sum(-1) - h ** 2).flatten())
    u = torch.cat(us).clamp(0, 1).numpy()
    ks = kstest(u, "uniform")
    z = float((torch.cat(lp) + torch.cat(ent)).sum() / torch.cat(var).sum().sqrt())
    return {"pit_ks": round(float(ks.statistic), 4), "pit_p": float(f"{ks.pvalue:.3g}"), "logprob_z": round(z, 2),
            "mean_entropy_nats": round(float(torch.cat(ent).mean()), 3)}


def timing(pipe, specs, call, batches, repeats, guidance, sampling, prompts=4, seed=0):
    """Mean decoder seconds per image for each method at each batch size, over ``prompts`` different prompt
    groups (batch b: group j holds prompts j*b .. j*b + b - 1 of ``specs``; digits: classes shifted by j), each
    timed ``repeats`` times with the methods interleaved (median per group). The speed-up then reflects the mix
    of acceptance lengths over several prompts, not one prompt's."""
    gen = pipe.transformer
    res = {}
    for b in batches:
        per_group = {label: [] for label, _ in call}
        for j in range(prompts):
            if pipe.is_class_conditional:
                cond = pipe.encode_condition(class_labels=[(j + i) % 10 for i in range(b)])
            else:
                cond = pipe.encode_condition(prompt=[specs[(j * b + i) % len(specs)].caption() for i in range(b)])
            times = {label: [] for label, _ in call}
            for r in range(repeats):
                for label, dec in call:
                    state = gen.prefill(cond, guidance_scale=guidance, extra_slots=dec.extra_slots)
                    rng = [torch.Generator().manual_seed(seed + 100 * r + i) for i in range(b)]
                    t = time.perf_counter()
                    dec.decode(gen, state, sampling, rng)
                    times[label].append((time.perf_counter() - t) / b)
            for label in times:
                per_group[label].append(statistics.median(times[label]))
        res[b] = {k: statistics.fmean(v) for k, v in per_group.items()}
    return res


def run(args):
    threads = set_threads(args.threads)
    root = model_path(args.model)
    pipe = ARImagePipeline.from_pretrained(root)
    pipe.set_progress_bar_config(disable=True)
    rec = recommended(root)
    guidance = args.guidance if args.guidance is not None else rec["guidance_scale"]
    samp = dict(temperature=rec["temperature"], top_k=rec.get("top_k", 0), top_p=rec.get("top_p", 1.0))
    if args.top_k is not None:
        samp["top_k"] = args.top_k
    if args.temperature is not None:
        samp["temperature"] = args.temperature
    sampling = SamplingConfig(**samp)
    drafter = args.drafter or (str(root) + "-drafter" if Path(str(root) + "-drafter").is_dir() else None)
    if drafter == "none":
        drafter = None
    scene_judge, digit_judge = load_judges()
    specs = scene_prompts(max(args.n, 8))
    n_tok = pipe.transformer.num_tokens
    rows = []
    from mmgen.decoding import get_decoder

    for label, name, opts in methods(drafter, args.methods):
        dec = get_decoder(name, **opts)
        dec.prepare(pipe.vq)
        recp = Recorder(pipe)
        kw = dict(decoding=dec, guidance_scale=guidance, **samp)
        if pipe.is_class_conditional:
            q, _ = evaluate_digit_pipeline(recp, digit_judge, n_per_class=max(1, args.n // 10), batch=args.eval_batch, **kw)
            labels = torch.as_tensor(np.repeat(np.arange(10), max(1, args.n // 10)))
            cond = Condition(class_labels=labels)
        else:
            q, _ = evaluate_scene_pipeline(recp, scene_judge, n=args.n, batch=args.eval_batch, **kw)
            cond = pipe.encode_condition(prompt=[s.caption() for s in specs[:args.n]])
        tokens = torch.cat(recp.tokens)
        acc = [a for s in recp.stats for a in s.accepted_lengths]
        nfe_per_image = len(acc) / len(tokens)  # commits per row == generator forwards that row needed
        hist = {}
        for a in acc:
            hist[a] = hist.get(a, 0) + 1
        row = {"method": label, "decoding": name, "options": {k: v for k, v in opts.items() if k != "drafter"},
               "drafter": "drafter" in opts, "nfe_per_image": round(nfe_per_image, 2),
               "step_compression": round(n_tok / nfe_per_image, 3), "mean_accepted_length": round(float(np.mean(acc)), 3),
               "accepted_length_histogram": dict(sorted(hist.items())),
               **{k: q[k] for k in ("prompt_adherence", "class_consistency", "judge_fd", "judge_fd_real_vs_real")
                  if k in q},
               **calibration(pipe, tokens, cond, guidance, sampling)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    decs = []
    for label, name, opts in methods(drafter, args.methods):
        d = get_decoder(name, **opts)
        d.prepare(pipe.vq)
        decs.append((label, d))
    t = timing(pipe, specs, decs, args.batches, args.repeats, guidance, sampling, prompts=args.timing_prompts)
    for row in rows:
        for b, med in t.items():
            row[f"sec_per_image_b{b}"] = round(med[row["method"]], 4)
            row[f"speedup_b{b}"] = round(med["AR"] / med[row["method"]], 2)
    meta = {"model": args.model, "n": args.n, "tokens_per_image": n_tok, "guidance_scale": guidance,
            "sampling": samp, "threads": threads, "torch": torch.__version__, "date": str(date.today()),
            "machine": f"{platform.machine()} CPU", "timing_repeats": args.repeats, "timing_batches": args.batches,
            "timing_prompts": args.timing_prompts,
            "drafter": drafter, "command": command_line("python benchmarks/bench_speculative.py", args.argv)}
    print(json.dumps(meta))
    table(rows, args.batches)
    if args.json:
        atomic_write_json(args.json, {"meta": meta, "rows": rows})


def table(rows, batches):
    qk = "prompt_adherence" if "prompt_adherence" in rows[0] else "class_consistency"
    head = ["method", "NFE/img", "compression", qk, "judge_fd", "PIT KS (p)", "logp z"] + \
        [f"speedup b{b}" for b in batches]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["method"], r["nfe_per_image"], f"{r['step_compression']:.2f}x", r[qk], r["judge_fd"],
                 f"{r['pit_ks']} ({r['pit_p']:.2g})", r["logprob_z"]] + \
            [f"{r.get(f'speedup_b{b}', float('nan')):.2f}x" for b in batches]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def plot(files, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(files), figsize=(9 * len(files), 5.5), squeeze=False)
    colors = {"ar": "k", "sjd": "tab:blue", "gsd": "tab:orange", "lantern": "tab:green"}
    for ax, f in zip(axes[0], files):
        data = json.loads(Path(f).read_text())
        rows, meta = data["rows"], data["meta"]
        qk = "prompt_adherence" if "prompt_adherence" in rows[0] else "class_consistency"
        for i, r in enumerate(rows):
            mk = "s" if r["drafter"] else "o"
            sp = r.get("speedup_b1")
            lab = f"{i}: {r['method']}" + (f" ({sp:.2f}x wall b1)" if sp is not None else "")
            ax.scatter(r["step_compression"], r[qk], c=colors[r["decoding"]], marker=mk, s=60, label=lab)
            ax.annotate(str(i), (r["step_compression"], r[qk]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("step compression (tokens per generator forward, per image)")
        ax.set_ylabel(qk.replace("_", " "))
        ax.set_title(f"{meta['model']}: n={meta['n']}, CFG {meta['guidance_scale']}; "
                     "circles self-draft, squares trained drafter", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(Path(out), buf.getvalue())  # never a half-written figure over the old one
    print(f"wrote {out}")


def main(argv=None):
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="scenes-t2i")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eval-batch", type=int, default=50)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timing-prompts", type=int, default=4,
                    help="prompt groups the timing averages over (each timed --repeats times)")
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--temperature", type=float, default=None, help="default: the model's recommended.json")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--drafter", default=None, help="default: <model folder>-drafter if it exists; 'none' skips the drafter rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=None, help="substrings of method labels to run (AR always)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", nargs="+", default=None, help="only plot these result JSONs")
    ap.add_argument("--out", default="docs/speculative_tradeoff.png")
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.timing_prompts < 1 or args.repeats < 1:
        raise ValueError(f"--timing-prompts and --repeats must be >= 1, got {args.timing_prompts}, {args.repeats}")
    if args.n < 1 or args.eval_batch < 1 or min(args.batches) < 1:
        raise ValueError(f"--n, --eval-batch and --batches must be >= 1, got {args.n}, {args.eval_batch}, "
                         f"{args.batches}")
    if args.plot:
        plot(args.plot, args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
