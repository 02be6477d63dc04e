"""Semantic speech tokens: k-means over log-mel frames (the "SSL features + k-means" recipe, on mel).

Discrete speech units in the style of HuBERT units / DASB's k-means tokens (Lakhotia et al. 2021;
Mousavi et al. 2024), with standardised 80-bin log-mel frames (62.5 Hz) standing in for a
self-supervised encoder (none can be downloaded here). K = 256 by default; one token per frame.
The path back to a waveform is the cluster centroid's log-mel + Griffin-Lim (the baseline vocoder
the issue allows).

Fit: k-means++ seeding from a passed ``torch.Generator`` and Lloyd iterations in torch (batched
``cdist``), empty clusters re-seeded from the frames farthest from their centroid; same data and
seed give the same codebook bit for bit.
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..safetensors_only import SafetensorsOnly
from .features import MelConfig, check_waveform, log_mel, vocode


def kmeans(x: torch.Tensor, k: int, iters: int = 25, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (N, D) float -> centroids (k, D): k-means++ init then Lloyd; deterministic given ``generator``."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} vectors, got {n}")
    first = torch.randint(n, (1,), generator=generator)
    cent = [x[first]]
    d2 = torch.cdist(x, cent[0]).squeeze(1).pow(2)  # (N,)
    for _ in range(1, k):
        if not d2.sum() > 0:
            raise ValueError(f"k-means needs at least k={k} distinct vectors, got {len(cent)}")
        idx = torch.multinomial(d2 / d2.sum(), 1, generator=generator)
        cent.append(x[idx])
        d2 = torch.minimum(d2, torch.cdist(x, x[idx]).squeeze(1).pow(2))
    c = torch.cat(cent)  # (k, D)
    for _ in range(iters):
        dist = torch.cdist(x, c)  # (N, k)
        assign = dist.argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        new = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # re-seed from the worst-fitted frames
            worst = dist.gather(1, assign[:, None]).squeeze(1).topk(len(empty)).indices
            new[empty] = x[worst]
        c = new
    return c


class KMeansSpeechTokenizer(SafetensorsOnly, ModelMixin, ConfigMixin):
    """One token per log-mel frame: the nearest of K centroids of standardised log-mel frames."""

    @register_to_config
    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 80,
                 codebook_size: int = 256, griffin_lim_iters: int = 32):
        super().__init__()
        self.mel_cfg = MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
        self.register_buffer("centroids", torch.zeros(codebook_size, n_mels))  # standardised log-mel
        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))

    @property
    def frame_rate(self) -> float:
        return self.mel_cfg.frame_rate

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        """(K, n_mels) centroids in standardised log-mel space."""
        return self.centroids

    def bitrate(self) -> float:
        return self.frame_rate * math.log2(self.codebook_size)

    @torch.no_grad()
    def fit(self, frames: torch.Tensor, iters: int = 25, generator: torch.Generator | None = None):
        """frames (N, n_mels) log-mel -> fits normalisation and centroids in place; returns self."""
        self.mel_mean.copy_(frames.mean(0))
        self.mel_std.copy_(frames.std(0).clamp_min(1e-3))
        self.centroids.copy_(kmeans((frames - self.mel_mean) / self.mel_std, self.codebook_size, iters, generator))
        return self

    @torch.no_grad()
    def encode_mel(self, logmel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, n_mels, F) -> tokens (B, F) long."""
        z = (logmel.transpose(1, 2) - self.mel_mean) / self.mel_std  # (B, F, n_mels)
        return torch.cdist(z, self.centroids[None].expand(z.shape[0], -1, -1)).argmin(-1)

    @torch.no_grad()
    def encode(self, audio, sample_rate: int = 16000) -> torch.Tensor:
        """audio (T,) or (B, T) at 16 kHz -> tokens (B, F) long at 62.5 Hz."""
        wav = check_waveform(audio, sample_rate, self.config.sample_rate).to(self.mel_mean.device)
        return self.encode_mel(log_mel(wav, self.mel_cfg))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, F) -> waveform (B, F * hop) via centroid log-mel + Griffin-Lim."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.numel() == 0 or tokens.min() < 0 or tokens.max() >= self.codebook_size:
            raise ValueError(f"tokens must be (B, F) integers in [0, {self.codebook_size}), got shape {tuple(tokens.shape)}")
        mel = self.centroids[tokens.long()] * self.mel_std + self.mel_mean  # (B, F, n_mels)
        return vocode(mel.transpose(1, 2), self.mel_cfg, n_iter=self.config.griffin_lim_iters)
