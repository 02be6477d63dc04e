"""Pieces shared by the tokenizer family (SEED, TokenFlow, Hita, One-D-Piece).

* :class:`CaptionTower`: the caption side of an image-caption contrastive loss (the small
  transformers BERT encoder of :mod:`mmgen.models.text`, masked mean pool, projection).
* :func:`contrastive_loss`: CLIP's symmetric InfoNCE with label smoothing (SEED stage 1 uses 0.1).
* :func:`conv_encoder` / :func:`conv_decoder`: LlamaGen-style conv stacks (stride-2 convs + residual blocks).
* :func:`patchify` / :func:`unpatchify`: ViT patches <-> images.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..models.text import build_text_encoder, build_text_tokenizer
from .vq import ResBlock, _norm

CAPTION_LEN = 24  # words; scene captions have at most 19


@lru_cache(maxsize=1)
def caption_tokenizer():
    from ..data.scenes import caption_vocabulary
    return build_text_tokenizer(caption_vocabulary(), CAPTION_LEN)


def caption_ids(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene captions -> (ids (B, CAPTION_LEN) long, mask (B, CAPTION_LEN) long), left padded."""
    enc = caption_tokenizer()(list(captions), padding="max_length", max_length=CAPTION_LEN, truncation=True,
                              return_tensors="pt", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


class CaptionTower(nn.Module):
    """captions -> l2-normalised embeddings (B, embed_dim) for the contrastive loss."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int = 96, layers: int = 2):
        super().__init__()
        self.encoder = build_text_encoder(vocab_size, hidden=hidden, layers=layers, max_length=CAPTION_LEN)
        self.proj = nn.Linear(hidden, embed_dim)

    def forward(self, captions: list[str]) -> torch.Tensor:
        ids, mask = caption_ids(captions)
        dev = self.proj.weight.device
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        h = self.encoder(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state  # (B, T, hidden)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return F.normalize(self.proj(pooled), dim=-1)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                     smoothing: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched pairs. img, txt: (B, E) l2-normalised.

    Identical captions in a batch are treated as positives of each other (soft targets), since
    template captions repeat.
    """
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()  # (B, B)
    same = (txt @ txt.t() > 1 - 1e-6).float()
    target = same / same.sum(1, keepdim=True)
    target = (1 - smoothing) * target + smoothing / len(img)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target.t() * logits.t().log_softmax(1), 1).mean())


def conv_encoder(channels: tuple[int, ...], out_dim: int, res_blocks: int = 2) -> nn.Sequential:
    """(B, 3, H, W) -> (B, out_dim, H / 2^len(channels), W / 2^len(channels)).

    Stride-2 convs with SiLU, residual blocks only at the lowest resolution (CPU budget)."""
    layers, cin = [], 3
    for c in channels:
        layers += [nn.Conv2d(cin, c, 4, stride=2, padding=1), nn.SiLU()]
        cin = c
    layers += [ResBlock(cin, cin) for _ in range(res_blocks)]
    return nn.Sequential(*layers, _norm(cin), nn.SiLU(), nn.Conv2d(cin, out_dim, 1))


def conv_decoder(in_dim: int, channels: tuple[int, ...], res_blocks: int = 2) -> nn.Sequential:
    """(B, in_dim, h, w) -> (B, 3, h * 2^len(channels), w * 2^len(channels)); channels listed encoder-side."""
    rev = list(channels[::-1])
    layers = [nn.Conv2d(in_dim, rev[0], 3, padding=1), *[ResBlock(rev[0], rev[0]) for _ in range(res_blocks)],
              _norm(rev[0]), nn.SiLU()]
    for cin, cout in zip(rev, rev[1:] + [rev[-1]]):
        layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.SiLU()]
    return nn.Sequential(*layers, nn.Conv2d(rev[-1], 3, 3, padding=1))


def unpatchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, G, patch*patch*3) -> (B, 3, sqrt(G)*patch, sqrt(G)*patch)."""
    g = int(round(x.shape[1] ** 0.5))
    return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=g, w=g, p=patch, q=patch)


def pixel_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L2 + 0.5 L1, the pixel loss every tokenizer here uses (no LPIPS/GAN: no offline VGG)."""
    return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
