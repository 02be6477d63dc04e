"""Dual speech tokens (DualSpeechLM idea, arXiv 2508.08961): text-aligned semantic tokens in, acoustic tokens out.

``CTCSpeechTokenizer`` is the understanding-driven semantic tokenizer: a convolutional encoder over
log-mel frames, downsampled 2x (31.25 tokens/s), a VQ bottleneck (vector-quantize-pytorch, 256 codes),
and a small CTC head over characters trained on the transcripts, so the discrete tokens must carry
the text (DualSpeechLM's USTokenizer is trained so that a frozen LLM solves understanding tasks from
it; here the "understanding task" is character recognition with CTC, Graves et al. 2006).
``transcribe(tokens)`` reads the text back from the tokens alone (greedy CTC).

``DualSpeechTokenizer`` pairs it with the acoustic :class:`~mmgen.audio.codec.MelRVQCodec`:
``encode`` gives (semantic tokens for the model's input, acoustic codes for its output), ``decode``
turns acoustic codes into a waveform. Simplifications: no Whisper encoder or LLM (nothing can be
downloaded), CTC instead of LLM-driven understanding losses. The semantic tokens are the input of
the dual-token speech model (:class:`~mmgen.pipelines.DualTokenSpeechPipeline`, ``train_tts --input
semantic``), whose output is acoustic codec tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..safetensors_only import SafetensorsOnly
from .codec import MelRVQCodec, ResBlock1d
from .corpus import ALPHABET
from .features import MelConfig, check_waveform, log_mel

BLANK = 0  # CTC blank; character c has id ALPHABET.index(c) + 1


class CTCSpeechTokenizer(SafetensorsOnly, ModelMixin, ConfigMixin):
    """Semantic speech tokens trained with a CTC text objective (see the module docstring)."""

    @register_to_config
    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 80,
                 hidden: int = 192, codebook_dim: int = 32, codebook_size: int = 256,
                 commitment_weight: float = 0.25):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.mel_cfg = MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
        self.register_buffer("mel_mean", torch.zeros(n_mels, 1))
        self.register_buffer("mel_std", torch.ones(n_mels, 1))
        self.encoder = nn.Sequential(
            nn.Conv1d(n_mels, hidden, 3, padding=1), ResBlock1d(hidden, 1), ResBlock1d(hidden, 2),
            nn.GELU(), nn.Conv1d(hidden, hidden, 4, stride=2, padding=1),  # 62.5 -> 31.25 Hz
            ResBlock1d(hidden, 1), ResBlock1d(hidden, 2), nn.GELU(), nn.Conv1d(hidden, codebook_dim, 1))
        self.vq = VectorQuantize(dim=codebook_dim, codebook_size=codebook_size, kmeans_init=True, decay=0.9,
                                 threshold_ema_dead_code=2, commitment_weight=commitment_weight)
        self.head = nn.Sequential(nn.Conv1d(codebook_dim, hidden, 3, padding=1), ResBlock1d(hidden, 1),
                                  ResBlock1d(hidden, 2), ResBlock1d(hidden, 4), nn.GELU(),
                                  nn.Conv1d(hidden, len(ALPHABET) + 1, 1))

    @property
    def frame_rate(self) -> float:
        return self.mel_cfg.frame_rate / 2

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        """(K, codebook_dim) token vectors."""
        return self.vq.codebook

    def bitrate(self) -> float:
        return self.frame_rate * math.log2(self.codebook_size)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mel_mean.copy_(mean.reshape(-1, 1))
        self.mel_std.copy_(std.reshape(-1, 1).clamp_min(1e-3))

    def forward(self, logmel: torch.Tensor):
        """log-mel (B, n_mels, F) -> CTC log-probs (T', B, C), tokens (B, T'), commitment loss; T' = F // 2."""
        z = self.encoder((logmel - self.mel_mean) / self.mel_std)  # (B, D, T')
        q, tokens, commit = self.vq(z.transpose(1, 2))  # (B, T', D), (B, T')
        logits = self.head(q.transpose(1, 2))  # (B, C, T')
        return logits.permute(2, 0, 1).log_softmax(-1), tokens, commit.sum()

    @torch.no_grad()
    def encode(self, audio, sample_rate: int = 16000) -> torch.Tensor:
        """audio (T,) or (B, T) at 16 kHz -> semantic tokens (B, T') long at 31.25 Hz.

        Always an inference pass: in train mode the VQ would update (or initialise) its codebook, so the
        module is switched to eval for the call and back afterwards."""
        wav = check_waveform(audio, sample_rate, self.config.sample_rate).to(self.mel_mean.device)
        was_training = self.training
        self.eval()
        try:
            mel = log_mel(wav, self.mel_cfg)  # (B, n_mels, F)
            z = self.encoder((mel - self.mel_mean) / self.mel_std)  # (B, D, T')
            return self.vq(z.transpose(1, 2))[1].long()
        finally:
            self.train(was_training)

    @torch.no_grad()
    def transcribe(self, tokens: torch.Tensor) -> list[str]:
        """Semantic tokens (B, T') -> text per row by greedy CTC over the head's characters."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.numel() == 0 or tokens.min() < 0 or tokens.max() >= self.codebook_size:
            raise ValueError(f"tokens must be (B, T) integers in [0, {self.codebook_size}), got shape {tuple(tokens.shape)}")
        q = self.vq.get_output_from_indices(tokens.long())  # (B, T', D)
        best = self.head(q.transpose(1, 2)).argmax(1)  # (B, T')
        texts = []
        for row in best.tolist():
            chars, prev = [], BLANK
            for c in row:
                if c != prev and c != BLANK:
                    chars.append(ALPHABET[c - 1])
                prev = c
            texts.append(" ".join("".join(chars).split()))
        return texts


class DualSpeechTokenizer:
    """Semantic (CTC) tokens as model input + acoustic RVQ codes as model output, from one waveform."""

    def __init__(self, semantic: CTCSpeechTokenizer, acoustic: MelRVQCodec):
        self.semantic, self.acoustic = semantic, acoustic

    def encode(self, audio, sample_rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
        """-> semantic tokens (B, T') at 31.25 Hz, acoustic codes (B, M, F) at 62.5 Hz."""
        return self.semantic.encode(audio, sample_rate), self.acoustic.encode(audio, sample_rate)

    def decode(self, acoustic_codes: torch.Tensor) -> torch.Tensor:
        return self.acoustic.decode(acoustic_codes)
