"""Batch generation: item reading, byte-identical output across process counts, kill + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize
from mmgen.cli import main as cli_main
from mmgen.pipelines.batch import METADATA, PARTS, atomic_write_json, read_items, run_batch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a small red circle on the left, white background", "a large blue square in the center, black background",
           "a small green triangle at the top, gray background", "a large yellow diamond at the bottom, white background",
           "a small purple circle on the right, blue background", "a large orange square on the left, gray background",
           "a small red diamond in the center, black background"]


def textured(pipe):
    """Random VQ decoder + codebook, so different tokens give different pixels (the default codebook is 0)."""
    randomize(pipe.vq, std=0.3, seed=3)
    cb = pipe.vq.quantizer._codebook
    with torch.no_grad():
        cb.embed.copy_(torch.randn(cb.embed.shape, generator=torch.Generator().manual_seed(4)))
        cb.initted.fill_(True)
    return pipe


@pytest.fixture
def t2i_dir(tiny_pipeline, tmp_path):
    textured(tiny_pipeline).save_pretrained(tmp_path / "t2i")
    return tmp_path / "t2i"


@pytest.fixture
def c2i_dir(tiny_pipeline, tmp_path):
    from mmgen.models import ARTransformer
    from mmgen.pipelines import ARImagePipeline

    gen = randomize(ARTransformer(vocab_size=64, grid_size=4, dim=32, n_layers=1, n_heads=2, num_classes=10), std=0.2)
    ARImagePipeline(transformer=gen, vq=textured(tiny_pipeline).vq).save_pretrained(tmp_path / "c2i")
    return tmp_path / "c2i"


def sub_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MMGEN_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    return env


def records(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / METADATA).read_text().splitlines()]


def test_read_items_sources_and_seeds(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a small red circle on the left\n\n  a large blue square in the center  \n")
    items = read_items(txt, base_seed=10)
    assert [(i.index, i.prompt, i.seed) for i in items] == [
        (0, "a small red circle on the left", 10), (1, "a large blue square in the center", 11)]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"class_label": 3}\n{"class_label": 5, "seed": 99}\n')
    assert [(i.class_label, i.seed) for i in read_items(jl, base_seed=7)] == [(3, 7), (5, 99)]
    items = read_items(classes=[0, 2], per_class=2)
    assert [(i.index, i.class_label, i.seed) for i in items] == [(0, 0, 0), (1, 0, 1), (2, 2, 2), (3, 2, 3)]
    bad = {
        '{"prompt": "x", "class_label": 1}\n': "exactly one",
        '{"prompt": "x"}\n{"class_label": 1}\n': "mixes",
        '{"prompt": "x", "colour": 1}\n': "unknown keys",
        '{"prompt": "x"\n': "not valid JSON",
        '{"prompt": "  "}\n': "prompt of item 0",
        '{"class_label": 1.5}\n': "class_label of item 0",
        '{"class_label": 1, "seed": 18446744073709551616}\n': r"seed of item 0 must be an integer in \[0, 2\*\*63 - 1\]",
        '{"class_label": 1, "seed": -1}\n': "seed of item 0",
    }
    for text, msg in bad.items():
        jl.write_text(text)
        with pytest.raises(ValueError, match=msg):
            read_items(jl)
    with pytest.raises(ValueError, match="source must be"):
        (tmp_path / "p.csv").write_text("x\n")
        read_items(tmp_path / "p.csv")
    with pytest.raises(ValueError, match="exactly one"):
        read_items(txt, classes=[1])
    with pytest.raises(ValueError, match="per_class"):
        read_items(classes=[1], per_class=0)


def test_bad_settings_raise_value_error_naming_the_argument(t2i_dir, c2i_dir, tmp_path):
    prompts = read_items(classes=None, source=_write(tmp_path / "p.txt", PROMPTS[:2]))
    classes = read_items(classes=[1, 12])
    cases = [
        (dict(items=prompts, model=t2i_dir, top_p=0.0), "top_p"),
        (dict(items=prompts, model=t2i_dir, decoding="nope"), "decoding"),
        (dict(items=prompts, model=t2i_dir, batch_size=0), "batch_size"),
        (dict(items=prompts, model=tmp_path / "missing"), "model"),
        (dict(items=prompts, model=c2i_dir), "does not take prompts"),
        (dict(items=classes, model=c2i_dir), "class_label"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            run_batch(out_dir=tmp_path / "o", progress=False, **kw)
    assert not list((tmp_path / "o").glob("*.png"))
    from mmgen.pipelines.batch import json_settings

    with pytest.raises(ValueError, match="decoding_options"):  # a value JSON cannot hold, named before any work
        json_settings({"decoding_options": {"window": object()}})
    run_batch(prompts, tmp_path / "o", t2i_dir, top_k=np.int64(0), temperature=np.float32(1.0), progress=False)
    assert json.loads((tmp_path / "o" / "metadata.jsonl").read_text().splitlines()[0])["top_k"] == 0  # numpy in, JSON out
    with pytest.raises(ValueError, match="out_dir .* different settings"):  # resuming with other settings
        run_batch(prompts, tmp_path / "o", t2i_dir, top_k=5, progress=False)


def _write(path: Path, lines) -> Path:
    path.write_text("".join(f"{ln}\n" for ln in lines))
    return path


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_torchrun_two_processes_byte_identical_to_one(t2i_dir, tmp_path):
    prompts = _write(tmp_path / "prompts.txt", PROMPTS)  # 7 items, chunks of 2 -> uneven split
    one = run_batch(read_items(prompts, base_seed=5), tmp_path / "one", t2i_dir, batch_size=2, progress=False)
    assert one["num_processes"] == 1 and one["complete"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "generate_images.py"), str(prompts), "--out", str(tmp_path / "two"),
           "--model", str(t2i_dir), "--seed", "5", "--batch-size", "2", "--threads", "1", "--cpu", "--no-progress"]
    res = subprocess.run(cmd, cwd=tmp_path, env=sub_env(), capture_output=True, text=True, timeout=380)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["num_processes"] == 2 and summary["complete"]

    a, b = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["index"] for r in a] == [r["index"] for r in b] == list(range(len(PROMPTS)))
    assert {(r["rank"], r["world_size"]) for r in b} == {(0, 2), (1, 2)}  # two processes really ran
    assert [r["seed"] for r in b] == list(range(5, 5 + len(PROMPTS)))
    assert all(r["prompt"] == p and r["checkpoint"] == str(t2i_dir.resolve()) for r, p in zip(b, PROMPTS))
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted([f"{i:05d}.png" for i in range(len(PROMPTS))] + ["grid.png", METADATA])
    pngs = [n for n in names if n.endswith(".png")]
    for n in pngs:
        assert (tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes(), n
    assert len({(tmp_path / "one" / n).read_bytes() for n in pngs}) > 3  # images really differ per item
    grid = Image.open(tmp_path / "two" / "grid.png")
    assert grid.size == (3 * 16, 3 * 16)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_run_leaves_complete_files_and_rerun_completes(c2i_dir, tmp_path):
    out, n = tmp_path / "digits", 40
    args = ["batch", "--classes", ",".join(map(str, range(10))), "--per-class", "4", "--out", str(out),
            "--model", str(c2i_dir), "--batch-size", "1", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "mmgen.cli", *args], cwd=tmp_path, env=sub_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / PARTS).is_dir() and len(list((out / PARTS).glob("*.json"))) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL, "the batch finished before it could be killed"

    pngs = sorted(out.glob("[0-9]*.png"))
    parts = sorted((out / PARTS).glob("*.json"))
    assert 3 <= len(parts) < n and len(pngs) < n
    for p in pngs:  # whatever is visible is complete
        with Image.open(p) as im:
            im.load()
            assert im.size == (16, 16)
    for p in parts:  # a record exists only once its PNG is in place
        assert (out / json.loads(p.read_text())["file"]).exists()
    assert not (out / METADATA).exists()

    assert cli_main(args) == 0  # rerun the same command (in-process) to resume
    recs = records(out)
    assert [r["index"] for r in recs] == list(range(n))
    assert [(r["class_label"], r["seed"]) for r in recs] == [(c, 4 * c + j) for c in range(10) for j in range(4)]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i:05d}.png" for i in range(n)] + ["grid.png", METADATA])
    for i in range(n):
        with Image.open(out / f"{i:05d}.png") as im:
            im.load()
    # resumed output == an uninterrupted run
    fresh = run_batch(read_items(classes=list(range(10)), per_class=4), tmp_path / "fresh", c2i_dir, batch_size=1,
                      progress=False)
    assert fresh["complete"] and fresh["skipped"] == 0
    for i in range(n):
        assert (out / f"{i:05d}.png").read_bytes() == (tmp_path / "fresh" / f"{i:05d}.png").read_bytes(), i
    # a third run finds everything done and generates nothing
    again = run_batch(read_items(classes=list(range(10)), per_class=4), out, c2i_dir, batch_size=1, progress=False)
    assert again["skipped"] == n and again["generated_here"] == 0 and len(records(out)) == n


@pytest.mark.slow
def test_shipped_digits_model_is_the_default_for_classes(tmp_path):
    from mmgen.assets import model_path

    summary = run_batch(read_items(classes=[3, 5]), tmp_path / "d", batch_size=2, progress=False)
    assert summary["complete"]
    recs = records(tmp_path / "d")
    assert [r["class_label"] for r in recs] == [3, 5]
    assert all(r["checkpoint"] == str(model_path("digits-c2i").resolve()) for r in recs)
    for r in recs:
        with Image.open(tmp_path / "d" / r["file"]) as im:
            assert im.format == "PNG" and im.size[0] == im.size[1] >= 32


def test_parallel_decoding_runs_on_the_shipped_companion_model(tmp_path):
    """decoding="nbp" with the default digits model uses assets/digits-c2i-nbp and records it."""
    from mmgen.assets import model_path

    summary = run_batch(read_items(classes=[1, 7]), tmp_path / "p", decoding="nbp", batch_size=2, progress=False)
    assert summary["complete"]
    recs = records(tmp_path / "p")
    assert all(r["checkpoint"] == str(model_path("digits-c2i-nbp").resolve()) and r["decoding"] == "nbp" for r in recs)
    # no decoding given: the checkpoint's own order is recorded
    run_batch(read_items(classes=[2]), tmp_path / "q", str(model_path("digits-c2i-nar")), progress=False)
    assert records(tmp_path / "q")[0]["decoding"] == "nar"


def test_recommended_sampling_settings_are_the_defaults(t2i_dir, tmp_path):
    """recommended.json (picked on validation by scripts/evaluate.py) fills guidance scale and temperature
    when the caller gives none; explicit values win; the app's sliders start there too."""
    sys.path.insert(0, str(ROOT))
    import app

    (t2i_dir / "recommended.json").write_text(json.dumps({"guidance_scale": 2.0, "temperature": 0.4}))
    items = read_items(classes=None, source=_write(tmp_path / "p.txt", PROMPTS[:1]))
    run_batch(items, tmp_path / "rec", t2i_dir, progress=False)
    r = records(tmp_path / "rec")[0]
    assert (r["guidance_scale"], r["temperature"]) == (2.0, 0.4)
    run_batch(items, tmp_path / "own", t2i_dir, guidance_scale=1.0, temperature=0.9, progress=False)
    r = records(tmp_path / "own")[0]
    assert (r["guidance_scale"], r["temperature"]) == (1.0, 0.9)
    assert app._recommended(str(t2i_dir), "temperature") == 0.4
    (t2i_dir / "recommended.json").write_text(json.dumps({"guidance_scale": 2.0}))  # older files: no temperature
    assert app._recommended(str(t2i_dir), "temperature") == 1.0
    run_batch(items, tmp_path / "old", t2i_dir, progress=False)
    assert records(tmp_path / "old")[0]["temperature"] == 1.0


def test_atomic_write_json_replaces_whole_files_only(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "result.json"
    atomic_write_json(path, {"rows": [1, 2]})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    with pytest.raises(TypeError):  # not serialisable: fails before anything is written
        atomic_write_json(path, {"rows": object()})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temp file left behind
    # a failure while replacing (after the new bytes were written to the temp file) leaves the old file whole
    import mmgen.pipelines.batch as batch_module

    def boom(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(batch_module.os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_json(path, {"rows": [3]})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]
