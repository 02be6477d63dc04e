import json
import shlex

import pytest
import torch
import torch.nn.functional as F

from mmgen.models import ARTransformer, Condition
from mmgen.train.common import (check_photo_frac, check_resumable, load_trainer_state, optimizer_from_safetensors,
                                save_checkpoint, set_threads)


def test_a_few_generator_steps_lower_the_loss():
    torch.manual_seed(0)
    model = ARTransformer(vocab_size=16, grid_size=4, dim=32, n_layers=2, n_heads=2, num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    labels = torch.arange(4).repeat(4)
    tokens = (labels[:, None] * 3 + torch.arange(16)[None]) % 16  # class-dependent deterministic images
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(tokens, Condition(class_labels=labels)).flatten(0, 1), tokens.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    model = ARTransformer(vocab_size=16, grid_size=2, dim=32, n_layers=1, n_heads=2, num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(torch.zeros(2, 4, dtype=torch.long), Condition(class_labels=torch.tensor([0, 1]))).sum()
    loss.backward()
    opt.step()
    save_checkpoint(tmp_path / "ck", {"transformer": model}, opt, step=7)
    assert load_trainer_state(tmp_path / "ck")["step"] == 7
    model2 = ARTransformer.from_pretrained(tmp_path / "ck" / "transformer")
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    optimizer_from_safetensors(opt2, tmp_path / "ck" / "optimizer.safetensors")
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        assert torch.equal(s1["state"][k]["exp_avg"], s2["state"][k]["exp_avg"])
    # a failing write leaves the previous checkpoint intact and no temp folder behind
    class Boom:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path / "ck", {"bad": Boom()}, None, step=8)
    assert load_trainer_state(tmp_path / "ck")["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_checkpoint_survives_a_kill_between_the_two_renames(tmp_path):
    """atomic_dir renames the old folder aside, then the new one in; a kill in between leaves only the old one
    under a hidden name, which the next read puts back instead of restarting from step 0."""
    model = ARTransformer(vocab_size=16, grid_size=2, dim=32, n_layers=1, n_heads=2, num_classes=4)
    save_checkpoint(tmp_path / "ck", {"transformer": model}, None, step=5)
    assert (tmp_path / "ck").stat().st_mode & 0o777 == 0o755  # exported folders are readable by everyone
    (tmp_path / "ck").rename(tmp_path / ".ck.old")  # the state right after the first rename
    assert load_trainer_state(tmp_path / "ck")["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_trainer_argument_checks():
    with pytest.raises(ValueError, match="threads"):
        set_threads(0)
    with pytest.raises(ValueError, match=r"--steps \(100\) must exceed the step already reached"):
        check_resumable(100, 100, "runs/x")
    check_resumable(50, 100, "runs/x")
    assert check_photo_frac(0.25, 32) == 8
    for frac, batch in [(1.0, 32), (-0.1, 32), (0.75, 2)]:
        with pytest.raises(ValueError, match="--photo-frac"):
            check_photo_frac(frac, batch)


@pytest.mark.parametrize("module,args,msg", [
    ("train_tokenizer", ["--steps", "0"], "--steps must be >= 1"),
    ("train_generator", ["--task", "digits", "--lr", "-1"], "--lr must be > 0"),
    ("train_visual_tokenizer", ["--kind", "hita", "--save-every", "0"], "--save-every must be >= 1"),
    ("train_seed_renderer", ["--tokenizer", "x", "--init-from", "y", "--max-minutes", "0"], "--max-minutes must be > 0"),
    ("train_drafter", ["--model", "digits-c2i", "--steps", "0"], "--steps must be >= 1"),
    ("train_judges", ["--scene-steps", "0"], "--scene-steps must be >= 1"),
    ("train_tts", ["--corpus", "x", "--tokenizers", "y", "--batch", "0"], "--batch must be >= 1"),
    ("train_ctc_tokenizer", ["--corpus", "x", "--batch", "0"], "--batch must be >= 1"),
    ("train_speech_tokenizers", ["--corpus", "x", "--kmeans-frames", "100"], "--kmeans-frames .* --codebook-size"),
])
def test_trainers_refuse_bad_numbers_before_writing_anything(tmp_path, module, args, msg):
    """Every trainer checks its numbers right after parsing: nothing is trained, made or written (a ``--steps 0`` run
    used to export an untrained model over ``--out``), and the error names the option."""
    import importlib

    main = importlib.import_module(f"mmgen.train.{module}").main
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    has_work = module not in ("train_drafter", "train_judges")  # these two keep no resumable work folder
    with pytest.raises(ValueError, match=msg):
        main([*args, "--out", str(out), *(["--work", str(work)] if has_work else [])])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "keep.txt").read_text() == "old"


def test_code_cache_key_follows_the_tokenizer_weights(tmp_path):
    from mmgen.tokenizers_visual import VQTokenizer
    from mmgen.train.train_generator import tokenizer_digest

    torch.manual_seed(0)
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=24)
    vq.save_pretrained(tmp_path / "a")
    vq.save_pretrained(tmp_path / "b")
    assert tokenizer_digest(tmp_path / "a") == tokenizer_digest(tmp_path / "b")  # the name is not the key
    with torch.no_grad():
        next(vq.parameters()).add_(1.0)
    vq.save_pretrained(tmp_path / "b")
    assert tokenizer_digest(tmp_path / "a") != tokenizer_digest(tmp_path / "b")


def test_resumed_generator_training_equals_an_uninterrupted_run(tmp_path):
    """Kill after the first step (--max-minutes ~0 stops and checkpoints), resume to the end: the exported weights
    equal those of one uninterrupted run bit for bit (data stream, dropout and optimizer state all restored)."""
    from mmgen.models import ARTransformer
    from mmgen.train import train_generator

    common = ["--task", "scenes", "--steps", "3", "--batch", "4", "--num-scenes", "64", "--threads", "1",
              "--save-every", "1", "--cache-dir", str(tmp_path / "cache")]
    train_generator.main(common + ["--out", str(tmp_path / "a"), "--work", str(tmp_path / "wa")])
    train_generator.main(common + ["--out", str(tmp_path / "b1"), "--work", str(tmp_path / "wb"), "--max-minutes", "1e-9"])
    assert load_trainer_state(tmp_path / "wb")["step"] == 1
    train_generator.main(common + ["--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb")])
    a = ARTransformer.from_pretrained(tmp_path / "a" / "transformer").state_dict()
    b = ARTransformer.from_pretrained(tmp_path / "b" / "transformer").state_dict()
    b1 = ARTransformer.from_pretrained(tmp_path / "b1" / "transformer").state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert not all(torch.equal(v, b1[k]) for k, v in a.items())  # the interrupted export really stopped early
    rec = json.loads((tmp_path / "a" / "training.json").read_text())  # the real command line, every option
    assert rec["command"] == "python -m mmgen.train.train_generator " + shlex.join(
        common + ["--out", str(tmp_path / "a"), "--work", str(tmp_path / "wa")])
    assert rec["num_scenes"] == 64 and rec["threads"] == 1 and [g["steps"] for g in rec["segments"]] == ["0-3"]
    # the resumed model's record keeps both runs: their step ranges, commands and times
    rec = json.loads((tmp_path / "b" / "training.json").read_text())
    assert [g["steps"] for g in rec["segments"]] == ["0-1", "1-3"]
    assert rec["segments"][0]["command"].endswith("--max-minutes 1e-9")
    assert "--max-minutes" not in rec["segments"][1]["command"] and rec["command"] == rec["segments"][1]["command"]
    assert rec["train_seconds"] == round(sum(g["seconds"] for g in rec["segments"]), 1)
    with pytest.raises(ValueError, match="must exceed the step already reached"):
        train_generator.main(common + ["--out", str(tmp_path / "c"), "--work", str(tmp_path / "wb")])


def test_judge_trainer_records_the_command_it_ran(tmp_path):
    """metrics.json holds the real command line and step counts (it once held a fixed string without them)."""
    from mmgen.train import train_judges

    out = tmp_path / "judges"
    train_judges.main(["--out", str(out), "--scene-steps", "2", "--digit-steps", "3", "--batch", "4", "--threads", "1"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["command"] == (f"python -m mmgen.train.train_judges --out {shlex.quote(str(out))} --scene-steps 2 "
                            "--digit-steps 3 --batch 4 --threads 1")
    assert (m["scene_steps"], m["digit_steps"], m["batch"], m["threads"]) == (2, 3, 4, 1)
    assert sorted(p.name for p in out.iterdir()) == ["digit_judge", "metrics.json", "scene_judge"]


def test_recorded_command_lines_are_shell_quoted():
    """A record's command, pasted into a shell, reruns the same arguments (an argument with a space stays one)."""
    from mmgen.records import command_line

    cmd = command_line("python benchmarks/bench_speculative.py", ["--methods", "SJD", "LANTERN self", "--n", 5])
    assert cmd == "python benchmarks/bench_speculative.py --methods SJD 'LANTERN self' --n 5"
    assert shlex.split(cmd)[2:] == ["--methods", "SJD", "LANTERN self", "--n", "5"]
    assert command_line("python x.py", []) == "python x.py"


@pytest.mark.parametrize("order", ["nar", "nbp"])
def test_warm_start_loads_the_raster_generator_into_a_parallel_order(tmp_path, order):
    """--init-from: every weight the raster source has is copied exactly; only the new order's own parameters
    (NAR down block / norm / head, NBP begin-of-image queries) keep their fresh init; a different tokenizer or
    a different transformer shape is refused before training starts."""
    from mmgen.tokenizers_visual import VQTokenizer
    from mmgen.train.train_generator import warm_start

    from conftest import randomize

    torch.manual_seed(0)
    kw = dict(vocab_size=24, grid_size=4, dim=32, n_layers=2, n_heads=2, num_classes=10)
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=24).eval()
    src = randomize(ARTransformer(**kw))
    src.save_pretrained(tmp_path / "src" / "transformer")
    vq.save_pretrained(tmp_path / "src" / "vq")
    model = ARTransformer(order=order, **kw)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert warm_start(model, None, tmp_path / "src", vq) is None
    new, s = model.state_dict(), src.state_dict()
    own = {k for k in new if k not in s}
    assert own and all(k.startswith(("down_", "bov_")) for k in own)
    assert all(torch.equal(new[k], s[k]) for k in s)
    assert all(torch.equal(new[k], fresh[k]) for k in own)
    other = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=24).eval()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="tokenizer differs"):
        warm_start(ARTransformer(order=order, **kw), None, tmp_path / "src", other)
    with pytest.raises(ValueError, match="config differs.*dim"):
        warm_start(ARTransformer(order=order, **dict(kw, dim=64)), None, tmp_path / "src", vq)
