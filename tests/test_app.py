"""The Gradio app, launched in-process on 127.0.0.1 and driven with gradio_client."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_batch import textured
from conftest import randomize

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from mmgen.assets import model_for_decoding  # noqa: E402
from mmgen.decoding import DECODERS  # noqa: E402

PROMPT = "a small red circle on the left, white background"
# prompt/class, decoding, options, seed, cfg, top_k, top_p, temperature, num_images, compare_ar
DEFAULTS = ("ar", "{}", 3, 3.0, 0, 1.0, 1.0, 2, False)


def _launch(demo):
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, ssr_mode=False)
    assert url.startswith("http://127.0.0.1:")
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from mmgen.data.scenes import caption_vocabulary
    from mmgen.models import ARTransformer
    from mmgen.models.text import build_text_encoder, build_text_tokenizer
    from mmgen.pipelines import ARImagePipeline
    from mmgen.tokenizers_visual import VQTokenizer

    root = tmp_path_factory.mktemp("models")
    tok = build_text_tokenizer(caption_vocabulary(), 24)
    enc = randomize(build_text_encoder(len(tok), hidden=32, layers=1, heads=2, max_length=24), std=0.05)
    vq = VQTokenizer(channels=(8, 16), num_res_blocks=1, codebook_size=64).eval()
    t2i = randomize(ARTransformer(vocab_size=64, grid_size=4, dim=32, n_layers=1, n_heads=2, caption_dim=32,
                                  prefix_len=24), std=0.2)
    c2i = randomize(ARTransformer(vocab_size=64, grid_size=4, dim=32, n_layers=1, n_heads=2, num_classes=10), std=0.2)
    scenes = textured(ARImagePipeline(transformer=t2i, vq=vq, text_encoder=enc, tokenizer=tok))
    scenes.save_pretrained(root / "scenes")
    ARImagePipeline(transformer=c2i, vq=scenes.vq).save_pretrained(root / "digits")
    for order in ("nar", "nbp"):  # companions that decoding="nar" / "nbp" switch to
        gen = randomize(ARTransformer(vocab_size=64, grid_size=4, dim=32, n_layers=1, n_heads=2, caption_dim=32,
                                      prefix_len=24, order=order), std=0.2)
        ARImagePipeline(transformer=gen, vq=scenes.vq, text_encoder=scenes.text_encoder,
                        tokenizer=scenes.tokenizer).save_pretrained(root / f"scenes-{order}")
    return root / "scenes", root / "digits"


@pytest.fixture(scope="module")
def client(models):
    demo = app.build_demo(scenes_model=str(models[0]), digits_model=str(models[1]))
    c = _launch(demo)
    yield c
    c.close()
    demo.close()


def _images(gallery) -> list[np.ndarray]:
    out = []
    for entry in gallery:
        img = entry["image"] if isinstance(entry, dict) else entry[0]
        path = Path(img["path"] if isinstance(img, dict) else img)
        assert path.suffix == ".png"
        with Image.open(path) as im:
            assert im.format == "PNG"
            out.append(np.asarray(im.convert("RGB")))
    return out


def test_named_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate_image", "/generate_digit"} <= names


def test_prompt_returns_png_images_equal_to_the_pipeline_and_stats(client, models):
    gallery, md, stats = client.predict(PROMPT, *DEFAULTS, api_name="/generate_image")
    images = _images(gallery)
    assert len(images) == 2 and images[0].shape == (16, 16, 3)
    pipe = app.load_pipeline(str(models[0]))
    ref = pipe(PROMPT, num_images_per_prompt=2, guidance_scale=3.0,
               generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="pil").images
    for got, want in zip(images, ref):  # PNG round trip is lossless: exact pixels, image i <- seed 3 + i
        assert np.array_equal(got, np.asarray(want))
    assert not np.array_equal(images[0], images[1])
    assert stats["method"] == "ar" and stats["forward_passes"] == 16 and stats["tokens"] == 16
    assert stats["tokens_per_forward"] == 1.0 and stats["speedup_over_ar_forward_passes"] == 1.0
    assert stats["wall_time"] > 0 and stats["seeds"] == [3, 4]
    assert "forward passes" in md and "speedup over AR" in md


def test_digit_with_wall_time_comparison(client, monkeypatch):
    from mmgen.pipelines import ARImagePipeline

    calls = []
    real_call = ARImagePipeline.__call__

    def counting_call(self, *args, **kwargs):  # the Gradio server runs in this process
        calls.append(kwargs.get("decoding"))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(ARImagePipeline, "__call__", counting_call)
    gallery, _, stats = client.predict(7, "ar", "", 0, 2.0, 10, 0.9, 0.8, 1, True, api_name="/generate_digit")
    assert len(_images(gallery)) == 1 and calls == ["ar"]  # AR against itself: no second run
    assert stats["batch_size"] == 1 and stats["speedup_over_ar_wall_time"] == 1.0
    assert stats["accepted_length_histogram"] == {"1": 16}
    # another method: the AR comparison is a second, separately timed run
    gallery, md, stats = client.predict(7, "sjd", "", 0, 2.0, 10, 0.9, 0.8, 1, True, api_name="/generate_digit")
    assert len(_images(gallery)) == 1 and stats["method"] == "sjd" and "wall time" in md
    assert calls == ["ar", "sjd", "ar"] and stats["ar_wall_time"] > 0
    # speedup is computed from the unrounded AR time; ar_wall_time is stored rounded to 0.1 ms
    assert stats["speedup_over_ar_wall_time"] == pytest.approx(stats["ar_wall_time"] / stats["wall_time"],
                                                               abs=5e-5 / stats["wall_time"] + 5e-4)


@pytest.mark.parametrize("method", sorted(DECODERS))
def test_every_registered_decoder_runs(client, models, method):
    """Each registry entry runs from the app (nar/nbp on the model's -nar/-nbp sibling) with the pipeline's own
    forward-pass count and a speedup over AR. (A method the model cannot run is shown as the pipeline's message:
    tests/test_app.py::test_decoder_the_model_cannot_run_shows_the_pipeline_message.)"""
    pipe = app.load_pipeline(model_for_decoding(str(models[0]), method, None))  # nar/nbp: the -nar/-nbp sibling
    assert (pipe.transformer.order != "raster") == (method in ("nar", "nbp"))
    ref = pipe(PROMPT, num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
               decoding=method, output_type="latent")
    gallery, md, stats = client.predict(PROMPT, method, "{}", 1, 3.0, 0, 1.0, 1.0, 2, True, api_name="/generate_image")
    assert len(_images(gallery)) == 2
    assert stats["method"] == method and stats["forward_passes"] == ref.stats.forward_passes
    assert 1 <= stats["forward_passes"] <= stats["tokens"] == 16
    assert stats["speedup_over_ar_forward_passes"] == round(16 / stats["forward_passes"], 3)
    assert stats["ar_wall_time"] > 0 and stats["speedup_over_ar_wall_time"] > 0
    # every row commits all 16 tokens: sum of accepted lengths over both images == 2 * 16
    assert sum(int(k) * v for k, v in stats["accepted_length_histogram"].items()) == 2 * 16
    assert "speedup over AR (wall time)" in md


def test_decoder_the_model_cannot_run_shows_the_pipeline_message(models):
    """A speculative method on a NAR-order model: the pipeline rejects it before decoding and the app shows
    exactly that message as a gr.Error (no traceback)."""
    import gradio as gr

    nar = str(models[0].with_name("scenes-nar"))
    with pytest.raises(ValueError) as direct:
        app.load_pipeline(nar)(PROMPT, generator=torch.Generator().manual_seed(1), decoding="sjd",
                               output_type="latent")
    assert "nar" in str(direct.value)
    with pytest.raises(gr.Error) as shown:
        app._guarded(app.run_generation)(nar, {"prompt": PROMPT}, "sjd", "{}", 1, 3.0, 0, 1.0, 1.0, 1)
    assert str(direct.value) in str(shown.value) and "Traceback" not in str(shown.value)


def test_pipelines_are_loaded_once(client, models):
    assert app.load_pipeline(str(models[0])) is app.load_pipeline(str(models[0]))


@pytest.mark.parametrize("endpoint,first,changes,message", [
    ("/generate_image", "", {}, "prompt must be a non-empty string"),
    ("/generate_image", "   ", {}, "prompt must be a non-empty string"),
    ("/generate_image", PROMPT, {6: 0.0}, "top_p must lie in"),
    ("/generate_image", PROMPT, {2: "{not json"}, "decoding options must be a JSON object"),
    ("/generate_image", PROMPT, {2: "[1, 2]"}, "decoding options must be a JSON object"),
    ("/generate_image", PROMPT, {2: '{"bogus_option": 1}'}, "bogus_option"),
    ("/generate_image", PROMPT, {1: "nope"}, "nope is not in the list of choices"),
    ("/generate_image", " ".join(["red"] * 40), {}, "prompt is too long"),
    ("/generate_digit", 12, {}, "class_label must be an integer in \\[0, 9\\]"),
    ("/generate_digit", -1, {}, "class_label"),
])
def test_invalid_input_gives_a_clean_error(client, endpoint, first, changes, message):
    args = [first, *DEFAULTS]
    for i, v in changes.items():
        args[i] = v
    with pytest.raises(AppError, match=message) as err:
        client.predict(*args, api_name=endpoint)
    assert "Traceback" not in str(err.value) and 'File "' not in str(err.value)


def test_app_still_serves_after_errors(client):
    with pytest.raises(AppError):
        client.predict(12, *DEFAULTS, api_name="/generate_digit")
    gallery, _, stats = client.predict(3, *DEFAULTS, api_name="/generate_digit")
    assert len(_images(gallery)) == 2 and stats["forward_passes"] == 16


def test_demo_module_defaults_to_shipped_models_and_queue_limits():
    assert app.SCENES_MODEL == "scenes-t2i" and app.DIGITS_MODEL == "digits-c2i"
    demo = app.demo
    assert demo.enable_queue is not False
    assert demo._queue.max_size == 16 and demo._queue.default_concurrency_limit == 1
    choices = [c[0] if isinstance(c, (tuple, list)) else c
               for b in demo.blocks.values() if getattr(b, "elem_id", None) == "scenes-decoding"
               for c in b.choices]
    assert choices == sorted(DECODERS)
    json.dumps(app.stats_summary({"tokens": 256, "forward_passes": 64, "wall_time": 1.0}, 3.0))
    s = app.stats_summary({"tokens": 256, "forward_passes": 64, "wall_time": 1.0}, 3.0)
    assert s["speedup_over_ar_forward_passes"] == 4.0 and s["speedup_over_ar_wall_time"] == 3.0


@pytest.mark.slow
def test_shipped_checkpoints_smoke():
    """The module-level ``demo`` serves the shipped checkpoints (assets/scenes-t2i, assets/digits-c2i)."""
    from mmgen.assets import model_path

    for name in (app.SCENES_MODEL, app.DIGITS_MODEL):
        assert (model_path(name) / "model_index.json").exists(), name
    c = _launch(app.demo)
    try:
        for endpoint, first in (("/generate_image", "a large green square in the center, white background"),
                                ("/generate_digit", 3)):
            gallery, _, stats = c.predict(first, "ar", "{}", 0, 3.0, 0, 1.0, 1.0, 1, False, api_name=endpoint)
            (image,) = _images(gallery)
            assert image.shape[0] == image.shape[1] >= 32 and image.std() > 1.0, endpoint
            assert stats["forward_passes"] == stats["tokens"] >= 64
    finally:
        c.close()
        app.demo.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readme_pipeline_snippet_runs(tmp_path):
    """The README's Python API block runs as written (fresh interpreter, shipped checkpoints)."""
    import re
    import subprocess

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "snippet.py"
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + code.replace('"x.png"', repr(str(tmp_path / "x.png"))))
    res = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "forward_passes" in res.stdout
    with Image.open(tmp_path / "x.png") as im:
        assert im.format == "PNG"


@pytest.mark.parametrize("field,value,message", [
    ("cfg", None, r"CFG scale must lie in \[0, 100\], got None"),
    ("cfg", float("inf"), "CFG scale must lie in"),
    ("temperature", float("nan"), r"temperature must lie in \(0, 100\]"),
    ("top_p", "abc", "top_p must lie in"),
])
def test_form_numbers_are_checked_before_any_model_loads(field, value, message, monkeypatch):
    monkeypatch.setattr(app, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model for a bad form"))
    kw = dict(model="digits-c2i", condition={"class_labels": 3}, decoding="ar", options_text="{}", seed=0, cfg=3.0,
              top_k=0, top_p=1.0, temperature=1.0, num_images=1)
    kw[field] = value
    with pytest.raises(ValueError, match=message):
        app.run_generation(**kw)
