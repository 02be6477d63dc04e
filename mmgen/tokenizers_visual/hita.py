"""Hita: holistic-to-local image tokens (Zheng et al. 2025, "Holistic Tokenizer for Autoregressive
Image Generation").

Follows: a conv encoder gives patch features; ``num_holistic`` learnable holistic queries are
prepended; stage 1 is a bidirectional transformer over [holistic; patches], stage 2 a causal one
(holistic first, then patches in raster order). Patches and holistic tokens are quantized by
separate l2-normalised codebooks (8-d and 12-d, as in Hita's configs). The AR order is holistic
tokens first, then patch tokens. Before the pixel decoder a lightweight causal fusion transformer
runs over [holistic codes + slot pos; patch codes + pos], and patch i is read at position
``num_holistic - shift + i`` (shift 4, as in Hita's code), so it sees holistic tokens 0 .. num_holistic - shift + i
(all of them from patch shift - 1 on) and only patch codes <= i - shift: the decoder must draw global content from
the holistic tokens.

Deviations (CPU scale): no frozen DINOv2 features in stage 1 (no pretrained model offline), a
single shared id space (holistic ids in [0, K_h), patch ids in [K_h, K_h + K_p)) instead of two
embedding tables, EMA codebooks with dead-code restarts (vector-quantize-pytorch), L2 + L1 pixel
loss without LPIPS/GAN.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from timm.models.vision_transformer import Block
from vector_quantize_pytorch import VectorQuantize

from ..safetensors_only import SafetensorsOnly
from ._parts import conv_decoder, conv_encoder, pixel_loss
from .base import TokenBatch, TokenLayout, VisualTokenizerMixin, check_image_size


def _vq(dim: int, size: int) -> VectorQuantize:
    return VectorQuantize(dim=dim, codebook_size=size, use_cosine_sim=True, kmeans_init=True, kmeans_iters=10,
                          decay=0.9, commitment_weight=0.25, threshold_ema_dead_code=2.0)


class HitaTokenizer(SafetensorsOnly, ModelMixin, ConfigMixin, VisualTokenizerMixin):
    """encode: (B, 3, S, S) -> ids (B, n_h + g*g) = [holistic ids; patch ids + K_h]; decode: the inverse."""

    @register_to_config
    def __init__(self, image_size: int = 64, channels: tuple = (16, 64, 128), width: int = 128, heads: int = 4,
                 bidirectional_depth: int = 2, causal_depth: int = 1, fusion_depth: int = 1, num_holistic: int = 8,
                 patch_dim: int = 8, holistic_dim: int = 12, patch_codebook_size: int = 1024,
                 holistic_codebook_size: int = 1024, shift: int = 4):
        super().__init__()
        check_image_size(image_size, **{"2^len(channels)": 2 ** len(channels)})
        self.grid = image_size // 2 ** len(channels)
        g2, nh = self.grid ** 2, num_holistic
        if not 1 <= shift <= nh:
            raise ValueError(f"shift must be in [1, num_holistic={nh}], got {shift}")
        self.encoder = conv_encoder(tuple(channels), width)  # (B, W, g, g)
        self.holistic = nn.Parameter(torch.randn(1, nh, width) * width ** -0.5)
        self.patch_pos = nn.Parameter(torch.randn(1, g2, width) * 0.02)
        self.norm_in = nn.LayerNorm(width)
        self.stage1 = nn.ModuleList(Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(bidirectional_depth))
        self.stage2 = nn.ModuleList(Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(causal_depth))
        self.norm_out = nn.LayerNorm(width)
        self.to_patch = nn.Linear(width, patch_dim)
        self.to_holistic = nn.Linear(width, holistic_dim)
        self.patch_quantizer = _vq(patch_dim, patch_codebook_size)
        self.holistic_quantizer = _vq(holistic_dim, holistic_codebook_size)
        # fusion module before the pixel decoder
        self.from_patch = nn.Linear(patch_dim, width)
        self.from_holistic = nn.Linear(holistic_dim, width)
        self.slot_pos = nn.Parameter(torch.randn(1, nh, width) * 0.02)
        self.fuse_pos = nn.Parameter(torch.randn(1, g2, width) * 0.02)
        self.fuse_norm = nn.LayerNorm(width)
        self.fusion = nn.ModuleList(Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(fusion_depth))
        self.fuse_out = nn.LayerNorm(width)
        self.pixel_decoder = conv_decoder(width, tuple(channels))
        self.fixed_image_size = image_size
        self.downsample_factor = 2 ** len(channels)

    # --- contract -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.holistic_codebook_size + self.config.patch_codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        """(K_h + K_p, holistic_dim): holistic codes, then patch codes zero-padded to the same width."""
        h = F.normalize(self.holistic_quantizer.codebook.detach(), dim=-1)
        p = F.normalize(self.patch_quantizer.codebook.detach(), dim=-1)
        return torch.cat([h, F.pad(p, (0, h.shape[1] - p.shape[1]))])

    @property
    def bits_per_image(self) -> float:
        """n_h log2 K_h + g^2 log2 K_p (each slot draws from its own codebook)."""
        import math
        c = self.config
        return c.num_holistic * math.log2(c.holistic_codebook_size) + self.grid ** 2 * math.log2(c.patch_codebook_size)

    def layout_for(self, image_size: int | None = None) -> TokenLayout:
        return TokenLayout("holistic+grid", height=self.grid, width=self.grid, num_holistic=self.config.num_holistic,
                           order="holistic-then-raster")

    def _tokens(self, images: torch.Tensor):
        """-> quantized holistic (B, n_h, Dh), patches (B, G, Dp), holistic ids, patch ids, commitment."""
        p = rearrange(self.encoder(images), "b d h w -> b (h w) d") + self.patch_pos  # (B, G, W)
        nh = self.config.num_holistic
        x = self.norm_in(torch.cat([self.holistic.expand(len(p), -1, -1), p], 1))  # (B, n_h + G, W)
        for blk in self.stage1:
            x = blk(x)
        for blk in self.stage2:
            x = blk(x, is_causal=True)
        x = self.norm_out(x)
        qh, ih, ch = self.holistic_quantizer(self.to_holistic(x[:, :nh]))
        qp, ip, cp = self.patch_quantizer(self.to_patch(x[:, nh:]))
        return qh, qp, ih, ip, ch.sum() + cp.sum()

    def fuse(self, qh: torch.Tensor, qp: torch.Tensor) -> torch.Tensor:
        """Fusion module: holistic (B, n_h, Dh) + patch codes (B, G, Dp) -> decoder input (B, W, g, g)."""
        nh, g2 = qh.shape[1], qp.shape[1]
        x = torch.cat([self.from_holistic(qh) + self.slot_pos, self.from_patch(qp) + self.fuse_pos], 1)
        x = self.fuse_norm(x)
        for blk in self.fusion:
            x = blk(x, is_causal=True)
        start = nh - self.config.shift
        x = self.fuse_out(x[:, start:start + g2])  # patch i read at n_h - shift + i
        return rearrange(x, "b (h w) d -> b d h w", h=self.grid)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> TokenBatch:
        images = self.check_images(images)
        _, _, ih, ip, _ = self._tokens(images)
        ids = torch.cat([ih, ip + self.config.holistic_codebook_size], 1).long()
        return TokenBatch(ids=ids, layout=self.layout_for(), extras={"holistic": ih.long()})

    def split_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, n_h + G) -> holistic ids (B, n_h) in [0, K_h), patch ids (B, G) in [0, K_p); validates ranges."""
        if isinstance(ids, TokenBatch):
            ids = ids.ids
        self.check_ids(ids)
        nh, kh = self.config.num_holistic, self.config.holistic_codebook_size
        if ids.shape[1] != nh + self.grid ** 2:
            raise ValueError(f"ids must hold {nh + self.grid ** 2} tokens (holistic then patches), got {ids.shape[1]}")
        h, p = ids[:, :nh], ids[:, nh:]
        if bool((h >= kh).any()) or bool((p < kh).any()):
            raise ValueError(f"the first {nh} ids must lie in [0, {kh}) and the rest in [{kh}, {self.vocab_size})")
        return h, p - kh

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        ih, ip = self.split_ids(ids)
        qh = F.normalize(self.holistic_quantizer.codebook, dim=-1)[ih]
        qp = F.normalize(self.patch_quantizer.codebook, dim=-1)[ip]
        return self.pixel_decoder(self.fuse(qh, qp))

    # --- training -------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, captions=None, generator: torch.Generator | None = None) -> dict:
        qh, qp, _, _, commit = self._tokens(images)
        rec = pixel_loss(self.pixel_decoder(self.fuse(qh, qp)), images)
        return {"loss": rec + commit, "reconstruction": rec.detach(), "commitment": commit.detach()}
