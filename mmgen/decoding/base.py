"""The decoder contract and the statistics every decoder returns.

``Decoder.decode(generator, state, sampling, rng, callback) -> DecodeResult(tokens (B, N), stats)``.
Decoders see only the generator contract (``prefill`` already done -> ``state``; ``forward_step``;
``state.truncate``) and, where needed, the tokenizer's codebook. Register new methods with
:func:`register_decoder` so pipelines, CLI, app and scripts accept them by name.
"""

from __future__ import annotations

import inspect
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from .sampling import SamplingConfig


@dataclass
class DecodeStats:
    """Same fields for every method. ``accepted_lengths``: tokens committed per forward pass per row.

    Image decoders: ``wall_time`` spans the decode loop after prefill up to the last committed token (read with
    :func:`device_clock`), tokenizer decoding excluded. The speech pipeline fills the same object for its whole
    text -> audio call instead (prefill, decoding and vocoding; streaming: the time spent producing chunks), with
    ``tokens`` = delayed RVQ steps of the longest row and ``accepted_lengths`` each row's steps per forward up to
    its own end, so speech figures compare with each other (MCTP k against k = 1), not with image wall times."""

    method: str = ""
    forward_passes: int = 0  # generator calls (prefill counts as one)
    tokens: int = 0  # tokens generated per image (speech: delayed steps, the batch's longest row)
    batch_size: int = 1
    wall_time: float = 0.0  # seconds; span above
    accepted_lengths: list = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.forward_passes, 1)

    def histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(self.accepted_lengths).items()))

    def to_dict(self) -> dict:
        return {"method": self.method, "forward_passes": self.forward_passes, "tokens": self.tokens,
                "batch_size": self.batch_size, "tokens_per_forward": round(self.tokens_per_forward, 4),
                "wall_time": round(self.wall_time, 4), "accepted_length_histogram": self.histogram()}


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # (B, N) long, in the generator's token order
    stats: DecodeStats


# callback(step_index, tokens_so_far (B, n)) -> optional replacement tokens
StepCallback = Callable[[int, torch.Tensor], "torch.Tensor | None"]


class Decoder:
    """Base class. ``extra_slots``: scratch positions past the last token the decoder may feed
    (passed to ``prefill``). ``prepare(tokenizer)`` is called by pipelines before ``decode`` so
    decoders that need the codebook (LANTERN, GSD) can read ``tokenizer.codebook`` (V, D)."""

    name = "base"
    extra_slots = 0
    requires: str | None = None  # generator capability the method needs ("ar", "speculative", "nar", "nbp")

    def prepare(self, tokenizer) -> None:
        """Read what the method needs from the tokenizer (default: nothing)."""

    def check_generator(self, generator) -> None:
        """Raise a ValueError naming the right decoder when ``generator`` lacks ``requires``; pipelines call
        it before ``prefill`` (whose cache layout depends on the decoder), ``decode`` calls it again."""
        caps = getattr(generator, "capabilities", frozenset({"ar", "speculative"}))
        if self.requires is None or self.requires in caps:
            return
        if self.requires in ("ar", "speculative"):
            raise ValueError(f"decoding={self.name!r} needs a raster-order generator; this one was trained for "
                             f"{sorted(caps)}: use decoding={sorted(caps)[0]!r}")
        raise ValueError(f"decoding={self.name!r} needs a generator trained with order={self.requires!r} "
                         f"(e.g. assets/digits-c2i-{self.requires}); this one supports {sorted(caps)}")

    def decode(self, generator, state, sampling: SamplingConfig, rng: torch.Generator | None = None,
               callback: StepCallback | None = None) -> DecodeResult:
        raise NotImplementedError

    def _start(self, state) -> tuple[DecodeStats, float]:
        return DecodeStats(method=self.name, forward_passes=1, tokens=state.num_tokens,
                           batch_size=state.batch_size), device_clock(state.first_logits.device)

    @staticmethod
    def _apply_callback(callback, step: int, tokens: torch.Tensor, committed, state) -> None:
        """callback(step, tokens[:, committed] (B, n)): the committed tokens (``committed`` a slice, or an index
        tensor for NAR's generation order); a returned edit, checked by :func:`check_token_edit` against the
        vocabulary of ``state.first_logits`` (B, ..., V), is written back before they are fed."""
        if callback is None:
            return
        old = tokens[:, committed]
        new = callback(step, old)
        if new is not None:
            v = state.first_logits.shape[-1]
            tokens[:, committed] = check_token_edit(new, old, v).to(tokens.device, tokens.dtype)

    @staticmethod
    def _elapsed(state, t0: float) -> float:
        """Seconds since ``t0`` (from :meth:`_start`), after the device's queued work has finished."""
        return device_clock(state.first_logits.device) - t0


def check_token_edit(new, committed: torch.Tensor, vocab_size: int, name: str = "the step callback's edit"):
    """An edit of the committed tokens (B, n): integer ids of exactly that shape, in [0, vocab_size).
    Anything else (a float, bool or broadcastable tensor, an out-of-range id) raises a ValueError naming it."""
    new = torch.as_tensor(new)
    if (new.shape != committed.shape or new.is_floating_point() or new.is_complex() or new.dtype == torch.bool
            or bool((new < 0).any()) or bool((new >= vocab_size).any())):
        raise ValueError(f"{name} must be integer ids of shape {tuple(committed.shape)} in [0, {vocab_size - 1}], "
                         f"got {new.dtype} of shape {tuple(new.shape)}")
    return new


def device_clock(device: "torch.device | str | None" = None) -> float:
    """``time.perf_counter()`` once the queued kernels of a CUDA ``device`` have finished (CUDA launches are
    asynchronous: without the wait a decoder's wall time would stop before its last forward pass ran); on other
    devices just the clock. Every decoder's ``stats.wall_time`` reads this clock."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


DECODERS: dict[str, type[Decoder]] = {}


def register_decoder(name: str):
    def deco(cls):
        cls.name = name
        DECODERS[name] = cls
        return cls

    return deco


def parse_options(text: "str | None", name: str = "decoding_options") -> dict:
    """Decoder options written as JSON (CLI flag, app textbox) -> dict; empty -> {}; ValueError naming ``name``."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} must be a JSON object, e.g. {{}}: {e.msg} at char {e.pos}") from None
    if not isinstance(options, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(options).__name__}")
    return options


def get_decoder(decoding: "str | Decoder", **options) -> Decoder:
    """A decoder object from a registered name plus options, or the object itself."""
    if isinstance(decoding, Decoder):
        if options:
            raise ValueError("decoding options are only accepted together with a decoder name")
        return decoding
    if decoding not in DECODERS:
        raise ValueError(f"decoding must be one of {sorted(DECODERS)}, got {decoding!r}")
    accepted = [k for k, p in inspect.signature(DECODERS[decoding].__init__).parameters.items()
                if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"decoding_options {unknown} are not options of decoding={decoding!r} (accepted: {accepted})")
    try:
        return DECODERS[decoding](**options)
    except TypeError as e:  # an option of the wrong type, e.g. delta_p=None compared with 0
        raise ValueError(f"decoding_options {options} are not accepted by decoding={decoding!r}: {e}") from None
