"""Deterministic English speech corpus: a templated sentence grammar spoken by eSpeak NG at 16 kHz.

Grammar: ``DET ADJ NOUN VERB DET [ADJ] NOUN [PLACE]``, e.g. "the red dog follows a cat near the river"
(6 289 920 sentences; every word is in PocketSphinx's CMUdict). Sentences are addressed by a
mixed-radix index, so sampling never enumerates the grammar. The training pool is a fixed set of
``POOL_SIZE`` sentences; ``TEST_SENTENCES`` (held out by whole sentence) never occur in it.

CLI: ``python -m mmgen.audio.corpus --out data/speech --n 600 --seed 0``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
ALPHABET = "abcdefghijklmnopqrstuvwxyz '"

DETERMINERS = ("the", "a")
ADJECTIVES = ("red", "blue", "green", "yellow", "purple", "brown",
              "small", "big", "little", "happy", "sleepy", "hungry")
NOUNS = ("dog", "cat", "bird", "horse", "rabbit", "monkey",
         "tiger", "farmer", "teacher", "doctor", "baby", "pilot")
VERBS = ("follows", "watches", "finds", "likes", "chases", "helps", "pushes", "carries", "calls", "visits")
PLACES = ("", "in the garden", "near the river", "on the bridge", "under the table",
          "behind the house", "at the station")
# Slots of the template; "" = slot left out.
_SLOTS: tuple[tuple[str, ...], ...] = (DETERMINERS, ADJECTIVES, NOUNS, VERBS,
                                       DETERMINERS, ("",) + ADJECTIVES, NOUNS, PLACES)
GRAMMAR_SIZE = int(np.prod([len(s) for s in _SLOTS]))  # 6 289 920
POOL_SIZE = 4096

VOICES = ("en-us+f2", "en-us+f3", "en-us+f4")  # female variants: male eSpeak voices confuse PocketSphinx
SPEEDS = (150, 175)                           # words per minute, cycled in training
TEST_VOICE, TEST_SPEED = "en-us+f2", 165

# Fixed held-out list (drawn once from the grammar); removed from the training pool.
TEST_SENTENCES: tuple[str, ...] = (
    "the green rabbit watches a sleepy horse",
    "a hungry doctor finds the monkey near the river",
    "the small pilot carries a yellow baby on the bridge",
    "a purple teacher calls the dog",
    "the brown tiger helps a little farmer behind the house",
    "a red cat pushes the hungry bird at the station",
    "the happy horse visits a doctor in the garden",
    "a blue monkey likes the small tiger under the table",
    "the sleepy farmer chases a red rabbit",
    "a little bird follows the pilot near the river",
    "the yellow dog watches a brown teacher on the bridge",
    "a big baby finds the purple cat",
    "the hungry teacher pushes a blue horse behind the house",
    "a green doctor carries the baby at the station",
    "the red monkey calls a happy pilot in the garden",
    "a small rabbit helps the green farmer",
    "the purple bird visits a tiger under the table",
    "a brown horse likes the little dog near the river",
    "the little cat chases a hungry doctor on the bridge",
    "a sleepy pilot follows the yellow monkey",
    "the blue farmer finds a big bird behind the house",
    "a happy tiger watches the red teacher at the station",
    "the big dog pushes a green rabbit in the garden",
    "a yellow teacher carries the sleepy cat",
)

CORPUS_VERSION = 1  # bump when the grammar, pool or audio pipeline changes


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted."""
    words = {w for slot in _SLOTS for phrase in slot for w in phrase.split()}
    return sorted(words)


def sentence(index: int) -> str:
    """The grammar's sentence number ``index`` in [0, GRAMMAR_SIZE) (mixed-radix decoding)."""
    if not 0 <= index < GRAMMAR_SIZE:
        raise ValueError(f"index must be in [0, {GRAMMAR_SIZE}), got {index}")
    parts = []
    for slot in reversed(_SLOTS):
        index, r = divmod(index, len(slot))
        parts.append(slot[r])
    return " ".join(p for p in reversed(parts) if p)


def _rand_below(rng: random.Random, n: int) -> int:
    # Only Random.random() is guaranteed stable across Python versions.
    return min(int(rng.random() * n), n - 1)


@lru_cache(maxsize=1)
def training_pool() -> tuple[str, ...]:
    """The fixed training pool: ``POOL_SIZE`` distinct grammar sentences, none in TEST_SENTENCES."""
    rng, held_out = random.Random(0), set(TEST_SENTENCES)
    seen: set[str] = set()
    pool: list[str] = []
    while len(pool) < POOL_SIZE:
        s = sentence(_rand_below(rng, GRAMMAR_SIZE))
        if s not in seen and s not in held_out:
            seen.add(s)
            pool.append(s)
    return tuple(pool)


def sentence_pool(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct training sentences (a seeded permutation of the training pool, first n)."""
    if not 0 <= n <= POOL_SIZE:
        raise ValueError(f"n must be in [0, {POOL_SIZE}], got {n}")
    pool, rng = list(training_pool()), random.Random(seed)
    for i in range(len(pool) - 1, 0, -1):  # Fisher-Yates
        j = _rand_below(rng, i + 1)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:n]


def check_text(text: str, max_chars: int = 200) -> str:
    """Normalise ``text`` (lowercase, single spaces, stripped) and validate it for synthesis."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    norm = re.sub(r"\s+", " ", text.lower()).strip()
    if not norm:
        raise ValueError("text must be non-empty (after stripping whitespace)")
    bad = sorted(set(norm) - set(ALPHABET))
    if bad:
        raise ValueError(f"text contains characters outside the allowed set {ALPHABET!r} "
                         f"(lowercase a-z, space, apostrophe): {bad}")
    if len(norm) > max_chars:
        raise ValueError(f"text must have 1..{max_chars} characters, got {len(norm)}")
    return norm


def _espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found on PATH; install it with `apt-get install espeak-ng`")
    return exe


def trim_silence(x: np.ndarray, sample_rate: int = SAMPLE_RATE, threshold_db: float = -40.0,
                 margin_s: float = 0.02) -> np.ndarray:
    """Drop leading/trailing 10 ms frames whose RMS is ``threshold_db`` below the loudest frame."""
    hop = max(1, sample_rate // 100)
    n_frames = len(x) // hop
    if n_frames == 0:
        return x
    rms = np.sqrt(np.mean(x[: n_frames * hop].reshape(n_frames, hop).astype(np.float64) ** 2, axis=1))
    active = np.flatnonzero(rms > max(rms.max() * 10 ** (threshold_db / 20), 1e-5))
    if active.size == 0:
        return x
    margin = int(margin_s * sample_rate)
    start = max(0, active[0] * hop - margin)
    end = min(len(x), (active[-1] + 1) * hop + margin)
    return x[start:end]


def synthesize(text: str, voice: str = TEST_VOICE, speed: int = TEST_SPEED) -> np.ndarray:
    """eSpeak NG speech for ``text``: float32 mono (T,) at 16 kHz, trimmed, peak 0.9. Deterministic up to the
    breath noise of variants such as +f2, which eSpeak NG 1.51 draws from the C library's ``rand()``
    (espeak-ng issue #1528): a rare call differs by ~1e-4 in some samples."""
    import soundfile as sf
    from scipy.signal import resample_poly

    text = check_text(text)
    proc = subprocess.run([_espeak_binary(), "--stdout", "-v", voice, "-s", str(int(speed)), text],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for voice={voice!r} speed={speed}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    x, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")  # (T,) int16 -> float32 at 22050 Hz
    if x.ndim > 1:
        x = x.mean(axis=1)
    if sr != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng returned {sr} Hz audio, expected {ESPEAK_RATE}")
    y = resample_poly(x.astype(np.float64), 320, 441)  # 22050 -> 16000 Hz
    y = trim_silence(y)
    peak = np.abs(y).max() if y.size else 0.0
    if peak > 0:
        y = y * (0.9 / peak)
    return y.astype(np.float32)


def _corpus_items(n: int, seed: int) -> list[dict]:
    items = []
    for i, text in enumerate(sentence_pool(n, seed)):
        items.append(dict(id=f"train-{i:05d}", text=text, voice=VOICES[i % len(VOICES)],
                          speed=SPEEDS[(i // len(VOICES)) % len(SPEEDS)], split="train"))
    for i, text in enumerate(TEST_SENTENCES):
        items.append(dict(id=f"test-{i:03d}", text=text, voice=TEST_VOICE, speed=TEST_SPEED, split="test"))
    return items


def _manifest(n: int, seed: int) -> dict:
    return dict(version=CORPUS_VERSION, n=n, seed=seed, sample_rate=SAMPLE_RATE,
                num_test=len(TEST_SENTENCES), voices=list(VOICES), speeds=list(SPEEDS))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_corpus(out_dir: str | os.PathLike, n: int = 600, seed: int = 0, verbose: bool = False) -> Path:
    """Write ``wav/{id}.wav`` (16-bit PCM, 16 kHz), ``metadata.jsonl`` and ``corpus.json`` to ``out_dir``.

    Built in a sibling temp dir and renamed into place, so ``out_dir`` exists only when complete.
    Rerunning with the same (n, seed) on a complete corpus is a no-op; other settings raise ValueError.
    """
    import soundfile as sf

    out = Path(out_dir)
    manifest = _manifest(n, seed)
    if (out / "corpus.json").is_file():
        found = json.loads((out / "corpus.json").read_text())
        if found != manifest:
            raise ValueError(f"out_dir {out} holds a corpus built with {found}, not {manifest}; "
                             "delete it or choose another out_dir")
        return out
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out_dir {out} exists and is not a corpus (no corpus.json); use an empty or new directory")
    _espeak_binary()
    items = _corpus_items(n, seed)  # validates n
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by killed runs
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "wav").mkdir(parents=True)
        with open(tmp / "metadata.jsonl", "w") as f:
            for k, item in enumerate(items):
                audio = synthesize(item["text"], item["voice"], item["speed"])
                sf.write(tmp / "wav" / f"{item['id']}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
                f.write(json.dumps({**item, "num_samples": int(audio.shape[0])}) + "\n")
                if verbose and (k + 1) % 100 == 0:
                    print(f"{k + 1}/{len(items)} utterances", flush=True)
        (tmp / "corpus.json").write_text(json.dumps(manifest) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_corpus(corpus_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Metadata rows of a built corpus (``split`` None/"train"/"test"), each with ``audio``: float32 (T,) at 16 kHz."""
    import soundfile as sf

    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    root = Path(corpus_dir)
    if not (root / "corpus.json").is_file():
        raise FileNotFoundError(f"{root} is not a built corpus (no corpus.json); run "
                                "`python -m mmgen.audio.corpus --out DIR` first")
    rows = []
    with open(root / "metadata.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if split is None or row["split"] == split:
                audio, sr = sf.read(root / "wav" / f"{row['id']}.wav", dtype="float32")
                assert sr == SAMPLE_RATE, (sr, row["id"])
                rows.append({**row, "audio": audio})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Build the eSpeak NG speech corpus (16 kHz wav + metadata.jsonl).")
    p.add_argument("--out", default="data/speech", help="output directory (created atomically)")
    p.add_argument("--n", type=int, default=600, help=f"training utterances (<= {POOL_SIZE})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = build_corpus(args.out, n=args.n, seed=args.seed, verbose=True)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    secs = sum(r["num_samples"] for r in rows) / SAMPLE_RATE
    print(f"{out}: {len(rows)} utterances ({sum(r['split'] == 'test' for r in rows)} test), {secs:.0f} s of audio")


if __name__ == "__main__":
    main()
