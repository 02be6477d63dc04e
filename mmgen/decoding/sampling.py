"""The one function that turns logits into the final sampling distribution ``p``.

Order as in LlamaGen/gpt-fast: (CFG already mixed by the generator) -> temperature -> top-k ->
top-p (HF-style: keep the smallest prefix whose mass reaches p, always >= 1 token) -> softmax.
Speculative decoders must use this same ``p`` for acceptance and residuals.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch


def is_finite_number(v) -> bool:
    """A real number (Python or numpy, not bool) that is finite."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def is_count(v) -> bool:
    """An integer (Python or numpy, not bool) >= 0."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


# temperature range: outside it float32 logits / T overflow to inf (T -> 0) and sampling fails deep inside torch;
# below the range use do_sample=False (greedy), above it the distribution is uniform to float precision anyway
TEMPERATURE_RANGE = (1e-4, 1e4)


MAX_GUIDANCE = 1000.0  # beyond it the CFG mix overflows float32 logits


def check_temperature(temperature, greedy_zero: bool = False, name: str = "temperature") -> None:
    """ValueError unless ``temperature`` is a number in TEMPERATURE_RANGE (or exactly 0 where 0 means greedy)."""
    lo, hi = TEMPERATURE_RANGE
    if greedy_zero and is_finite_number(temperature) and temperature == 0:
        return
    if not is_finite_number(temperature) or not lo <= temperature <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}]" + (" or 0 (greedy)" if greedy_zero else "")
                         + f", got {temperature!r}")


def check_guidance(scale, name: str = "guidance_scale") -> None:
    """ValueError unless the CFG ``scale`` is a number in [0, MAX_GUIDANCE]."""
    if not is_finite_number(scale) or not 0 <= scale <= MAX_GUIDANCE:
        raise ValueError(f"{name} must be a number in [0, {MAX_GUIDANCE:g}], got {scale!r}")


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    do_sample: bool = True  # False = greedy (argmax of the CFG-mixed logits)

    def __post_init__(self):
        check_temperature(self.temperature)
        if not is_count(self.top_k):
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not is_finite_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")


def final_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """logits (..., V) -> probabilities (..., V) in float32 after temperature, top-k and top-p."""
    x = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < x.shape[-1]:
        kth = torch.topk(x, cfg.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        cum = sorted_x.softmax(-1).cumsum(-1)
        drop = cum > cfg.top_p
        drop[..., 1:] = drop[..., :-1].clone()  # shift right: keep the token that crosses p
        drop[..., 0] = False
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return x.softmax(-1)


def draw_device(generator: "torch.Generator | None", device) -> torch.device:
    """Where a draw with ``generator`` happens: on the generator's own device, so a CPU generator can drive a model on
    CUDA (as in diffusers) and the same seed draws the same numbers on either; the result is then moved to
    ``device``. Without a generator: ``device``."""
    return generator.device if isinstance(generator, torch.Generator) else torch.device(device)


def multinomial(probs: torch.Tensor, generator: "torch.Generator | None") -> torch.Tensor:
    """probs (N, V) -> one draw per row (N,), on ``probs``' device, drawn on the generator's device."""
    dev = draw_device(generator, probs.device)
    return torch.multinomial(probs.to(dev), 1, generator=generator)[:, 0].to(probs.device)


def sample_from(probs: torch.Tensor, generator: "torch.Generator | list | None") -> torch.Tensor:
    """probs (B, V) -> ids (B,) drawn with ``generator`` (the only source of randomness).

    A list of B generators draws row b with generator b, so a row's result does not depend on
    which other rows share its batch (batch scripts rely on this).
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != probs.shape[0]:
            raise ValueError(f"generator list must have one generator per row ({probs.shape[0]}), got {len(generator)}")
        return torch.cat([multinomial(p[None], g) for p, g in zip(probs, generator)])
    return multinomial(probs, generator)


def pick(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,): argmax when greedy, else a draw from ``final_probs``."""
    if not cfg.do_sample:
        return logits.argmax(-1)
    return sample_from(final_probs(logits, cfg), generator)
