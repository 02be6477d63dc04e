"""Visual tokenizers: images <-> discrete tokens (see :mod:`.base` for the contract).

``VQTokenizer`` (LlamaGen grid), ``SEEDTokenizer`` (1D causal), ``TokenFlowTokenizer`` (dual
codebook, shared index), ``HitaTokenizer`` (holistic + patch tokens), ``OneDPieceTokenizer``
(1D, decodes any prefix). :func:`load_tokenizer` opens any of them from a local folder.
"""

from .base import TokenBatch, TokenLayout, VisualTokenizerMixin, load_tokenizer
from .hita import HitaTokenizer
from .onedpiece import OneDPieceTokenizer
from .seed import SEEDTokenizer
from .tokenflow import TokenFlowTokenizer
from .vq import VQTokenizer

TOKENIZER_CLASSES = {c.__name__: c for c in (VQTokenizer, SEEDTokenizer, TokenFlowTokenizer, HitaTokenizer,
                                             OneDPieceTokenizer)}

__all__ = ["TokenBatch", "TokenLayout", "VisualTokenizerMixin", "load_tokenizer", "VQTokenizer", "SEEDTokenizer",
           "TokenFlowTokenizer", "HitaTokenizer", "OneDPieceTokenizer", "TOKENIZER_CLASSES"]
