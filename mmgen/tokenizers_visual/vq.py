"""LlamaGen-style VQ tokenizer (Sun et al. 2024, "Autoregressive Model Beats Diffusion", sec. 2.1).

Follows LlamaGen's design: a convolutional encoder/decoder (GroupNorm + Swish residual blocks),
a low-dimensional (8-d) l2-normalised codebook searched by cosine similarity, commitment loss
0.25 and straight-through gradients. 64x64 images become a 16x16 grid (downsampling 4), so a
32x32 digit becomes 8x8. Deviations, for a CPU-sized model: two downsampling stages with
few channels and no attention blocks, no LPIPS or PatchGAN loss (L2 + L1 only), and the codebook is updated by EMA
with dead-code replacement (``vector_quantize_pytorch.VectorQuantize``) instead of by gradient.

``local_encoder=True`` (not in LlamaGen) swaps the deep encoder, whose GroupNorm statistics and 3x3 blocks let a
token's code depend on the whole image, for a patch-local one: no normalisation, each token sees a window of
10 + 8 * ``local_context`` pixels, so equal patches get equal codes (a flat background is one code, not dozens).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from vector_quantize_pytorch import VectorQuantize

from ..safetensors_only import SafetensorsOnly
from .base import TokenBatch, TokenLayout, VisualTokenizerMixin


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c // 4), c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                   _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class VQTokenizer(SafetensorsOnly, ModelMixin, ConfigMixin, VisualTokenizerMixin):
    """Conv VQ autoencoder with an l2-normalised codebook.

    encode: (B, 3, H, W) in [-1, 1] -> TokenBatch(ids (B, (H/4)*(W/4)), grid layout, raster order)
    decode: ids (B, N) -> (B, 3, H, W), H = 4 * sqrt(N)
    """

    @register_to_config
    def __init__(self, channels: tuple = (32, 64), num_res_blocks: int = 2, codebook_size: int = 1024,
                 codebook_dim: int = 8, commitment_weight: float = 0.25, ema_decay: float = 0.9,
                 dead_code_threshold: float = 2.0, local_encoder: bool = False,
                 local_context: int = 0):
        super().__init__()
        if local_context < 0 or (local_context and not local_encoder):
            raise ValueError(f"local_context must be >= 0 and needs local_encoder=True, got {local_context} "
                             f"with local_encoder={local_encoder}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0 (0 = never re-seed), got {dead_code_threshold}")
        c1, c2 = channels
        stem = [nn.Conv2d(3, c1, 4, stride=2, padding=1), nn.SiLU(),  # (B, c1, H/2, W/2)
                nn.Conv2d(c1, c2, 4, stride=2, padding=1)]  # (B, c2, H/4, W/4)
        if local_encoder:  # no GroupNorm: a token sees a (10 + 8 * local_context)-pixel window only
            context = [m for _ in range(local_context) for m in (nn.Conv2d(c2, c2, 3, padding=1), nn.SiLU())]
            tail = [nn.SiLU(), *context, nn.Conv2d(c2, c2, 1), nn.SiLU(), nn.Conv2d(c2, c2, 1), nn.SiLU()]
        else:
            tail = [*[ResBlock(c2, c2) for _ in range(num_res_blocks)], _norm(c2), nn.SiLU()]
        self.encoder = nn.Sequential(*stem, *tail, nn.Conv2d(c2, codebook_dim, 1))  # (B, D, H/4, W/4)
        self.quantizer = VectorQuantize(
            dim=codebook_dim, codebook_size=codebook_size, use_cosine_sim=True, kmeans_init=True,
            kmeans_iters=10, decay=ema_decay, commitment_weight=commitment_weight,
            threshold_ema_dead_code=dead_code_threshold, accept_image_fmap=True,
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(codebook_dim, c2, 3, padding=1), *[ResBlock(c2, c2) for _ in range(num_res_blocks)],
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), ResBlock(c1, c1),  # (B, c1, H/2, W/2)
            _norm(c1), nn.SiLU(), nn.ConvTranspose2d(c1, 3, 4, stride=2, padding=1),  # (B, 3, H, W)
        )

    downsample_factor = 4

    # --- contract -------------------------------------------------------------------------
    @property
    def codebook(self) -> torch.Tensor:
        """(V, D) l2-normalised code vectors (what decode looks up)."""
        return F.normalize(self.quantizer.codebook.detach(), dim=-1)

    def layout_for(self, image_size: int) -> TokenLayout:
        g = image_size // self.downsample_factor
        return TokenLayout("grid", height=g, width=g, order="raster")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> TokenBatch:
        images = self.check_images(images)
        _, ids, _ = self.quantizer(self.encoder(images))  # ids (B, h, w)
        return TokenBatch(ids=ids.flatten(1).long(), layout=self.layout_for(images.shape[-1]))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(ids, TokenBatch):
            ids = ids.ids
        self.check_ids(ids)
        g = int(round(ids.shape[1] ** 0.5))
        if g < 1 or g * g != ids.shape[1]:
            raise ValueError(f"ids must hold a non-empty square grid of tokens, got N={ids.shape[1]}")
        return self.decoder(self.embed_ids(ids.view(-1, g, g)))

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> quantized feature map (B, D, h, w)."""
        z = self.codebook[ids]  # (B, h, w, D)
        return rearrange(z, "b h w d -> b d h w")

    # --- training -------------------------------------------------------------------------
    def forward(self, images: torch.Tensor):
        """Training pass: returns (reconstruction (B, 3, H, W), ids (B, h, w), commitment loss)."""
        z_q, ids, commit = self.quantizer(self.encoder(images))
        return self.decoder(z_q), ids, commit.sum()
