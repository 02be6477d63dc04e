"""Gradio demo for mmgen: text-to-image (scenes) and class-to-image (digits) with any registered decoder,
and text-to-speech (AR or MCTP, optionally streamed).

``python app.py`` serves on 127.0.0.1:7860 (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` override).
Endpoints (for ``gradio_client``): ``/generate_image`` (prompt) and ``/generate_digit`` (class label),
both returning ``(gallery, stats markdown, stats dict)``; ``/synthesize_speech`` (text, voice, mctp,
temperature, seed, stream, compare) returning ``(audio, stats markdown, stats dict)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mmgen.assets import model_for_decoding, model_path  # noqa: E402
from mmgen.cli import SAMPLING_DEFAULTS, recommended  # noqa: E402
from mmgen.decoding import DECODERS  # noqa: E402

log = logging.getLogger("mmgen.app")

SCENES_MODEL = "scenes-t2i"
DIGITS_MODEL = "digits-c2i"
TTS_MODEL = "tts"  # assets/tts (or $MMGEN_ASSETS/tts); a folder path works too
MAX_IMAGES = 8
MAX_SEED = 2**31 - 1
SCENE_EXAMPLES = [
    "a large green square in the center, white background",
    "a small red circle on the left and a large blue triangle on the right, black background",
    "a large yellow diamond at the top, gray background",
]

SPEECH_EXAMPLES = ["the red dog follows a cat", "a hungry doctor finds the monkey near the river",
                   "the small pilot carries a yellow baby on the bridge"]

_CACHE: dict[str, object] = {}
_CACHE_LOCK = threading.Lock()


def load_pipeline(name_or_folder: str):
    """Load a pipeline folder (or shipped model name) once per process and cache it."""
    from mmgen.cli import load_pipeline as load_uncached

    key = str(model_path(name_or_folder).resolve())
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_uncached(key).to("cuda" if torch.cuda.is_available() else "cpu")
        return _CACHE[key]


def _recommended(name_or_folder: str, key: str = "guidance_scale") -> float:
    """A value of the model's ``recommended.json`` (guidance_scale, temperature); the default while the
    folder does not exist yet or its file cannot be read."""
    try:
        return float(recommended(model_path(name_or_folder))[key])
    except (ValueError, OSError, TypeError):
        return SAMPLING_DEFAULTS[key]


def parse_options(text: str | None) -> dict:
    """The decoding-options textbox -> dict; ValueError naming the field otherwise."""
    from mmgen.decoding.base import parse_options as parse

    return parse(text, "decoding options")


def check_decoder(decoding: str, options: dict) -> None:
    """Build the decoder once, before any model loads, to reject unknown methods / options (get_decoder's
    ValueError names them)."""
    from mmgen.decoding import get_decoder

    get_decoder(decoding, **options)


def _int_field(value, name: str, lo: int, hi: int) -> int:
    try:
        v = int(float(value))
        ok = not isinstance(value, bool) and float(value) == v and lo <= v <= hi
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return v


def _float_field(value, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] ((lo, hi] with ``lo_open``), else a ValueError naming the field."""
    try:
        v = float(value)
        ok = not isinstance(value, bool) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value!r}")
    return v


def stats_summary(stats: dict, ar_wall_time: float | None = None) -> dict:
    """Decoder stats plus speedup over AR (AR needs one forward pass per token)."""
    out = dict(stats)
    out["speedup_over_ar_forward_passes"] = round(stats["tokens"] / max(stats["forward_passes"], 1), 3)
    if ar_wall_time is not None:
        out["ar_wall_time"] = round(ar_wall_time, 4)
        out["speedup_over_ar_wall_time"] = round(ar_wall_time / max(stats["wall_time"], 1e-9), 3)
    return out


def stats_markdown(s: dict) -> str:
    rows = [("method", s["method"]), ("forward passes", s["forward_passes"]),
            ("tokens per image", s["tokens"]), ("tokens per forward", s["tokens_per_forward"]),
            ("wall time (s)", s["wall_time"]),
            ("speedup over AR (forward passes)", f"{s['speedup_over_ar_forward_passes']}x")]
    if "speedup_over_ar_wall_time" in s:
        rows.append(("speedup over AR (wall time)", f"{s['speedup_over_ar_wall_time']}x"))
    return "| stat | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def run_generation(model: str, condition: dict, decoding, options_text, seed, cfg, top_k, top_p, temperature,
                   num_images, compare_ar=False):
    """Validate the form, run the pipeline and return ``(images, markdown, stats)``; raises ValueError."""
    if decoding not in DECODERS:
        raise ValueError(f"decoding must be one of {sorted(DECODERS)}, got {decoding!r}")
    options = parse_options(options_text)
    check_decoder(decoding, options)
    seed = _int_field(seed, "seed", 0, MAX_SEED)
    n = _int_field(num_images, "number of images", 1, MAX_IMAGES)
    top_k = _int_field(top_k, "top_k", 0, 1 << 20)
    cfg = _float_field(cfg, "CFG scale", 0.0, 100.0)
    top_p = _float_field(top_p, "top_p", 0.0, 1.0, lo_open=True)
    temperature = _float_field(temperature, "temperature", 0.0, 100.0, lo_open=True)
    pipe = load_pipeline(model_for_decoding(model, decoding, model))  # nar / nbp: the model's -nar / -nbp companion
    dev = pipe._execution_device

    def call(method, opts):
        gens = [torch.Generator(device=dev).manual_seed(seed + i) for i in range(n)]  # image i uses seed + i
        p = pipe if method == decoding else load_pipeline(model)
        return p(**condition, num_images_per_prompt=n, guidance_scale=cfg, top_k=top_k,
                    top_p=top_p, temperature=temperature, generator=gens, decoding=method,
                    decoding_options=opts)

    out = call(decoding, options)
    stats = out.stats.to_dict()
    stats["accepted_length_histogram"] = {str(k): v for k, v in stats["accepted_length_histogram"].items()}
    ar_wall = None
    if compare_ar:
        ar_wall = stats["wall_time"] if decoding == "ar" else call("ar", {}).stats.wall_time
    summary = stats_summary(stats, ar_wall)
    summary["seeds"] = [seed + i for i in range(n)]
    return list(out.images), stats_markdown(summary), summary


def load_speech(name_or_folder: str):
    """The text-to-speech pipeline, loaded on first use and cached; ValueError saying how to get it if missing."""
    from mmgen.assets import assets_dir
    from mmgen.cli import load_speech_pipeline

    try:
        key = str(model_path(name_or_folder).resolve())
    except ValueError:
        raise ValueError(f"the text-to-speech model {name_or_folder!r} is not installed (no folder {name_or_folder!r} "
                         f"or {assets_dir() / name_or_folder}); train it with "
                         "`python -m mmgen.train.train_tts --out assets/tts`") from None
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_speech_pipeline(key).to("cuda" if torch.cuda.is_available() else "cpu")
        return _CACHE[key]


def _tts_config(name_or_folder: str) -> dict:
    """The TTS transformer's config.json (voices, mctp) without loading weights; {} if the model is missing."""
    try:
        return json.loads((model_path(name_or_folder) / "transformer" / "config.json").read_text())
    except (ValueError, OSError):
        return {}


def speech_markdown(s: dict) -> str:
    rows = [("method", s["method"]), ("forward passes", s["forward_passes"]), ("steps", s["steps"]),
            ("steps per forward", s["steps_per_forward"]), ("wall time (s)", s["wall_time"]),
            ("audio (s)", s["audio_seconds"]), ("real-time factor (wall / audio)", s["rtf"])]
    if "time_to_first_chunk" in s:
        rows.append(("time to first chunk (s)", s["time_to_first_chunk"]))
    if "ar_forward_passes" in s:
        rows += [("AR (mctp=1) forward passes", s["ar_forward_passes"]),
                 ("speed-up vs AR (forward passes)", f"{s['speedup_over_ar_forward_passes']}x"),
                 ("speed-up vs AR (wall time)", f"{s['speedup_over_ar_wall_time']}x")]
    return "| stat | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def run_tts(model: str, text, voice, mctp, temperature, seed, stream=False, compare_ar=False,
            max_seconds: float | None = None):
    """Validate the form and synthesize; yields ``((sample_rate, int16 audio), markdown, stats)``.

    Streaming yields the audio so far after every chunk, then the final stats; otherwise one yield.
    Raises ValueError on bad input.
    """
    from mmgen.cli import pcm16, speech_summary

    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    seed = _int_field(seed, "seed", 0, MAX_SEED)
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    pipe = load_speech(model)
    mctp = _int_field(mctp, "mctp", 1, pipe.transformer.config.mctp)
    sr = pipe.sample_rate

    def kwargs():
        return dict(voice=voice or None, temperature=temperature, max_seconds=max_seconds,
                    generator=torch.Generator(device=pipe.device).manual_seed(seed))

    if stream:
        run = pipe.stream(text, mctp=mctp, **kwargs())
        pieces = []
        for chunk in run:
            pieces.append(pcm16(chunk))
            yield (sr, np.concatenate(pieces)), f"streaming: {sum(map(len, pieces)) / sr:.2f} s so far", {}
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.int16)
        summary = speech_summary(run.stats, run.samples, sr, run.first_chunk_time)
    else:
        res = pipe(text, mctp=mctp, **kwargs())
        audio = pcm16(res.audios[0, 0, :res.lengths[0]])
        summary = speech_summary(res.stats, res.lengths[0], sr)
    summary.update(voice=voice or pipe.voices[0], mctp=mctp, seed=seed, stream=bool(stream))
    if compare_ar:
        ar = res.stats if (mctp == 1 and not stream) else pipe(text, mctp=1, **kwargs()).stats
        summary.update(ar_forward_passes=ar.forward_passes, ar_wall_time=round(ar.wall_time, 4),
                       speedup_over_ar_forward_passes=round(ar.forward_passes / max(summary["forward_passes"], 1), 3),
                       speedup_over_ar_wall_time=round(ar.wall_time / max(summary["wall_time"], 1e-9), 3))
    yield (sr, audio), speech_markdown(summary), summary


def _gr_error(e: Exception) -> gr.Error:
    """Bad input (ValueError) -> its message; anything else -> a one-line message, traceback only in the log."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, ValueError):
        return gr.Error(str(e), title="Invalid input")
    log.exception("generation failed")
    return gr.Error(f"generation failed: {type(e).__name__}: {e}")


def _guarded(fn):
    """Turn bad input into a gr.Error message; log (never show) tracebacks of unexpected failures."""

    def wrapper(*args):
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - shown as a message
            raise _gr_error(e) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _guarded_stream(fn):
    """:func:`_guarded` for generator handlers (errors surface while iterating)."""

    def wrapper(*args):
        try:
            yield from fn(*args)
        except Exception as e:  # noqa: BLE001 - shown as a message
            raise _gr_error(e) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def tts_handler(tts_model: str = TTS_MODEL):
    """The speech tab's click handler (a generator) on ``tts_model``: bad input raises ``gr.Error``."""

    def synthesize_speech(text, voice, mctp, temperature, seed, stream, compare):
        """Text-to-speech; mctp = audio steps per backbone forward (1 = plain AR)."""
        yield from run_tts(tts_model, text, voice, mctp, temperature, seed, stream, compare)

    return _guarded_stream(synthesize_speech)


def _speech_tab(tts_model: str) -> None:
    from mmgen.audio.corpus import VOICES

    cfg = _tts_config(tts_model)  # the model itself loads on the first request
    voices, k_max = list(cfg.get("voices") or VOICES), int(cfg.get("mctp") or 4)
    with gr.Row():
        with gr.Column(scale=5):
            text = gr.Textbox(label="text (a-z, space, apostrophe)", value=SPEECH_EXAMPLES[0], lines=1,
                              elem_id="tts-text")
            with gr.Row():
                voice = gr.Dropdown(voices, value=voices[0], label="voice", elem_id="tts-voice")
                mctp = gr.Slider(1, k_max, value=k_max, step=1, label="MCTP: audio steps per forward (1 = AR)",
                                 elem_id="tts-mctp")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)")
                seed = gr.Number(value=0, precision=0, label="seed")
            with gr.Row():
                stream = gr.Checkbox(False, label="stream (audio appears chunk by chunk)")
                compare = gr.Checkbox(False, label="compare with AR (mctp = 1): speed-up")
            btn = gr.Button("Synthesize", variant="primary", elem_id="synthesize-speech")
            gr.Examples([[t] for t in SPEECH_EXAMPLES], inputs=[text], label="example texts")
        with gr.Column(scale=4):
            audio = gr.Audio(label="speech", type="numpy", interactive=False, elem_id="tts-audio")
            md = gr.Markdown(elem_id="tts-stats")
            with gr.Accordion("raw stats (JSON)", open=False):
                js = gr.JSON(label="stats (raw)")
    btn.click(tts_handler(tts_model), [text, voice, mctp, temperature, seed, stream, compare], [audio, md, js],
              api_name="synthesize_speech")


def _sampling_controls(model: str, prefix: str):
    default_cfg, default_temp = _recommended(model, "guidance_scale"), _recommended(model, "temperature")
    methods = sorted(DECODERS)
    with gr.Row():
        decoding = gr.Dropdown(methods, value="ar" if "ar" in methods else methods[0], label="decoding method",
                               info="every registered method; nar / nbp run the model's -nar / -nbp sibling (own weights)",
                               elem_id=f"{prefix}-decoding")
        options = gr.Textbox(value="{}", label="decoding options (JSON)", lines=1, elem_id=f"{prefix}-options")
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label="seed (image i uses seed + i)")
        num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of images")
        cfg = gr.Slider(0.0, 10.0, value=default_cfg, step=0.1, label="CFG (guidance scale)")
    with gr.Row():
        top_k = gr.Slider(0, 1024, value=0, step=1, label="top-k (0 = off)")
        top_p = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="top-p (1 = off)")
        temperature = gr.Slider(0.05, 2.0, value=default_temp, step=0.05, label="temperature")
    compare = gr.Checkbox(False, label="also run AR to measure the wall-time speedup")
    return [decoding, options, seed, cfg, top_k, top_p, temperature, num_images, compare]


def _outputs(prefix: str):
    gallery = gr.Gallery(label="images", format="png", columns=4, height=300, elem_id=f"{prefix}-gallery")
    md = gr.Markdown(label="stats", elem_id=f"{prefix}-stats")
    with gr.Accordion("raw stats (JSON)", open=False):
        js = gr.JSON(label="stats (raw)")
    return [gallery, md, js]


def build_demo(scenes_model: str = SCENES_MODEL, digits_model: str = DIGITS_MODEL,
               tts_model: str = TTS_MODEL) -> gr.Blocks:
    """The demo; pipelines are loaded on the first request and cached."""

    def generate_image(prompt, decoding, options, seed, cfg, top_k, top_p, temperature, num_images, compare):
        """Text-to-image on the scenes model."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        return run_generation(scenes_model, {"prompt": prompt.strip()}, decoding, options, seed, cfg, top_k,
                              top_p, temperature, num_images, compare)

    def generate_digit(class_label, decoding, options, seed, cfg, top_k, top_p, temperature, num_images, compare):
        """Class-to-image (digit 0-9) on the digits model."""
        label = _int_field(class_label, "class_label", 0, 9)
        return run_generation(digits_model, {"class_labels": [label]}, decoding, options, seed, cfg, top_k,
                              top_p, temperature, num_images, compare)

    with gr.Blocks(title="mmgen: AR image and speech generation") as demo:
        gr.Markdown("# mmgen: token-based AR image and speech generation\n"
                    "Pick a decoding method (AR or a training-free accelerator) and compare forward passes, "
                    "tokens per forward and wall time. Image *i* uses seed + *i*, so results are reproducible. "
                    "Speech: MCTP emits several audio steps per forward pass (1 = plain AR).")
        with gr.Tabs():
            with gr.Tab("Text to image (scenes)", id="scenes"):
                with gr.Row():
                    with gr.Column(scale=5):
                        prompt = gr.Textbox(label="prompt", value=SCENE_EXAMPLES[0], lines=1, elem_id="prompt")
                        s_inputs = _sampling_controls(scenes_model, "scenes")
                        s_btn = gr.Button("Generate", variant="primary", elem_id="generate-image")
                        gr.Examples([[p] for p in SCENE_EXAMPLES], inputs=[prompt], label="example prompts")
                    with gr.Column(scale=4):
                        s_outputs = _outputs("scenes")
                s_btn.click(_guarded(generate_image), [prompt, *s_inputs], s_outputs, api_name="generate_image")
                prompt.submit(_guarded(generate_image), [prompt, *s_inputs], s_outputs,
                              api_visibility="private")
            with gr.Tab("Class to image (digits)", id="digits"):
                with gr.Row():
                    with gr.Column(scale=5):
                        label = gr.Number(value=7, precision=0, label="digit class (0-9)", elem_id="class-label")
                        d_inputs = _sampling_controls(digits_model, "digits")
                        d_btn = gr.Button("Generate", variant="primary", elem_id="generate-digit")
                        gr.Examples([[3], [7], [0]], inputs=[label], label="example classes")
                    with gr.Column(scale=4):
                        d_outputs = _outputs("digits")
                d_btn.click(_guarded(generate_digit), [label, *d_inputs], d_outputs, api_name="generate_digit")
            with gr.Tab("Text to speech", id="speech"):
                _speech_tab(tts_model)
    demo.queue(default_concurrency_limit=1, max_size=16)
    return demo


demo = build_demo()

if __name__ == "__main__":
    from mmgen.train.common import set_threads

    set_threads()
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), theme=gr.themes.Soft())
