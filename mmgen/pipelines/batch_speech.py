"""Batch speech synthesis: a texts file -> one 16-bit PCM WAV per line and ``metadata.jsonl``.

Same guarantees and scale-out as the image batch (:mod:`mmgen.pipelines.batch`, whose helpers this reuses):

* **Seeds**: item ``i`` uses ``base_seed + i`` (or its jsonl ``"seed"``). Greedy decoding (temperature 0,
  the default) ignores seeds and batches fixed chunks of ``batch_size`` consecutive items (split by voice);
  with sampling each item runs alone with its own ``torch.Generator``, since the pipeline draws a whole
  batch from one generator. Either way an item's samples depend neither on the number of processes nor
  on which items were already done.
* **Atomic + resumable**: WAV first (temp file + ``os.replace``), then its record in ``.parts/``; an item
  is done when both exist, so rerunning the same command skips it. Other settings in the same folder are refused.
* **Scale-out**: ``PartialState.split_between_processes`` over the chunks; rank 0 merges the records
  into ``metadata.jsonl`` after ``wait_for_everyone``. Works under ``torchrun`` and ``accelerate launch``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio.corpus import check_text
from .batch import (METADATA, PARTS, _as_int, _as_seed, atomic_write_bytes, json_settings, merge_records, open_run,
                    pending_chunks)

KEY = "id"


@dataclass(frozen=True)
class SpeechItem:
    """One utterance; ``voice`` None = the run's voice."""

    index: int
    text: str
    seed: int
    voice: "str | None" = None

    @property
    def filename(self) -> str:
        return f"{self.index:05d}.wav"


def read_texts(source: "str | os.PathLike", base_seed: int = 0) -> list[SpeechItem]:
    """Items from a ``.txt`` (one text per non-empty line) or ``.jsonl`` (``{"text": ..., "seed": ...,
    "voice": ...}`` per line, seed and voice optional). Texts are checked (alphabet, non-empty) up front."""
    base_seed = _as_seed(base_seed, "seed")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"texts: no such file {str(path)!r}")
    lines = [(n, ln.strip()) for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln]
    if path.suffix == ".txt":
        raw = [(n, {"text": ln}) for n, ln in lines]
    elif path.suffix == ".jsonl":
        raw = []
        for n, ln in lines:
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError as e:
                raise ValueError(f"texts: {path.name} line {n} is not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or "text" not in rec:
                raise ValueError(f"texts: {path.name} line {n} needs a 'text' field")
            unknown = set(rec) - {"text", "seed", "voice"}
            if unknown:
                raise ValueError(f"texts: {path.name} line {n} has unknown keys {sorted(unknown)}")
            raw.append((n, rec))
    else:
        raise ValueError(f"texts must be a .txt or .jsonl file, got {path.name!r}")
    if not raw:
        raise ValueError("texts: the file holds no texts")
    items = []
    for i, (n, r) in enumerate(raw):
        try:
            text = check_text(r["text"])
        except ValueError as e:
            raise ValueError(f"texts: {path.name} line {n}: {e}") from None
        voice = r.get("voice")
        if voice is not None and not isinstance(voice, str):
            raise ValueError(f"texts: {path.name} line {n}: voice must be a string, got {voice!r}")
        seed = _as_seed(r["seed"], f"seed on line {n}") if "seed" in r else base_seed + i
        items.append(SpeechItem(i, text, seed, voice))
    return items


def _groups(chunk: list[SpeechItem], voices: dict[int, str], sampling: bool) -> list[list[SpeechItem]]:
    """Pipeline calls for one chunk: one per item when sampling, else one per voice (in order of first use)."""
    if sampling:
        return [[it] for it in chunk]
    by_voice: dict[str, list[SpeechItem]] = {}
    for it in chunk:
        by_voice.setdefault(voices[it.index], []).append(it)
    return list(by_voice.values())


def run_batch_tts(items: list[SpeechItem], out_dir: "str | os.PathLike", model: "str | None" = None, *,
                  voice: "str | None" = None, mctp: "int | None" = None, temperature: float = 0.0,
                  top_k: "int | None" = None, max_seconds: "float | None" = None, batch_size: int = 8,
                  cpu: "bool | None" = None, progress: bool = True) -> dict:
    """Synthesize every unfinished item into ``out_dir`` on this process's share; returns a summary.

    ``model``: SpeechPipeline folder or shipped name (default ``tts``). ``voice``: default for items without
    one (default: the model's first). ``mctp``: steps per forward (default: the model's maximum).
    """
    from tqdm.auto import tqdm

    from ..assets import model_path
    from ..cli import TTS_MODEL, load_speech_pipeline, wav_bytes

    if not items:
        raise ValueError("items must be a non-empty list")
    if _as_int(batch_size, "batch_size") < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sorted(it.index for it in items) != list(range(len(items))):
        raise ValueError("items must be indexed 0..n-1 (use read_texts)")
    ckpt = model_path(model or TTS_MODEL).resolve()
    pipe = load_speech_pipeline(str(ckpt))
    voice = voice or pipe.voices[0]
    voices = {it.index: it.voice or voice for it in items}
    for it in items:  # every argument and text checked before any work, errors name the argument
        pipe._inputs(it.text, voices[it.index], mctp, max_seconds, temperature, top_k=top_k)
    mctp = pipe.transformer.config.mctp if mctp is None else mctp
    settings = json_settings({"checkpoint": str(ckpt), "mctp": mctp, "temperature": temperature, "top_k": top_k,
                              "max_seconds": max_seconds})

    state, out, done = open_run(out_dir, cpu, KEY)
    for it in items:
        rec = done.get(it.index)
        if rec is None:
            continue
        mine = {**settings, "text": it.text, "voice": voices[it.index], "seed": it.seed}
        theirs = {k: rec.get(k) for k in mine}
        if theirs != json.loads(json.dumps(mine)):
            raise ValueError(f"out_dir {str(out)!r} already holds item {it.index} made with different settings "
                             f"({theirs} != {mine}); use a new folder")
    pipe.to(state.device)

    sampling = temperature > 0
    pending = pending_chunks(items, batch_size, done)
    generated = 0
    with state.split_between_processes(pending) as my_chunks:
        todo = sum(1 for c in my_chunks for it in c if it.index not in done)
        bar = tqdm(total=todo, desc=f"rank {state.process_index}/{state.num_processes}", unit="wav",
                   position=state.process_index, disable=not progress or todo == 0)
        for chunk in my_chunks:
            for group in _groups(chunk, voices, sampling):
                gen = torch.Generator(device=state.device).manual_seed(group[0].seed) if sampling else None
                res = pipe([it.text for it in group], voice=voices[group[0].index], mctp=mctp,
                           temperature=temperature, top_k=top_k, max_seconds=max_seconds, generator=gen)
                for row, it in enumerate(group):
                    if it.index in done:
                        continue
                    n = res.lengths[row]
                    atomic_write_bytes(out / it.filename, wav_bytes(res.audios[row, 0, :n], pipe.sample_rate))
                    rec = {KEY: it.index, "file": it.filename, "text": it.text, "voice": voices[it.index],
                           "seed": it.seed, "seconds": round(n / pipe.sample_rate, 4), "samples": n,
                           "forward_passes": res.stats.forward_passes,
                           "steps_per_forward": round(res.stats.tokens_per_forward, 4), "batch_rows": len(group),
                           **settings, "rank": state.process_index, "world_size": state.num_processes}
                    atomic_write_bytes(out / PARTS / f"{it.index:05d}.json", json.dumps(rec).encode())
                    generated += 1
                    bar.update(1)
        bar.close()
    state.wait_for_everyone()
    summary = {"out": str(out), "items": len(items), "generated_here": generated, "skipped": len(done),
               "process_index": state.process_index, "num_processes": state.num_processes}
    if state.is_main_process:
        records = merge_records(out, KEY)
        summary.update(metadata=str(out / METADATA), complete=all(it.index in records for it in items))
    state.wait_for_everyone()
    return summary
