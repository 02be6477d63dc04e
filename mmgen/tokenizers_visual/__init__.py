"""Visual tokenizers: images <-> discrete tokens (see :mod:`.base` for the contract)."""

from .base import TokenBatch, TokenLayout, VisualTokenizerMixin
from .vq import VQTokenizer

__all__ = ["TokenBatch", "TokenLayout", "VisualTokenizerMixin", "VQTokenizer"]
