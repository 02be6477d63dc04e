"""``mmgen`` command line: generate images or speech, batch-generate folders, show shipped models and their figures."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _atomic_save(img, path: Path) -> None:
    """PNG to ``path`` via a per-process temp file renamed into place (a crash or a second run leaves whole files)."""
    import io

    from .pipelines.batch import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def image_grid(images, cols: int | None = None):
    from PIL import Image

    cols = cols or min(len(images), 8)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's recommended)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the model's recommended, else 1.0)")
    p.add_argument("--decoding", default=None, help="decoder name (ar, sjd, gsd, lantern, nar, nbp, ...; default: "
                   "the model's own order). nar / nbp on a shipped raster model use its -nar / -nbp companion")
    p.add_argument("--decoding-options", default="{}", help="JSON dict of decoder options")
    p.add_argument("--threads", type=int, default=None)


def add_speech_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=TTS_MODEL, help="shipped model name or local SpeechPipeline folder")
    p.add_argument("--voice", default=None, help="voice name (default: the model's first; see `mmgen info`)")
    p.add_argument("--mctp", type=int, default=None, help="audio steps per backbone forward, 1 = plain AR "
                   "(default: the model's maximum)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this much audio (default: model limit)")
    p.add_argument("--threads", type=int, default=None)


def load_pipeline(model: str):
    from .assets import model_path
    from .pipelines import ARImagePipeline

    pipe = ARImagePipeline.from_pretrained(model_path(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


SAMPLING_DEFAULTS = {"guidance_scale": 3.0, "temperature": 1.0}  # when a model folder recommends nothing


def recommended(model_dir: Path) -> dict:
    """``recommended.json`` of a model folder (guidance_scale, optionally temperature; picked on
    validation prompts by scripts/evaluate.py) over :data:`SAMPLING_DEFAULTS`: both keys always present."""
    f = Path(model_dir) / "recommended.json"
    return {**SAMPLING_DEFAULTS, **(json.loads(f.read_text()) if f.exists() else {})}


def _decoding_options(text: str) -> dict:
    from .decoding.base import parse_options

    return parse_options(text, "--decoding-options")


def cmd_generate(args) -> int:
    import torch

    from .assets import model_for_decoding, model_path
    from .train.common import set_threads

    set_threads(args.threads)
    if (args.prompt is None) == (args.class_id is None):
        raise ValueError("pass exactly one of --prompt and --class")
    options = _decoding_options(args.decoding_options)
    model = model_for_decoding(args.model, args.decoding, "scenes-t2i" if args.prompt is not None else "digits-c2i")
    pipe = load_pipeline(model)
    rec = recommended(model_path(model))
    kw = dict(prompt=args.prompt) if args.prompt is not None else dict(class_labels=args.class_id)
    out = pipe(**kw, num_images_per_prompt=args.batch,
               guidance_scale=args.cfg if args.cfg is not None else rec["guidance_scale"],
               top_k=args.top_k, top_p=args.top_p,
               temperature=args.temperature if args.temperature is not None else rec["temperature"],
               generator=torch.Generator().manual_seed(args.seed), decoding=args.decoding,
               decoding_options=options)
    out_path = Path(args.out)
    if len(out.images) == 1:
        _atomic_save(out.images[0], out_path)
    else:
        for i, im in enumerate(out.images):
            _atomic_save(im, out_path.with_name(f"{out_path.stem}_{i}{out_path.suffix or '.png'}"))
        _atomic_save(image_grid(out.images), out_path)
    print(json.dumps({"out": str(out_path), "stats": out.stats.to_dict()}))
    return 0


def cmd_info(args) -> int:
    from .assets import assets_dir

    root = assets_dir()
    if not root.is_dir():
        raise ValueError(f"the assets folder {str(root)!r} does not exist (set MMGEN_ASSETS to the folder of shipped models)")
    info = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        entry = {}
        if (d / "model_index.json").exists():
            entry["pipeline"] = json.loads((d / "model_index.json").read_text()).get("_class_name")
        if entry.get("pipeline") == "SpeechPipeline" and (d / "transformer" / "config.json").exists():
            cfg = json.loads((d / "transformer" / "config.json").read_text())
            entry.update(voices=cfg.get("voices"), mctp_max=cfg.get("mctp"))
        for name in ("metrics.json", "training.json", "eval.json", "recommended.json"):
            if (d / name).exists():
                entry[name[:-5]] = json.loads((d / name).read_text())
        info[d.name] = entry
    print(json.dumps(info, indent=2))
    return 0


def cmd_tokenize(args) -> int:
    """Image -> token ids (JSON line with the layout) and, with --out, the image decoded back from them."""
    import numpy as np
    import torch
    from PIL import Image

    from .assets import model_path
    from .data import to_tensor
    from .tokenizers_visual import load_tokenizer

    folder = model_path(args.tokenizer)
    grid = None
    if (folder / "model_index.json").exists():  # a pipeline folder: its tokenizer, at the size its generator uses
        grid = json.loads((folder / "transformer" / "config.json").read_text())["grid_size"]
        folder = folder / "vq"
    tok = load_tokenizer(folder).eval()
    try:
        with Image.open(args.image) as im:
            img = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"image {args.image!r} cannot be read as an image: {e}") from None
    size = getattr(tok, "fixed_image_size", None) or (grid * tok.downsample_factor if grid else 64)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    x = to_tensor(np.asarray(img)[None])
    batch = tok.encode(x)
    kw = {}
    if args.length is not None:
        import inspect
        if "length" not in inspect.signature(tok.decode).parameters:
            raise ValueError(f"--length is only supported by prefix tokenizers (One-D-Piece), not {type(tok).__name__}")
        if not 1 <= args.length <= batch.ids.shape[1]:
            raise ValueError(f"--length must be in [1, {batch.ids.shape[1]}], got {args.length}")
        kw["length"] = args.length
    kw.update(tok.decode_kwargs(torch.Generator().manual_seed(args.seed)))  # a sampling decoder (SEED's renderer)
    if args.out:
        with torch.no_grad():
            rec = tok.decode(batch.ids, **kw).clamp(-1, 1)
        arr = ((rec[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        _atomic_save(Image.fromarray(arr), Path(args.out))
    lay = batch.layout
    print(json.dumps({"tokenizer": type(tok).__name__, "layout": lay.kind, "order": lay.order,
                      "num_tokens": lay.num_tokens, "vocab_size": tok.vocab_size, "ids": batch.ids[0].tolist()}))
    return 0


def _class_list(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes must be comma-separated integers, got {text!r}") from None


def _report_batch(summary: dict) -> int:
    """Rank 0 prints the batch summary; every rank leaves the process group."""
    from accelerate import PartialState

    if summary["process_index"] == 0:
        print(json.dumps(summary))
    if PartialState().use_distributed:
        PartialState().destroy_process_group()
    return 0


def cmd_batch(args) -> int:
    """Prompts file or class list -> PNGs + metadata.jsonl + grid.png (resumable, multi-process)."""
    from .pipelines.batch import read_items, run_batch
    from .train.common import set_threads

    set_threads(args.threads)
    options = _decoding_options(args.decoding_options)
    items = read_items(args.input, classes=args.classes, per_class=args.per_class, base_seed=args.seed)
    summary = run_batch(items, args.out, args.model, decoding=args.decoding, decoding_options=options,
                        guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                        batch_size=args.batch_size, cpu=True if args.cpu else None, grid_max=args.grid_max,
                        progress=not args.no_progress)
    return _report_batch(summary)


# --- speech -------------------------------------------------------------------------------------------
TTS_MODEL = "tts"  # shipped name: assets/tts (or $MMGEN_ASSETS/tts)


def load_speech_pipeline(model: str = TTS_MODEL):
    """A :class:`~mmgen.pipelines.SpeechPipeline` from a shipped name or folder; ValueError if it is missing."""
    from .assets import model_path
    from .pipelines import SpeechPipeline

    try:
        folder = model_path(model)
    except ValueError as e:
        raise ValueError(f"{e} (the text-to-speech model is trained by `python -m mmgen.train.train_tts "
                         f"--out assets/tts`)") from None
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"model {model!r} ({folder}) is not a saved pipeline folder (no model_index.json)")
    pipe = SpeechPipeline.from_pretrained(folder)
    if not isinstance(pipe, SpeechPipeline):
        raise ValueError(f"model {model!r} is a {type(pipe).__name__}, not a text-to-speech SpeechPipeline")
    pipe.set_progress_bar_config(disable=True)
    _warm_up_vocoder(pipe)
    return pipe


def _warm_up_vocoder(pipe) -> None:
    """Pay the codec's one-time costs (lazy imports, einx graphs, mel basis) at load, not in the first timed call."""
    import torch

    from .audio.features import griffin_lim

    codes = torch.zeros(1, pipe.codec.num_quantizers, 4, dtype=torch.long)
    griffin_lim(pipe.codec.decode_mel(codes), pipe.codec.mel_cfg, n_iter=1)


def pcm16(audio):
    """float audio in [-1, 1] -> int16 PCM (clipped, x * 32767 rounded): what every WAV writer here stores."""
    import numpy as np

    return np.round(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise ValueError("writing WAV files needs soundfile: pip install 'mmgen[audio]'") from None
    return soundfile


def wav_bytes(audio, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of float ``audio`` as bytes."""
    import io

    buf = io.BytesIO()
    _soundfile().write(buf, pcm16(audio), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def speech_summary(stats, samples: int, sample_rate: int, first_chunk_time: "float | None" = None) -> dict:
    """Stats of one utterance: forward passes, steps per forward, wall time, audio seconds and
    real-time factor (``rtf`` = wall time / audio seconds; below 1 is faster than real time)."""
    seconds = samples / sample_rate
    out = {"method": stats.method, "forward_passes": stats.forward_passes, "steps": stats.tokens,
           "steps_per_forward": round(stats.tokens_per_forward, 4), "wall_time": round(stats.wall_time, 4),
           "samples": samples, "sample_rate": sample_rate, "audio_seconds": round(seconds, 4),
           "rtf": round(stats.wall_time / seconds, 4) if seconds else None}
    if first_chunk_time is not None:
        out["time_to_first_chunk"] = round(first_chunk_time, 4)
    return out


def cmd_tts(args) -> int:
    """Text -> 16-bit PCM WAV at the model's rate (atomic), stats as one JSON line."""
    import torch

    from .train.common import set_threads

    set_threads(args.threads)
    out_path = Path(args.out)
    if out_path.suffix.lower() != ".wav":
        raise ValueError(f"--out must name a .wav file, got {args.out!r}")
    sf = _soundfile()
    pipe = load_speech_pipeline(args.model)
    kw = dict(voice=args.voice, mctp=args.mctp, temperature=args.temperature, top_k=args.top_k,
              max_seconds=args.max_seconds, generator=torch.Generator(device=pipe.device).manual_seed(args.seed))
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        if args.stream:
            stream = pipe.stream(args.text, **kw)
            chunks = iter(stream)
            first = next(chunks, None)  # bad input raises here, before any file or folder exists
            out_path.parent.mkdir(parents=True, exist_ok=True)
            with sf.SoundFile(tmp, "w", samplerate=pipe.sample_rate, channels=1, subtype="PCM_16",
                              format="WAV") as f:
                if first is not None:  # chunks go to disk as they arrive
                    f.write(pcm16(first))
                    for chunk in chunks:
                        f.write(pcm16(chunk))
            summary = speech_summary(stream.stats, stream.samples, pipe.sample_rate, stream.first_chunk_time)
        else:
            res = pipe(args.text, **kw)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(wav_bytes(res.audios[0, 0, :res.lengths[0]], pipe.sample_rate))
            summary = speech_summary(res.stats, res.lengths[0], pipe.sample_rate)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    summary.update(voice=args.voice or pipe.voices[0], seed=args.seed, stream=args.stream)
    print(json.dumps({"out": str(out_path), "stats": summary}))
    return 0


def cmd_batch_tts(args) -> int:
    """Texts file -> one WAV per line + metadata.jsonl (resumable, multi-process)."""
    from .pipelines.batch_speech import read_texts, run_batch_tts
    from .train.common import set_threads

    set_threads(args.threads)
    items = read_texts(args.texts, base_seed=args.seed)
    summary = run_batch_tts(items, args.out, args.model, voice=args.voice, mctp=args.mctp,
                            temperature=args.temperature, top_k=args.top_k, max_seconds=args.max_seconds,
                            batch_size=args.batch_size, cpu=True if args.cpu else None,
                            progress=not args.no_progress)
    return _report_batch(summary)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmgen", description="token-based multimodal generation")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate images from a prompt or a class id")
    g.add_argument("--prompt", default=None)
    g.add_argument("--class", dest="class_id", type=int, default=None)
    g.add_argument("--model", default=None, help="shipped model name or local pipeline folder")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=1, help="images to generate")
    g.add_argument("--out", default="out.png")
    add_sampling_args(g)
    g.set_defaults(fn=cmd_generate)
    b = sub.add_parser("batch", help="generate a folder of images (+ metadata.jsonl, grid.png) from a prompts "
                       "file or class list; resumable; split across processes under torchrun / accelerate launch")
    b.add_argument("input", nargs="?", default=None, help="prompts .txt (one per line) or .jsonl "
                   '({"prompt": ..., "seed": ...} or {"class_label": ...} per line)')
    b.add_argument("--classes", type=_class_list, default=None, help="comma-separated class ids, e.g. 0,1,2")
    b.add_argument("--per-class", type=int, default=1, help="images per class with --classes")
    b.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    b.add_argument("--model", default=None, help="shipped model name or local pipeline folder "
                   "(default: scenes-t2i for prompts, digits-c2i for classes)")
    b.add_argument("--seed", type=int, default=0, help="base seed: item i uses seed + i unless its jsonl line sets one")
    b.add_argument("--batch-size", type=int, default=8, help="items per forward batch (fixed chunks of indices)")
    b.add_argument("--grid-max", type=int, default=64, help="items in the preview grid (0 = no grid)")
    b.add_argument("--cpu", action="store_true", help="force CPU (gloo) even when CUDA is available")
    b.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    add_sampling_args(b)
    b.set_defaults(fn=cmd_batch)
    t = sub.add_parser("tts", help="synthesize speech from text into a 16-bit PCM WAV (16 kHz)")
    t.add_argument("text", help="lowercase a-z, space and apostrophe (case and runs of spaces are normalised)")
    t.add_argument("--out", default="out.wav", help="output .wav (written to a temp file, renamed when complete)")
    add_speech_args(t)
    t.add_argument("--seed", type=int, default=0, help="sampling seed (no effect when greedy, --temperature 0)")
    t.add_argument("--stream", action="store_true", help="stream: write audio chunks as they are generated "
                   "(same samples as without it) and report the time to the first chunk")
    t.set_defaults(fn=cmd_tts)
    bt = sub.add_parser("batch-tts", help="synthesize a folder of WAVs (+ metadata.jsonl) from a texts file; "
                        "resumable; split across processes under torchrun / accelerate launch")
    bt.add_argument("--texts", required=True, help='.txt (one text per line) or .jsonl ({"text": ..., '
                    '"seed": ..., "voice": ...} per line; seed and voice optional)')
    bt.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    add_speech_args(bt)
    bt.add_argument("--seed", type=int, default=0, help="base seed: item i uses seed + i unless its jsonl line sets one")
    bt.add_argument("--batch-size", type=int, default=8, help="items per forward batch (fixed chunks of indices; "
                    "greedy only: with --temperature > 0 each item runs alone with its own seed)")
    bt.add_argument("--cpu", action="store_true", help="force CPU (gloo) even when CUDA is available")
    bt.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    bt.set_defaults(fn=cmd_batch_tts)
    tk = sub.add_parser("tokenize", help="encode an image with a visual tokenizer (ids + layout as JSON) and "
                        "optionally write the image decoded back from the ids")
    tk.add_argument("image", help="input image (resized to the tokenizer's size, 64x64)")
    tk.add_argument("--tokenizer", default="vq-local",
                    help="shipped tokenizer or pipeline name, or a local folder (default: the patch-local VQ, the "
                         "sharpest shipped 16x16 tokenizer on scenes, photos and digits)")
    tk.add_argument("--out", default=None, help="write the reconstruction here (PNG, atomic)")
    tk.add_argument("--length", type=int, default=None, help="decode only the first LENGTH tokens (One-D-Piece)")
    tk.add_argument("--seed", type=int, default=0, help="seed of a sampling decoder (SEED with its renderer)")
    tk.set_defaults(fn=cmd_tokenize)
    i = sub.add_parser("info", help="list shipped models and their measured figures")
    i.set_defaults(fn=cmd_info)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:
        print(f"mmgen: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
