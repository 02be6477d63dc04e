"""SEED: one-dimensional causal image tokens (Ge et al. 2023, "Planting a SEED of Vision in Large
Language Model"; SEED-LLaMA, Ge et al. 2023).

Follows: ViT image encoder -> causal Q-Former (``transformers.Blip2QFormerModel``; learned queries,
causal self-attention among queries, cross-attention to every image feature) -> 32 causal
embeddings; the last query (the only one that sees all queries) is aligned with the caption by a
symmetric contrastive loss with label smoothing 0.1 and a learnable temperature (init 0.07);
``encode_task_layer`` (Linear, Tanh, Linear) -> 16-d codes -> VQ codebook (512 codes) ->
``decode_task_layer`` -> 2 ViT blocks reconstructing the Q-Former embeddings (1 - cosine), and a
generation branch (2 ViT blocks + per-token MLP, flattened, Linear) -> a "generation embedding".
Token i depends only on queries <= i, so a prefix of ids is fixed by a prefix of queries.

Deviations (CPU scale, no pretrained models): one training stage instead of two (stage 1
contrastive with a frozen EVA-CLIP ViT, stage 2 codebook with a frozen Q-Former), the ViT and the
caption encoder are trained from scratch; the codebook is Euclidean but EMA-updated with dead-code
restarts (vector-quantize-pytorch) rather than SEED's gradient codebook; and the image decoder is
substituted: SEED regresses a CLIP-H image embedding and renders it with Stable unCLIP (diffusion),
here the generation embedding feeds a conv decoder trained jointly with an L2 + L1 pixel loss.
Optional (``caption_weight`` > 0, off in the shipped checkpoint): an image-grounded captioning loss on the
quantized tokens, BLIP-2's ITG objective (Li et al. 2023) that SEED's stage 1 leaves out: a 2-layer causal text
decoder (``transformers.BertModel`` as a decoder, plus a linear word head) cross-attends to the 32 decoded codes
and predicts the caption word by word. On template captions the contrastive loss is met by the background alone
(each slot's shape and colour stay at chance in the tokens, docs/BENCHMARKS.md); here every word must come from
the codes.
Optional (``vision_vq`` = the config of a trained :class:`VQTokenizer`, weights loaded by the trainer's
``--proxy``): the nearest thing here to SEED's frozen pretrained ViT; the Q-Former's image features are that VQ's
frozen code grid (s x s cells per patch, Linear, LayerNorm) followed by the trainable ViT blocks.
Optional (``renderer`` = an :class:`~mmgen.models.ARTransformer` config, needs ``vision_vq``; trained by
``python -m mmgen.train.train_seed_renderer``): a generative image decoder in unCLIP's place. SEED renders its
tokens with a *pretrained* diffusion model conditioned on them; here a pretrained AR image generator over the
frozen VQ's code grid (warm-started from the text-to-image ``scenes-t2i``) takes the 32 decoded codes
(``decode_task_layer``, what the captioner reads) as its prefix in place of the caption, samples the code grid
(CFG with the null prefix, condition dropout 0.1 in training) and the frozen VQ draws it. Then ``decode`` is
stochastic: it draws from the ``generator`` it is given (``stochastic_decode`` is True).
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
from transformers import BertConfig, BertModel, Blip2QFormerConfig, Blip2QFormerModel
from vector_quantize_pytorch import VectorQuantize

from ..decoding.ar import ARDecoder
from ..decoding.sampling import SamplingConfig, check_guidance, check_temperature
from ..models.ar_transformer import ARTransformer, Condition
from ..safetensors_only import SafetensorsOnly
from ._parts import CAPTION_LEN, CaptionTower, caption_ids, caption_tokenizer, contrastive_loss, conv_decoder, pixel_loss
from .base import TokenBatch, TokenLayout, VisualTokenizerMixin, check_image_size, init_args
from .vq import VQTokenizer


class SEEDTokenizer(SafetensorsOnly, ModelMixin, ConfigMixin, VisualTokenizerMixin):
    """encode: (B, 3, S, S) -> ids (B, Q) causal sequence; decode: ids (B, Q) -> (B, 3, S, S)."""

    is_causal = True

    @register_to_config
    def __init__(self, image_size: int = 64, patch_size: int = 8, width: int = 128, vit_depth: int = 3,
                 heads: int = 4, qformer_layers: int = 2, num_queries: int = 32, code_dim: int = 16,
                 codebook_size: int = 512, embed_dim: int = 64, recon_depth: int = 2, gen_dim: int = 256,
                 decoder_channels: tuple = (16, 32, 64, 128), text_vocab_size: int = 0,
                 commitment_weight: float = 0.25, ema_decay: float = 0.9, dead_code_threshold: float = 2.0,
                 weights: tuple = (1.0, 1.0, 2.0, 1.0), caption_weight: float = 0.0, vision_vq: dict | None = None,
                 renderer: dict | None = None, render_guidance: float = 1.5, render_temperature: float = 1.0):
        super().__init__()
        if not caption_weight >= 0:
            raise ValueError(f"caption_weight must be >= 0, got {caption_weight}")
        check_guidance(render_guidance, "render_guidance")
        check_temperature(render_temperature, name="render_temperature")
        check_image_size(image_size, patch_size=patch_size, **{"2^len(decoder_channels)": 2 ** len(decoder_channels)})
        g = (image_size // patch_size) ** 2
        # image encoder: (B, 3, S, S) -> (B, G, W)
        self.vision, self.patch_embed = None, None
        if vision_vq is None:
            self.patch_embed = PatchEmbed(image_size, patch_size, 3, width)
        else:  # a frozen pretrained encoder, as SEED's frozen ViT: a trained VQ tokenizer's code grid
            self.vision = VQTokenizer(**vision_vq).requires_grad_(False).eval()
            grid = image_size // self.vision.downsample_factor
            if grid % (image_size // patch_size):
                raise ValueError(f"the vision VQ's grid ({grid}) must be a multiple of the patch grid "
                                 f"({image_size // patch_size})")
            self.sub = grid // (image_size // patch_size)  # VQ cells per patch, per side
            self.vision_in = nn.Linear(self.sub ** 2 * self.vision.config.codebook_dim, width)
            self.ln_pre = nn.LayerNorm(width)
        self.vit_pos = nn.Parameter(torch.randn(1, g, width) * 0.02)
        self.vit = nn.ModuleList(Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(vit_depth))
        self.vit_norm = nn.LayerNorm(width)
        # causal Q-Former: (B, Q, W) queries x (B, G, W) image features -> (B, Q, W)
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        self.qformer = Blip2QFormerModel(Blip2QFormerConfig(
            hidden_size=width, num_hidden_layers=qformer_layers, num_attention_heads=heads,
            intermediate_size=2 * width, cross_attention_frequency=1, encoder_hidden_size=width))
        self.register_buffer("query_mask", torch.tril(torch.ones(num_queries, num_queries, dtype=torch.bool)),
                             persistent=False)
        # contrastive heads
        self.vision_proj = nn.Linear(width, embed_dim)
        self.caption_vocab = text_vocab_size or len(caption_tokenizer())  # caption word ids (BOS = this, ITG)
        self.text = CaptionTower(self.caption_vocab, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # codebook
        self.encode_task_layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, code_dim))
        self.quantizer = VectorQuantize(dim=code_dim, codebook_size=codebook_size, kmeans_init=True, kmeans_iters=10,
                                        decay=ema_decay, commitment_weight=commitment_weight,
                                        threshold_ema_dead_code=dead_code_threshold)
        self.decode_task_layer = nn.Sequential(nn.Linear(code_dim, code_dim), nn.Tanh(), nn.Linear(code_dim, width))
        self.recon_pos = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        self.recon_blocks = nn.ModuleList(Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(recon_depth))
        self.gen_blocks = nn.ModuleList(Block(width, heads, mlp_ratio=4, qkv_bias=True) for _ in range(recon_depth))
        self.gen_mlp = nn.Sequential(nn.Linear(width, 64, bias=False), nn.ReLU(), nn.Linear(64, 32, bias=False),
                                     nn.ReLU(), nn.Linear(32, 8, bias=False))
        self.gen_head = nn.Linear(8 * num_queries, gen_dim)
        self.captioner = None
        if caption_weight > 0:  # ITG: caption words from the decoded codes; ids: caption vocabulary + [BOS]
            self.captioner = BertModel(BertConfig(
                vocab_size=self.caption_vocab + 1, hidden_size=width, num_hidden_layers=2, num_attention_heads=heads,
                intermediate_size=2 * width, max_position_embeddings=CAPTION_LEN + 8, type_vocab_size=1,
                is_decoder=True, add_cross_attention=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                add_pooling_layer=False)  # causal self-attention (is_decoder), cross-attention to the codes
            self.caption_head = nn.Linear(width, self.caption_vocab + 1)
        # image decoder (substitute for unCLIP): generation embedding -> (B, C, s, s) -> pixels
        self.seed_side = image_size // 2 ** len(decoder_channels)
        self.dec_in = nn.Linear(gen_dim, decoder_channels[-1] * self.seed_side ** 2)
        self.pixel_decoder = conv_decoder(decoder_channels[-1], tuple(decoder_channels))
        self.fixed_image_size = image_size
        self.downsample_factor = patch_size
        # generative decoder (unCLIP's role): 32 decoded codes (B, Q, W) as prefix -> the frozen VQ's code grid
        self.render_transformer = None if renderer is None else self.build_renderer(renderer)

    # --- contract -------------------------------------------------------------------------
    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.codebook.detach()  # (V, code_dim), Euclidean

    def layout_for(self, image_size: int | None = None) -> TokenLayout:
        return TokenLayout("sequence", length=self.config.num_queries, order="causal")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vision is not None:
            self.vision.eval()  # frozen: its EMA codebook must never update
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> ViT features (B, G, W)."""
        if self.vision is None:
            h = self.patch_embed(images) + self.vit_pos
        else:
            with torch.no_grad():
                batch = self.vision.encode(images)  # ids (B, h * w), raster
                z = self.vision.embed_ids(batch.ids.view(len(images), batch.layout.height, batch.layout.width))
            # z (B, D, h, w): the frozen code grid
            z = rearrange(z, "b d (h p) (w q) -> b (h w) (p q d)", p=self.sub, q=self.sub)
            h = self.ln_pre(self.vision_in(z) + self.vit_pos)
        for blk in self.vit:
            h = blk(h)
        return self.vit_norm(h)

    def causal_embeddings(self, images: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) -> causal Q-Former outputs (B, Q, W); ``queries`` (1 or B, Q, W) overrides the learned ones."""
        feats = self.image_features(images)
        q = (self.query_tokens if queries is None else queries).expand(len(images), -1, -1)
        mask = self.query_mask[None, None].expand(len(images), 1, -1, -1)  # (B, 1, Q, Q) True = attend
        return self.qformer(query_embeds=q, attention_mask=mask, encoder_hidden_states=feats).last_hidden_state

    def _generation_embedding(self, zq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """quantized codes (B, Q, code_dim) -> (reconstructed Q-Former embeddings (B, Q, W), generation embedding (B, gen_dim))."""
        h = self.decode_task_layer(zq) + self.recon_pos
        r = h
        for blk in self.recon_blocks:
            r = blk(r)
        for blk in self.gen_blocks:
            h = blk(h)
        return r, self.gen_head(self.gen_mlp(h).flatten(1))

    def _render(self, gen: torch.Tensor) -> torch.Tensor:
        c = self.config.decoder_channels[-1]
        return self.pixel_decoder(self.dec_in(gen).view(len(gen), c, self.seed_side, self.seed_side))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> TokenBatch:
        images = self.check_images(images)
        zq, ids, _ = self.quantizer(self.encode_task_layer(self.causal_embeddings(images)))
        _, gen = self._generation_embedding(zq)
        return TokenBatch(ids=ids.long(), layout=self.layout_for(), extras={"generation_embedding": gen})

    def build_renderer(self, config: dict) -> ARTransformer:
        """A fresh renderer: ``config`` (ARTransformer arguments) completed with what the tokenizer fixes."""
        if self.vision is None:
            raise ValueError("renderer draws the vision VQ's code grid: it needs vision_vq")
        need = dict(caption_dim=self.config.width, prefix_len=self.config.num_queries,
                    vocab_size=self.vision.vocab_size, grid_size=self.fixed_image_size // self.vision.downsample_factor,
                    grid_width=0, order="raster")
        config = init_args(config)
        bad = {k: (config[k], v) for k, v in need.items() if k in config and config[k] != v}
        if bad:
            raise ValueError(f"renderer config must have {need}; got (given, needed) {bad}")
        return ARTransformer(**{**config, **need})

    @property
    def stochastic_decode(self) -> bool:
        """True when ``decode`` samples (the generative renderer): pipelines then pass their generator."""
        return self.render_transformer is not None

    def render_condition(self, ids: torch.Tensor) -> Condition:
        """ids (B, Q) -> the renderer's prefix: the decoded codes (B, Q, W), all visible."""
        feats = self.decode_task_layer(self.codebook[ids])  # (B, Q, W)
        return Condition(text_features=feats, text_mask=torch.ones(feats.shape[:2], dtype=torch.bool,
                                                                   device=feats.device))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, generator: "torch.Generator | list | None" = None,
               guidance_scale: float | None = None, temperature: float | None = None) -> torch.Tensor:
        """ids (B, Q) -> images (B, 3, S, S). With a renderer: its code grid sampled with ``generator`` (one per
        row allowed), CFG ``guidance_scale`` and ``temperature`` (defaults: the config's render_*); without one
        the pixel decoder, deterministic (``generator`` unused)."""
        if isinstance(ids, TokenBatch):
            ids = ids.ids
        self.check_ids(ids)
        if ids.shape[1] != self.config.num_queries:
            raise ValueError(f"ids must hold {self.config.num_queries} tokens, got {ids.shape[1]}")
        if self.render_transformer is None:
            return self._render(self._generation_embedding(self.codebook[ids])[1])
        cfg = self.config.render_guidance if guidance_scale is None else guidance_scale
        temp = self.config.render_temperature if temperature is None else temperature
        sampling = SamplingConfig(temperature=temp)  # checks temp; prefill checks cfg
        state = self.render_transformer.prefill(self.render_condition(ids), guidance_scale=cfg)
        codes = ARDecoder().decode(self.render_transformer, state, sampling, generator).tokens
        return self.vision.decode(codes)  # codes (B, g * g) raster -> the frozen VQ's pixels

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Contrastive image embedding (B, embed_dim), l2-normalised (from the last causal query)."""
        return F.normalize(self.vision_proj(self.causal_embeddings(images)[:, -1]), dim=-1)

    @torch.no_grad()
    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        return self.text(captions)

    def caption_loss(self, zq: torch.Tensor, captions: list[str], reduction: str = "mean") -> torch.Tensor:
        """Next-word cross-entropy of ``captions`` given the quantized codes zq (n, Q, code_dim) (ITG): the mean,
        or with ``reduction="none"`` per word (n, L), words in caption order, 0 after a caption's end."""
        ids, mask = caption_ids(captions)  # left padded (n, L)
        ids, mask = ids.to(zq.device), mask.to(zq.device)
        order = torch.argsort(1 - mask, dim=1, stable=True)  # real words first, in order
        words, real = ids.gather(1, order), mask.gather(1, order).bool()  # right padded (n, L)
        bos = torch.full_like(words[:, :1], self.caption_vocab)
        inp = torch.cat([bos, words], 1)  # (n, 1 + L)
        att = torch.cat([torch.ones_like(real[:, :1]), real], 1).long()
        h = self.captioner(input_ids=inp, attention_mask=att,
                           encoder_hidden_states=self.decode_task_layer(zq)).last_hidden_state  # (n, 1 + L, W)
        logits = self.caption_head(h)  # (n, 1 + L, V + 1)
        target = words.masked_fill(~real, -100)  # logits[:, i] predicts word i
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100, reduction=reduction)
        return loss if reduction == "mean" else loss.view(target.shape)

    # --- training -------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, captions=None, generator: torch.Generator | None = None) -> dict:
        w_clip, w_vq, w_cos, w_pix = self.config.weights
        q = self.causal_embeddings(images)  # (B, Q, W)
        out = {}
        loss = 0.0
        if captions:
            n = len(captions)
            img = F.normalize(self.vision_proj(q[:n, -1]), dim=-1)
            out["contrastive"] = contrastive_loss(img, self.text(captions), self.logit_scale)
            loss = loss + w_clip * out["contrastive"]
        zq, _, commit = self.quantizer(self.encode_task_layer(q))
        if captions and self.captioner is not None:
            out["captioning"] = self.caption_loss(zq[: len(captions)], captions)
            loss = loss + self.config.caption_weight * out["captioning"]
        r, gen = self._generation_embedding(zq)
        out["cosine"] = (1 - F.cosine_similarity(r, q.detach(), dim=-1)).mean()
        out["reconstruction"] = pixel_loss(self._render(gen), images)
        loss = loss + w_vq * commit.sum() + w_cos * out["cosine"] + w_pix * out["reconstruction"]
        out = {k: v.detach() for k, v in out.items()}
        out["loss"] = loss
        return out
