"""Text conditioning: a small transformers encoder + word-level tokenizer trained here, or any
transformers encoder (``AutoModel`` with ``last_hidden_state``) and its tokenizer.

Prompts are left-padded to ``max_length`` (LlamaGen convention: the last prefix slot is always a
real token, so it can predict the first image token); padded slots are masked out as keys.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

SPECIAL = ["[PAD]", "[UNK]"]


def build_text_tokenizer(vocabulary: list[str], max_length: int) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIAL + list(vocabulary))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   padding_side="left", model_max_length=max_length)


def build_text_encoder(vocab_size: int, hidden: int = 96, layers: int = 2, heads: int = 4,
                       max_length: int = 24) -> BertModel:
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=max(32, max_length), type_vocab_size=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(cfg)  # the pooler is unused but kept so from_pretrained loads every key


def encode_prompts(text_encoder, tokenizer, prompts: list[str], max_length: int,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """prompts -> (features (B, max_length, C), mask (B, max_length) bool). Raises ValueError on bad prompts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("prompt must be a non-empty string or a non-empty list of strings")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt must be a non-empty string, got {p!r}")
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    if max(lengths) > max_length:  # checked before padding: a long prompt among short ones gets this message too
        raise ValueError(f"prompt is too long: {max(lengths)} tokens, at most {max_length} allowed")
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=False,
                    return_tensors="pt", add_special_tokens=False)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    # position ids count from the first real token so left padding does not shift positions
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    out = text_encoder(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    return out * mask[..., None], mask.bool()
