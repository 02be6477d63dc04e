"""Decoders / accelerators. All return :class:`DecodeResult` with the same :class:`DecodeStats`."""

from .ar import ARDecoder
from .base import DECODERS, DecodeResult, Decoder, DecodeStats, get_decoder, register_decoder
from .gsd import GSDDecoder
from .lantern import LanternDecoder
from .nar import NARDecoder
from .nbp import NBPDecoder
from .sampling import SamplingConfig, final_probs, pick, sample_from
from .sjd import SJDDecoder

__all__ = ["ARDecoder", "DECODERS", "DecodeResult", "Decoder", "DecodeStats", "get_decoder", "register_decoder",
           "GSDDecoder", "LanternDecoder", "NARDecoder", "NBPDecoder", "SJDDecoder", "SamplingConfig", "final_probs", "pick", "sample_from"]
