"""Text-to-speech pipeline: text -> SpeechTransformer (AR or MCTP) -> RVQ codes -> MelRVQ codec -> waveform.

    pipe = SpeechPipeline.from_pretrained("assets/tts")
    out = pipe("the red dog follows a cat", mctp=4)
    out.audios        # (B, 1, T) float32 at 16 kHz, zero-padded; out.lengths gives each row's length
    for chunk in pipe.stream("the red dog follows a cat"):   # streaming: audio as tokens arrive
        ...

Dual tokens (DualSpeechLM idea): :class:`DualTokenSpeechPipeline` takes speech instead of text; its
CTC semantic tokens are the model's input and acoustic codec tokens its output, in the requested voice
(resynthesis or voice conversion): ``DualTokenSpeechPipeline.from_pretrained("assets/dual-speech")(wave, voice=...)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput

from ..audio.codec import MelRVQCodec
from ..audio.dual import CTCSpeechTokenizer
from ..audio.corpus import ALPHABET, check_text
from ..audio.features import chunk_span, num_chunks, vocode, vocode_chunk
from ..decoding.base import DecodeStats, device_clock
from ..decoding.sampling import check_temperature, is_count, is_finite_number
from ..models.speech_transformer import TEXT_PAD, SpeechTransformer
from ..safetensors_only import SafetensorsOnly

# frames per streamed audio chunk (0.512 s), look-ahead, and the shorter chunk [head, 8) that needs only
# 8 + 8 + codec radius frames instead of 32 + 8 + radius. Before it, the "head" piece: the frames of the
# generator's first forward, vocoded causally from their own codes, so audio is out after one forward.
VOCODER_CHUNK, VOCODER_CONTEXT, VOCODER_FIRST = 32, 8, 8


@dataclass
class SpeechPipelineOutput(AudioPipelineOutput):
    """``audios`` (B, 1, T) float32; ``lengths`` samples per row; ``codes`` per row (M, F); ``stats``."""

    lengths: list
    codes: list
    stats: DecodeStats
    sample_rate: int = 16000


def first_chunk_frames(codec: MelRVQCodec, index: int = 0, head: int | None = None) -> int:
    """Complete codec frames needed before streamed chunk ``index`` is final: its end + look-ahead + the
    codec decoder's radius; the causal ``head`` piece (index 0 when ``head`` is set) needs only its own frames."""
    end = chunk_span(index, VOCODER_CHUNK, VOCODER_FIRST, head)[1]
    return end if (head is not None and index == 0) else end + VOCODER_CONTEXT + codec.receptive_radius


def head_frames(mctp: int, num_quantizers: int) -> int:
    """Complete frames after the first forward: ``mctp`` delayed steps minus the delay pattern's M - 1; at least
    1 (when ``mctp`` < M the first frame completes after ceil(M / mctp) forwards)."""
    return max(1, mctp - num_quantizers + 1)


def vocode_codes(codec: MelRVQCodec, codes: torch.Tensor, head: int, index: int | None = None,
                 mel: torch.Tensor | None = None) -> torch.Tensor:
    """Codes (M, n) -> waveform (n * hop,) on the streaming schedule (``index`` None) or its piece ``index``;
    the head piece is decoded from the first ``head`` frames' codes alone (causal). ``mel``: the log-mel of
    all of ``codes`` when the caller already has it (several pieces of the same codes)."""
    args = (codec.mel_cfg, VOCODER_CHUNK, VOCODER_CONTEXT, codec.config.griffin_lim_iters, VOCODER_FIRST, head)
    head_mel = codec.decode_mel(codes[None, :, :head]) if index in (None, 0) else None  # (1, n_mels, <= head)
    if index == 0:
        return vocode_chunk(head_mel, 0, *args)[0]
    mel = codec.decode_mel(codes[None]) if mel is None else mel  # (1, n_mels, n)
    if index is None:
        return vocode(mel, *args, head_logmel=head_mel)[0]
    return vocode_chunk(mel, index, *args)[0]


def text_to_ids(texts: list[str], max_chars: int) -> torch.Tensor:
    """Validated texts -> (B, T) long, left-padded with TEXT_PAD; char c -> ALPHABET.index(c) + 1."""
    clean = [check_text(t, max_chars=max_chars) for t in texts]
    width = max(len(t) for t in clean)
    ids = torch.full((len(clean), width), TEXT_PAD, dtype=torch.long)
    for i, t in enumerate(clean):
        ids[i, width - len(t):] = torch.tensor([ALPHABET.index(c) + 1 for c in t])
    return ids


def semantic_to_ids(tokens: list, max_len: int) -> torch.Tensor:
    """Semantic token rows (T'_i,) -> (B, T) long prefix ids (token + 1), left-padded with TEXT_PAD."""
    rows = [torch.as_tensor(t).long().flatten() for t in tokens]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("tokens must hold at least one semantic token per row")
    if max(len(r) for r in rows) > max_len:
        raise ValueError(f"tokens must be at most {max_len} semantic tokens per row, got {max(len(r) for r in rows)}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), TEXT_PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r + 1
    return ids


def row_steps_per_forward(gen, num_quantizers: int) -> list[int]:
    """Steps each row committed per forward pass (``DecodeStats.accepted_lengths``), up to its own end: a row with F
    frames needs F + M delayed steps (level 0's END, then the M - 1 delayed levels), so the forced END/PAD steps a
    finished row takes while its batch mates go on do not count, as SJD and LANTERN leave finished rows out."""
    total, out = gen.steps.shape[1], []
    for codes in gen.codes:  # (M, F) per row
        left = min(codes.shape[1] + num_quantizers, total)
        for n in gen.steps_per_forward:
            if left <= 0:
                break
            out.append(min(n, left))
            left -= out[-1]
    return out


class SpeechPipeline(SafetensorsOnly, DiffusionPipeline):
    """Components: ``transformer`` (:class:`SpeechTransformer`) and ``codec`` (:class:`MelRVQCodec`)."""

    model_cpu_offload_seq = "transformer->codec"

    def __init__(self, transformer: SpeechTransformer, codec: MelRVQCodec):
        super().__init__()
        self.register_modules(transformer=transformer, codec=codec)

    @property
    def sample_rate(self) -> int:
        return self.codec.config.sample_rate

    @property
    def voices(self) -> list[str]:
        return list(self.transformer.config.voices)

    def _prefix_ids(self, text) -> torch.Tensor:
        """The model's prefix ids (B, T) for ``text`` (a string or list of strings)."""
        if self.transformer.config.input_kind != "text":
            raise ValueError(f"this model takes {self.transformer.config.input_kind} tokens, not text: "
                             "load it with DualTokenSpeechPipeline")
        texts = [text] if isinstance(text, str) else (list(text) if isinstance(text, (list, tuple)) else None)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"text must be a non-empty string or list of strings, got {text!r}")
        return text_to_ids(texts, self.transformer.config.max_text_len)

    def _inputs(self, text, voice, mctp, max_seconds, temperature, min_seconds=0.0, top_k=None):
        ids = self._prefix_ids(text)
        voice = voice or self.voices[0]
        vid = torch.full((ids.shape[0],), self.transformer.voice_index(voice), dtype=torch.long)
        k_max = self.transformer.config.mctp
        if mctp is not None and not (isinstance(mctp, int) and not isinstance(mctp, bool) and 1 <= mctp <= k_max):
            raise ValueError(f"mctp must be an integer in [1, {k_max}], got {mctp!r}")
        limit = self.transformer.config.max_frames / self.codec.frame_rate
        if max_seconds is not None and not (is_finite_number(max_seconds) and 0 < max_seconds <= limit):
            raise ValueError(f"max_seconds must be in (0, {limit:.2f}], got {max_seconds}")
        check_temperature(temperature, greedy_zero=True)
        if top_k is not None and not is_count(top_k):
            raise ValueError(f"top_k must be None or an integer >= 0 (0 = off), got {top_k!r}")
        if not (is_finite_number(min_seconds) and 0 <= min_seconds <= (max_seconds or limit)):
            raise ValueError(f"min_seconds must be in [0, max_seconds], got {min_seconds}")
        max_frames = None if max_seconds is None else max(1, int(max_seconds * self.codec.frame_rate))
        return ids.to(self.device), vid.to(self.device), max_frames, int(min_seconds * self.codec.frame_rate)

    @torch.no_grad()
    def __call__(self, text: "str | list[str]", voice: str | None = None, mctp: int | None = None,
                 temperature: float = 0.0, top_k: int | None = None, max_seconds: float | None = None,
                 min_seconds: float = 0.0, generator: torch.Generator | None = None, output_type: str = "np",
                 return_dict: bool = True):
        """Synthesize speech. ``mctp``: audio steps per backbone forward (1 = plain AR; default the model's
        maximum). Greedy when ``temperature`` is 0; ``min_seconds`` forbids stopping earlier.
        ``output_type``: "np" or "pt"."""
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        ids, vid, max_frames, min_frames = self._inputs(text, voice, mctp, max_seconds, temperature, min_seconds, top_k)
        t0 = device_clock(ids.device)
        gen = self.transformer.generate(ids, vid, mctp=mctp, temperature=temperature, top_k=top_k,
                                        max_frames=max_frames, min_frames=min_frames, generator=generator)
        head = self._head(mctp)
        waves = [vocode_codes(self.codec, c, head) if c.shape[1] else torch.zeros(0) for c in gen.codes]
        stats = DecodeStats(method=f"mctp{mctp or self.transformer.config.mctp}", forward_passes=gen.forward_passes,
                            tokens=gen.steps.shape[1], batch_size=ids.shape[0], wall_time=device_clock(ids.device) - t0,
                            accepted_lengths=row_steps_per_forward(gen, self.transformer.config.num_quantizers))
        lengths = [int(w.numel()) for w in waves]
        audios = torch.zeros(len(waves), 1, max(lengths + [1]))
        for i, w in enumerate(waves):
            audios[i, 0, :w.numel()] = w
        if output_type == "np":
            audios = audios.numpy()
        out = SpeechPipelineOutput(audios=audios, lengths=lengths, codes=gen.codes, stats=stats,
                                   sample_rate=self.sample_rate)
        return out if return_dict else (audios,)

    def stream(self, text: str, voice: str | None = None, mctp: int | None = None, temperature: float = 0.0,
               top_k: int | None = None, max_seconds: float | None = None, min_seconds: float = 0.0,
               generator: torch.Generator | None = None) -> "SpeechStream":
        """Stream one utterance: iterate the returned :class:`SpeechStream` for float32 audio chunks (np, 16 kHz)
        as soon as their frames are generated; afterwards it holds the ``stats``.

        Chunk 0 is the head: the frames of the first forward (``mctp`` minus the delay pattern's M - 1),
        vocoded causally from their own codes, so audio is out after one forward pass when ``mctp`` >= M
        (VITA-Audio's first-forward audio; the shipped model has M = 1), else after ceil(M / mctp). Then [head, 8), [8, 32), [32 (i - 1), 32 i); each of those needs 8 frames
        of look-ahead plus the codec decoder's ``receptive_radius`` (9) frames
        (``mmgen.audio.features.chunk_span``, :func:`first_chunk_frames`); the chunks
        concatenate to ``__call__``'s audio for the same arguments. Arguments are checked here, eagerly.
        """
        self._check_single(text)
        inputs = self._inputs(text, voice, mctp, max_seconds, temperature, min_seconds, top_k)
        return SpeechStream(self, inputs, dict(mctp=mctp, temperature=temperature, top_k=top_k, generator=generator))

    def _head(self, mctp: int | None) -> int:
        cfg = self.transformer.config
        return head_frames(mctp or cfg.mctp, cfg.num_quantizers)

    @staticmethod
    def _check_single(text) -> None:
        if not isinstance(text, str):
            raise ValueError("text must be a single string for streaming")

    @torch.no_grad()
    def _stream_chunks(self, inputs, opts: dict, record: "SpeechStream"):
        ids, vid, max_frames, min_frames = inputs
        tr, codec = self.transformer, self.codec
        head = self._head(opts["mctp"])
        grid, emitted = [], 0  # emitted: chunks already yielded
        for steps, passes in tr.generate_stream(ids, vid, max_frames=max_frames, min_frames=min_frames, **opts):
            grid.append(steps[0])
            record.forward_passes, record.steps_per_forward = passes, record.steps_per_forward + [steps.shape[1]]
            codes = tr.undelay(torch.cat(grid))  # (M, n) frames whose every level exists
            # chunk i is final once its look-ahead frames exist and their mel no longer depends on missing codes
            while codes.shape[1] and first_chunk_frames(codec, emitted, head) <= codes.shape[1]:
                yield vocode_codes(codec, codes, head, emitted).cpu().numpy()
                emitted += 1
        codes = tr.undelay(torch.cat(grid))
        remaining = range(emitted, num_chunks(codes.shape[1], VOCODER_CHUNK, VOCODER_FIRST, head))
        # pieces after the head share one decode of all codes
        mel = codec.decode_mel(codes[None]) if any(i > 0 for i in remaining) else None
        for i in remaining:
            yield vocode_codes(codec, codes, head, i, mel).cpu().numpy()


class DualTokenSpeechPipeline(SpeechPipeline):
    """Speech in, speech out (DualSpeechLM idea, arXiv 2508.08961): the source's text-aligned semantic tokens
    (``semantic_tokenizer``, a :class:`~mmgen.audio.dual.CTCSpeechTokenizer`) are the transformer's input and
    acoustic codec tokens its output, in ``voice`` (the source's voice: resynthesis; another one: voice
    conversion). Same MCTP, streaming and stats as :class:`SpeechPipeline`; ``text`` is replaced by ``audio``:
    a 16 kHz waveform (T,) or a list of them (np or torch).

    Simplified from DualSpeechLM: no LLM and no understanding tasks beyond CTC (the tokenizer's training
    objective); the model is trained on (semantic tokens, codec tokens) of the same utterance.

    Input length: at most ``transformer.config.max_text_len`` semantic tokens (set at training to the
    longest training utterance + 32 tokens, about 1 s more; :attr:`max_input_seconds`)."""

    def __init__(self, transformer: SpeechTransformer, codec: MelRVQCodec, semantic_tokenizer: CTCSpeechTokenizer):
        DiffusionPipeline.__init__(self)
        cfg = transformer.config
        if cfg.input_kind != "semantic":
            raise ValueError(f"transformer must take semantic tokens (input_kind 'semantic'), got {cfg.input_kind!r}: "
                             "load a text model with SpeechPipeline")
        if cfg.text_vocab_size != semantic_tokenizer.codebook_size + 1:
            raise ValueError(f"transformer.text_vocab_size must be semantic_tokenizer.codebook_size + 1 = "
                             f"{semantic_tokenizer.codebook_size + 1}, got {cfg.text_vocab_size}")
        self.register_modules(transformer=transformer, codec=codec, semantic_tokenizer=semantic_tokenizer)

    @property
    def max_input_seconds(self) -> float:
        return self.transformer.config.max_text_len / self.semantic_tokenizer.frame_rate

    def _prefix_ids(self, audio) -> torch.Tensor:
        if isinstance(audio, str):
            raise ValueError("audio must be a 16 kHz waveform (T,) or a list of them, got a string")
        waves = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if not waves or any(w is None for w in waves):
            raise ValueError("audio must be a non-empty waveform or list of waveforms")
        tok, max_len = self.semantic_tokenizer, self.transformer.config.max_text_len
        rate = tok.config.sample_rate
        rows = []
        for w in waves:
            w = w if torch.is_tensor(w) else torch.as_tensor(np.asarray(w))
            if not w.is_floating_point():  # int16 PCM read as numbers would be 32768x too loud
                raise ValueError(f"audio must be a float waveform in [-1, 1] (convert PCM first, e.g. int16 / 32768), "
                                 f"got dtype {w.dtype}")
            if w.dim() != 1:
                raise ValueError(f"audio must be a 1-D waveform (T,) or a list of them, got shape {tuple(w.shape)}")
            # T samples give (T // hop + 1) // 2 tokens: reject surely-too-long audio before encoding it
            if (w.numel() // tok.mel_cfg.hop_length + 1) // 2 > max_len:
                raise ValueError(f"audio must be at most {self.max_input_seconds:.2f} s ({max_len} semantic tokens), "
                                 f"got {w.numel() / rate:.2f} s")
            rows.append(tok.encode(w.float(), rate)[0])  # (T',)
        return semantic_to_ids(rows, max_len)

    def _check_rate(self, sample_rate: int) -> None:
        expected = self.semantic_tokenizer.config.sample_rate
        if sample_rate != expected:
            raise ValueError(f"sample_rate must be {expected} (resample the input first), got {sample_rate}")

    @staticmethod
    def _check_single(audio) -> None:
        if isinstance(audio, (list, tuple)):
            raise ValueError("audio must be a single waveform for streaming")

    @torch.no_grad()
    def __call__(self, audio, voice: str | None = None, *, sample_rate: int = 16000, **kwargs):
        """Resynthesise ``audio`` in ``voice``; other arguments as :meth:`SpeechPipeline.__call__`."""
        self._check_rate(sample_rate)
        return super().__call__(audio, voice=voice, **kwargs)

    def stream(self, audio, voice: str | None = None, *, sample_rate: int = 16000, **kwargs) -> "SpeechStream":
        """Stream one utterance (see :meth:`SpeechPipeline.stream`)."""
        self._check_rate(sample_rate)
        return super().stream(audio, voice=voice, **kwargs)


class SpeechStream:
    """Iterator of np.float32 audio chunks from :meth:`SpeechPipeline.stream`.

    While/after iterating: ``forward_passes`` and ``steps_per_forward`` so far, ``samples`` yielded,
    ``first_chunk_time`` (s of pipeline work) and ``first_chunk_forwards``; ``stats`` (DecodeStats, the
    same fields as ``__call__``'s) once exhausted. Times count only the pipeline's work, not the consumer's.
    """

    def __init__(self, pipe: SpeechPipeline, inputs, opts: dict):
        self.method = f"mctp{opts['mctp'] or pipe.transformer.config.mctp}"
        self.forward_passes, self.steps_per_forward, self.samples = 0, [], 0
        self.first_chunk_time = self.first_chunk_forwards = None
        self.stats: DecodeStats | None = None
        self._busy = 0.0
        self._chunks = pipe._stream_chunks(inputs, opts, self)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._busy += time.perf_counter() - t0
            if self.stats is None:
                self.stats = DecodeStats(method=self.method, forward_passes=self.forward_passes,
                                         tokens=sum(self.steps_per_forward), batch_size=1, wall_time=self._busy,
                                         accepted_lengths=list(self.steps_per_forward))
            raise
        self._busy += time.perf_counter() - t0
        if self.first_chunk_time is None:
            self.first_chunk_time, self.first_chunk_forwards = self._busy, self.forward_passes
        self.samples += len(chunk)
        return chunk
