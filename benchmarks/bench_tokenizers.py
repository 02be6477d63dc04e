"""Tokenizer family side by side: tokens and bits per image, reconstruction PSNR/SSIM on held-out
scenes and photo crops, codebook usage, encode/decode time, the judge's adherence on reconstructed
scenes, and (where a generator was trained on the tokens) prompt adherence and judge-FD from the
pipeline's eval.json (scripts/evaluate.py). Also draws One-D-Piece's PSNR-vs-length curve.

    python benchmarks/bench_tokenizers.py --threads 1 [--out docs/tokenizers.json] [--plot docs/onedpiece_psnr_vs_length.png]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmgen.assets import assets_dir  # noqa: E402
from mmgen.eval.evaluate import load_judges  # noqa: E402
from mmgen.eval.tokenizer_metrics import (prefix_adherence, prefix_curve, prefix_lengths,  # noqa: E402
                                          tokenizer_report)
from mmgen.pipelines.batch import atomic_write_bytes, atomic_write_json  # noqa: E402
from mmgen.tokenizers_visual import load_tokenizer  # noqa: E402
from mmgen.train.common import set_threads  # noqa: E402
from mmgen.records import command_line  # noqa: E402

# (row name, tokenizer folder, text-to-image pipeline folder or None), relative to assets/
ROWS = [("VQ (LlamaGen)", "vq", None), ("VQ, patch-local encoder", "vq-local", "scenes-t2i"),
        ("SEED", "scenes-t2i-seed/vq", "scenes-t2i-seed"),
        ("TokenFlow", "scenes-t2i-tokenflow/vq", "scenes-t2i-tokenflow"), ("Hita", "scenes-t2i-hita/vq", "scenes-t2i-hita"),
        ("One-D-Piece", "tok-onedpiece", "scenes-t2i-onedpiece")]
FOLDERS = [r[1] for r in ROWS]


def plot_curve(psnr_curve: dict, judge_curve: dict, path: Path) -> None:
    """Two panels against the prefix length: PSNR on held-out scenes / photos, and the scene judge on the
    reconstructed scenes (prompt adherence and the shape match rate)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for name, pts in psnr_curve.items():
        ks = sorted(int(k) for k in pts)
        ax.plot(ks, [pts[k] for k in ks], marker="o", label=f"held-out {name}")
    for name, label in (("all", "adherence (all attributes)"), ("shape", "shape matches")):
        pts = judge_curve[name]
        ks = sorted(int(k) for k in pts)
        bx.plot(ks, [pts[k] for k in ks], marker="o", label=label)
    ax.set_ylabel("PSNR (dB)")
    bx.set_ylabel("scene judge on reconstructions")
    bx.set_ylim(0, 1)
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xlabel("tokens kept (prefix length)")
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle("One-D-Piece: quality vs length")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())  # per-process temp file renamed into place, as every other figure


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--out", default="docs/tokenizers.json")
    ap.add_argument("--plot", default="docs/onedpiece_psnr_vs_length.png")
    ap.add_argument("--rows", nargs="+", default=None, metavar="FOLDER",
                    help=f"only these tokenizer folders (of {FOLDERS}); default all")
    args = ap.parse_args(argv)
    if args.rows is not None and not set(args.rows) <= set(FOLDERS):
        raise ValueError(f"--rows must name folders among {FOLDERS}, got {args.rows}")
    threads = set_threads(args.threads)
    judge = load_judges()[0]
    rows = []
    for name, tok_dir, pipe_dir in ROWS:
        if args.rows is not None and tok_dir not in args.rows:
            continue
        folder = assets_dir() / tok_dir
        if not folder.is_dir():
            print(f"skip {name}: {folder} missing")
            continue
        tok = load_tokenizer(folder)
        row = {"tokenizer": name, **tokenizer_report(tok, n=args.n, judge=judge)}
        if pipe_dir and (assets_dir() / pipe_dir / "eval.json").exists():
            ev = json.loads((assets_dir() / pipe_dir / "eval.json").read_text())
            row.update(t2i_adherence=ev["prompt_adherence"], t2i_judge_fd=ev["judge_fd"],
                       t2i_fd_real_vs_real=ev["judge_fd_real_vs_real"], t2i_guidance=ev.get("guidance_scale"))
        if name == "One-D-Piece":
            lengths = prefix_lengths(tok.config.num_latent_tokens)
            row["psnr_vs_length"] = prefix_curve(tok, lengths, n=args.n)
            row["judge_vs_length"] = prefix_adherence(tok, judge, lengths)
            plot_curve(row["psnr_vs_length"], row["judge_vs_length"], Path(args.plot))
        rows.append(row)
        print(json.dumps(row))
    result = {"rows": rows, "threads": threads, "date": str(date.today()), "machine": "2-core CPU (shared), torch "
              + torch.__version__, "command": command_line("python benchmarks/bench_tokenizers.py", argv)}
    atomic_write_json(args.out, result)
    cols = ["tokens_per_image", "bits_per_image", "psnr_scenes", "ssim_scenes", "psnr_photos", "ssim_photos",
            "codebook_usage", "encode_ms_per_image", "decode_ms_per_image", "scenes_adherence_after_vq",
            "t2i_adherence", "t2i_judge_fd"]
    print("| tokenizer | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        print(f"| {r['tokenizer']} | " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")


if __name__ == "__main__":
    main()
