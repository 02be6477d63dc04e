"""TokenFlow: a dual codebook with one shared index (Qu et al. 2025, "TokenFlow: Unified Image
Tokenizer for Multimodal Understanding and Generation").

Follows: a semantic encoder (ViT -> Linear, Tanh, Linear -> 32-d) and a pixel encoder (conv ->
8-d) per grid cell; two l2-normalised codebooks of the same size K, ``E_sem`` (K, 32) and
``E_pix`` (K, 8); one index per cell,
``k* = argmin_k  w_sem ||z_sem - e_sem_k||^2 + w_pix ||z_pix - e_pix_k||^2`` (w = 1, 1), so one id
addresses both codebooks; VQ loss ``mean((z_q - sg z)^2) + beta mean((sg z_q - z)^2)`` (beta 0.25)
on the concatenated 40-d vectors with straight-through gradients; a semantic decoder (ViT) over the
semantic half whose output is exposed as ``semantic_features`` for understanding; images are
decoded from the pixel half only.

Deviations (CPU scale, no pretrained teacher): the semantic side is aligned with captions directly
(contrastive loss on the pooled semantic-decoder features) instead of distilled from a frozen
CLIP/SigLIP teacher; one scale (an 8 x 8 grid in raster order) instead of the VAR-style multi-scale
residual quantization, so the package's next-token generator can consume the ids; the codebooks are
initialised from the first batch and unused codes are restarted from batch vectors; L2 + L1 pixel
loss without LPIPS/GAN.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from ..safetensors_only import SafetensorsOnly
from ._parts import CaptionTower, caption_tokenizer, contrastive_loss, conv_decoder, conv_encoder, pixel_loss
from .base import TokenBatch, TokenLayout, VisualTokenizerMixin, check_image_size


def joint_index(z_sem: torch.Tensor, z_pix: torch.Tensor, e_sem: torch.Tensor, e_pix: torch.Tensor,
                w_sem: float = 1.0, w_pix: float = 1.0) -> torch.Tensor:
    """TokenFlow's shared index: z_sem (N, Ds), z_pix (N, Dp), e_sem (K, Ds), e_pix (K, Dp), all
    l2-normalised -> ids (N,) minimising ``w_sem d_sem + w_pix d_pix`` (squared Euclidean)."""
    d_sem = torch.cdist(z_sem, e_sem).pow(2)  # (N, K)
    d_pix = torch.cdist(z_pix, e_pix).pow(2)
    return (w_sem * d_sem + w_pix * d_pix).argmin(-1)


class DualCodebook(nn.Module):
    """Two l2-normalised codebooks addressed by one index (see :func:`joint_index`)."""

    def __init__(self, size: int, sem_dim: int, pix_dim: int, w_sem: float, w_pix: float, beta: float,
                 restart_after: int = 50):
        super().__init__()
        self.w_sem, self.w_pix, self.beta, self.restart_after = w_sem, w_pix, beta, restart_after
        self.sem = nn.Parameter(torch.randn(size, sem_dim))
        self.pix = nn.Parameter(torch.randn(size, pix_dim))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("idle", torch.zeros(size, dtype=torch.long))  # steps since each code was last picked

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.sem, dim=-1), F.normalize(self.pix, dim=-1)  # (K, Ds), (K, Dp)

    @torch.no_grad()
    def _init_from(self, z_sem: torch.Tensor, z_pix: torch.Tensor) -> None:
        """Data init at the first training batch: codes = random batch vectors (+ small noise)."""
        pick = torch.randint(len(z_sem), (len(self.sem),), device=z_sem.device)
        self.sem.copy_(z_sem[pick] + 0.01 * torch.randn_like(self.sem))
        self.pix.copy_(z_pix[pick] + 0.01 * torch.randn_like(self.pix))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_idle(self, z_sem: torch.Tensor, z_pix: torch.Tensor, ids: torch.Tensor) -> None:
        """Codes not picked for ``restart_after`` training steps jump to random batch vectors."""
        self.idle += 1
        self.idle[ids.unique()] = 0
        dead = (self.idle > self.restart_after).nonzero().flatten()
        if len(dead):
            pick = torch.randint(len(z_sem), (len(dead),), device=z_sem.device)
            self.sem[dead] = z_sem[pick]
            self.pix[dead] = z_pix[pick]
            self.idle[dead] = 0

    def forward(self, z_sem: torch.Tensor, z_pix: torch.Tensor):
        """z_sem (N, Ds), z_pix (N, Dp) -> (q_sem, q_pix straight-through, ids (N,), vq loss)."""
        z_sem, z_pix = F.normalize(z_sem, dim=-1), F.normalize(z_pix, dim=-1)
        if self.training and not bool(self.initialized):
            self._init_from(z_sem.detach(), z_pix.detach())
        e_sem, e_pix = self.tables()
        ids = joint_index(z_sem.detach(), z_pix.detach(), e_sem.detach(), e_pix.detach(), self.w_sem, self.w_pix)
        if self.training:
            self._restart_idle(z_sem.detach(), z_pix.detach(), ids)
            e_sem, e_pix = self.tables()
        z = torch.cat([z_sem, z_pix], -1)
        q = torch.cat([e_sem[ids], e_pix[ids]], -1)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        q = z + (q - z).detach()
        return q[:, :z_sem.shape[1]], q[:, z_sem.shape[1]:], ids, loss


class TokenFlowTokenizer(SafetensorsOnly, ModelMixin, ConfigMixin, VisualTokenizerMixin):
    """encode: (B, 3, S, S) -> ids (B, g*g) raster grid addressing both codebooks; decode from the pixel side."""

    @register_to_config
    def __init__(self, image_size: int = 64, patch_size: int = 8, width: int = 128, sem_depth: int = 2,
                 sem_decoder_depth: int = 2, heads: int = 4, sem_dim: int = 32, pix_dim: int = 8,
                 pixel_channels: tuple = (16, 64, 128), codebook_size: int = 1024, w_sem: float = 1.0,
                 w_pix: float = 1.0, beta: float = 0.25, embed_dim: int = 64, text_vocab_size: int = 0,
                 weights: tuple = (1.0, 1.0, 1.0)):
        super().__init__()
        if patch_size != 2 ** len(pixel_channels):
            raise ValueError(f"patch_size ({patch_size}) must equal 2^len(pixel_channels) ({2 ** len(pixel_channels)}): "
                             "the semantic patch grid and the pixel encoder grid share one index per cell")
        check_image_size(image_size, patch_size=patch_size)
        if not (w_sem >= 0 and w_pix >= 0 and w_sem + w_pix > 0):
            raise ValueError(f"w_sem and w_pix must be >= 0 and not both 0, got {w_sem} and {w_pix}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.grid = image_size // patch_size
        g2 = self.grid ** 2
        self.patch_embed = PatchEmbed(image_size, patch_size, 3, width)
        self.sem_pos = nn.Parameter(torch.randn(1, g2, width) * 0.02)
        self.sem_blocks = nn.ModuleList(Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(sem_depth))
        self.sem_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, sem_dim))
        self.pixel_encoder = conv_encoder(tuple(pixel_channels), pix_dim)
        self.codebook_pair = DualCodebook(codebook_size, sem_dim, pix_dim, w_sem, w_pix, beta)
        self.sem_in = nn.Linear(sem_dim, width)
        self.sem_dec_pos = nn.Parameter(torch.randn(1, g2, width) * 0.02)
        self.sem_decoder = nn.ModuleList(Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(sem_decoder_depth))
        self.sem_norm = nn.LayerNorm(width)
        self.sem_proj = nn.Linear(width, embed_dim)
        self.text = CaptionTower(text_vocab_size or len(caption_tokenizer()), embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.pixel_decoder = conv_decoder(pix_dim, tuple(pixel_channels))
        self.fixed_image_size = image_size
        self.downsample_factor = patch_size

    # --- contract -------------------------------------------------------------------------
    @property
    def codebook(self) -> torch.Tensor:
        """(V, sem_dim + pix_dim): both normalised halves side by side (what one id addresses)."""
        return torch.cat(self.codebook_pair.tables(), -1).detach()

    def layout_for(self, image_size: int | None = None) -> TokenLayout:
        return TokenLayout("grid", height=self.grid, width=self.grid, order="raster")

    def _quantize(self, images: torch.Tensor):
        """-> q_sem (B, G, Ds), q_pix (B, G, Dp), ids (B, G), vq loss."""
        h = self.patch_embed(images) + self.sem_pos
        for blk in self.sem_blocks:
            h = blk(h)
        z_sem = self.sem_head(h)  # (B, G, Ds)
        z_pix = rearrange(self.pixel_encoder(images), "b d h w -> b (h w) d")  # (B, G, Dp)
        b, g = z_sem.shape[:2]
        q_sem, q_pix, ids, loss = self.codebook_pair(z_sem.flatten(0, 1), z_pix.flatten(0, 1))
        return q_sem.view(b, g, -1), q_pix.view(b, g, -1), ids.view(b, g), loss

    def _semantic(self, q_sem: torch.Tensor) -> torch.Tensor:
        h = self.sem_in(q_sem) + self.sem_dec_pos
        for blk in self.sem_decoder:
            h = blk(h)
        return self.sem_norm(h)  # (B, G, W)

    def _pixels(self, q_pix: torch.Tensor) -> torch.Tensor:
        return self.pixel_decoder(rearrange(q_pix, "b (h w) d -> b d h w", h=self.grid))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> TokenBatch:
        images = self.check_images(images)
        q_sem, _, ids, _ = self._quantize(images)
        return TokenBatch(ids=ids, layout=self.layout_for(), extras={"semantic_features": self._semantic(q_sem)})

    def _check_grid_ids(self, ids):
        if isinstance(ids, TokenBatch):
            ids = ids.ids
        self.check_ids(ids)
        if ids.shape[1] != self.grid ** 2:
            raise ValueError(f"ids must hold {self.grid ** 2} tokens, got {ids.shape[1]}")
        return ids

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        ids = self._check_grid_ids(ids)
        return self._pixels(self.codebook_pair.tables()[1][ids])

    @torch.no_grad()
    def semantic_features(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, G) -> semantic-decoder features (B, G, W) for understanding tasks."""
        ids = self._check_grid_ids(ids)
        return self._semantic(self.codebook_pair.tables()[0][ids])

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Caption-aligned image embedding (B, embed_dim) from the quantized semantic half."""
        return F.normalize(self.sem_proj(self.semantic_features(self.encode(images).ids).mean(1)), dim=-1)

    @torch.no_grad()
    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        return self.text(captions)

    # --- training -------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, captions=None, generator: torch.Generator | None = None) -> dict:
        w_clip, w_vq, w_pix = self.config.weights
        q_sem, q_pix, _, vq_loss = self._quantize(images)
        out = {"vq": vq_loss, "reconstruction": pixel_loss(self._pixels(q_pix), images)}
        loss = w_vq * vq_loss + w_pix * out["reconstruction"]
        if captions:
            n = len(captions)
            img = F.normalize(self.sem_proj(self._semantic(q_sem[:n]).mean(1)), dim=-1)
            out["contrastive"] = contrastive_loss(img, self.text(captions), self.logit_scale)
            loss = loss + w_clip * out["contrastive"]
        out = {k: v.detach() for k, v in out.items()}
        out["loss"] = loss
        return out
