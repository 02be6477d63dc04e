"""Decoders / accelerators. All return :class:`DecodeResult` with the same :class:`DecodeStats`."""

from .ar import ARDecoder
from .base import DECODERS, DecodeResult, Decoder, DecodeStats, get_decoder, register_decoder
from .sampling import SamplingConfig, final_probs, pick, sample_from

__all__ = ["ARDecoder", "DECODERS", "DecodeResult", "Decoder", "DecodeStats", "get_decoder", "register_decoder",
           "SamplingConfig", "final_probs", "pick", "sample_from"]
