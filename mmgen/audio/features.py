"""Log-mel features and their inversion to a waveform (mel pseudo-inverse + Griffin-Lim).

The speech tokenizers of this package work on log-mel frames (16 kHz, n_fft 1024, hop 256 ->
62.5 frames/s, 80 Slaney mel bands 0-8 kHz, natural log floored at 1e-5), the recipe measured in
the project's audio notes. The way back to a waveform is Griffin-Lim (Griffin & Lim 1984) on the
linear magnitude recovered by the clamped pseudo-inverse of the mel basis: a training-free
vocoder, deterministic (zero initial phase), with a chunked mode used for streaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import math

import numpy as np
import torch
import torch.nn.functional as F

from .corpus import SAMPLE_RATE


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


@lru_cache(maxsize=8)
def _mel_basis(cfg: MelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_mels, n_fft//2+1) Slaney mel filterbank (librosa) and its clamped pseudo-inverse."""
    import librosa

    basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    basis = torch.from_numpy(basis).float()
    return basis, torch.linalg.pinv(basis)


def check_waveform(wav, sample_rate: int, expected: int = SAMPLE_RATE, name: str = "audio") -> torch.Tensor:
    """Validate and convert audio to float32 (B, T); raise ValueError naming the bad argument."""
    if int(sample_rate) != expected:
        raise ValueError(f"sample_rate must be {expected} Hz, got {sample_rate}; resample the audio first")
    x = torch.as_tensor(np.asarray(wav) if not torch.is_tensor(wav) else wav, dtype=torch.float32)
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise ValueError(f"{name} must be (T,) or (B, T) samples, got shape {tuple(x.shape)}")
    if x.shape[1] < 1024:
        raise ValueError(f"{name} must hold at least 1024 samples (64 ms), got {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def log_mel(wav: torch.Tensor, cfg: MelConfig = MelConfig()) -> torch.Tensor:
    """wav (B, T) float -> log-mel (B, n_mels, F) with F = T // hop + 1 (centered frames)."""
    basis, _ = _mel_basis(cfg)
    window = torch.hann_window(cfg.n_fft, device=wav.device)
    spec = torch.stft(wav, cfg.n_fft, cfg.hop_length, window=window, center=True, return_complex=True)
    mag = spec.abs()  # (B, n_fft//2+1, F)
    mel = torch.einsum("mf,bft->bmt", basis.to(wav.device), mag)
    return torch.log(mel.clamp_min(cfg.log_floor))


def griffin_lim(logmel: torch.Tensor, cfg: MelConfig = MelConfig(), n_iter: int = 32) -> torch.Tensor:
    """log-mel (B, n_mels, F) -> waveform (B, F * hop): mel pseudo-inverse, then Griffin-Lim from zero phase.

    Uses the "fast Griffin-Lim" momentum of Perraudin et al. (2013), alpha 0.99. Deterministic.
    Inputs shorter than 3 frames are padded with silence (STFT reflect padding needs > n_fft / 2 samples).
    """
    f_in = logmel.shape[-1]
    if f_in < 3:
        logmel = F.pad(logmel, (0, 3 - f_in), value=math.log(cfg.log_floor))
        return griffin_lim(logmel, cfg, n_iter)[:, :f_in * cfg.hop_length]
    _, inv = _mel_basis(cfg)
    mag = torch.einsum("fm,bmt->bft", inv.to(logmel.device), logmel.float().exp()).clamp_min(0.0)  # (B, Fq, F)
    window = torch.hann_window(cfg.n_fft, device=logmel.device)
    n = logmel.shape[-1] * cfg.hop_length
    angles = torch.ones_like(mag, dtype=torch.complex64)
    prev = torch.zeros_like(angles)
    for _ in range(n_iter):
        wav = torch.istft(mag * angles, cfg.n_fft, cfg.hop_length, window=window, center=True, length=n)
        rebuilt = torch.stft(wav, cfg.n_fft, cfg.hop_length, window=window, center=True,
                             return_complex=True)[..., :mag.shape[-1]]  # (B, Fq, F)
        accel = rebuilt - 0.99 * prev
        angles = accel / accel.abs().clamp_min(1e-8)
        prev = rebuilt
    return torch.istft(mag * angles, cfg.n_fft, cfg.hop_length, window=window, center=True, length=n)


def chunk_span(index: int, chunk: int = 32, first: int | None = None, head: int | None = None) -> tuple[int, int]:
    """Frames [start, end) of streamed vocoder chunk ``index`` (``end`` not clipped to the utterance).

    Chunks are ``chunk`` frames long, except that a smaller ``first`` splits the first ``chunk`` frames
    into [0, first) and [first, chunk), so the first audio needs fewer frames; later chunks keep the
    multiples of ``chunk`` as boundaries. ``head`` adds a leading piece [0, head) (the frames of the
    generator's first forward, vocoded causally, see :func:`vocode_chunk`); the next piece then starts
    at ``head`` and ends at the first regular boundary after it."""
    first = _check_chunking(chunk, first, head)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    start = 0
    for i, end in enumerate(_chunk_ends(chunk, first, head)):
        if i == index:
            return start, end
        start = end
    raise AssertionError("unreachable: _chunk_ends is infinite")


def _chunk_ends(chunk: int, first: int, head: int | None):
    """Right ends of the pieces: ``head``, then ``first``, ``chunk``, 2 ``chunk``, ... beyond it (endless)."""
    if head is not None:
        yield head
    if head is None or first > head:
        if first < chunk:
            yield first
    end = chunk
    while True:
        if head is None or end > head:
            yield end
        end += chunk


def _check_chunking(chunk: int, first: int | None, head: int | None = None) -> int:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    first = chunk if first is None else first
    if not 1 <= first <= chunk:
        raise ValueError(f"first must be in [1, chunk={chunk}], got {first}")
    if head is not None and head < 1:
        raise ValueError(f"head must be >= 1 frames (or None), got {head}")
    return first


def num_chunks(n_frames: int, chunk: int = 32, first: int | None = None, head: int | None = None) -> int:
    """How many :func:`chunk_span` pieces cover ``n_frames`` frames."""
    first = _check_chunking(chunk, first, head)
    count = 0
    if n_frames <= 0:
        return 0
    for end in _chunk_ends(chunk, first, head):
        count += 1
        if end >= n_frames:
            return count
    raise AssertionError("unreachable")


def vocode_chunk(logmel: torch.Tensor, index: int, cfg: MelConfig = MelConfig(), chunk: int = 32,
                 context: int = 8, n_iter: int = 32, first: int | None = None,
                 head: int | None = None) -> torch.Tensor:
    """Waveform (B, <= span * hop) of the frames of :func:`chunk_span` ``index`` of log-mel (B, n_mels, F).

    Griffin-Lim runs on those frames plus up to ``context`` frames each side, so the piece depends
    only on frames < end + context: a streaming caller may vocode it as soon as they exist. The
    ``head`` piece (index 0 when ``head`` is set) is causal: Griffin-Lim on its own frames only, and the
    caller passes the log-mel decoded from those frames' codes alone, so it needs nothing that the
    generator's first forward did not produce.
    """
    f_total, hop = logmel.shape[-1], cfg.hop_length
    start, end = chunk_span(index, chunk, first, head)
    end = min(f_total, end)
    if head is not None and index == 0:
        lo, hi = 0, end
    else:
        lo, hi = max(0, start - context), min(f_total, end + context)
    wav = griffin_lim(logmel[..., lo:hi], cfg, n_iter)  # (B, (hi - lo) * hop)
    return wav[:, (start - lo) * hop:(end - lo) * hop].clamp(-1, 1)


def griffin_lim_chunks(logmel: torch.Tensor, cfg: MelConfig = MelConfig(), chunk: int = 32, context: int = 8,
                       n_iter: int = 32, first: int | None = None, head: int | None = None,
                       head_logmel: torch.Tensor | None = None):
    """Yield :func:`vocode_chunk` pieces 0, 1, ... covering log-mel (B, n_mels, F); they concatenate to
    :func:`vocode`. With ``head``, piece 0 is vocoded from ``head_logmel`` (default ``logmel``)."""
    for i in range(num_chunks(logmel.shape[-1], chunk, first, head)):
        src = head_logmel if (head is not None and i == 0 and head_logmel is not None) else logmel
        yield vocode_chunk(src, i, cfg, chunk, context, n_iter, first, head)


def vocode(logmel: torch.Tensor, cfg: MelConfig = MelConfig(), chunk: int = 32, context: int = 8,
           n_iter: int = 32, first: int | None = None, head: int | None = None,
           head_logmel: torch.Tensor | None = None) -> torch.Tensor:
    """log-mel (B, n_mels, F) -> waveform (B, F * hop) in [-1, 1]: the concatenated chunks."""
    return torch.cat(list(griffin_lim_chunks(logmel, cfg, chunk, context, n_iter, first, head, head_logmel)), dim=-1)
