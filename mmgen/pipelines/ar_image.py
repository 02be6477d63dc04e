"""``ARImagePipeline``: a diffusers ``DiffusionPipeline`` over an AR generator, a VQ tokenizer and an
optional text encoder. Usage::

    pipe = ARImagePipeline.from_pretrained("assets/scenes-t2i")
    out = pipe("a large green square in the center, white background", decoding="ar",
               generator=torch.Generator().manual_seed(0))
    out.images[0].save("x.png"); print(out.stats.to_dict())
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput

from .. import tokenizers_visual  # noqa: F401  (diffusers only loads components from imported modules)
from ..decoding import DecodeStats, SamplingConfig, get_decoder
from ..decoding.base import check_token_edit
from ..decoding.sampling import check_guidance
from ..models import Condition
from ..models.text import encode_prompts
from ..safetensors_only import SafetensorsOnly

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class ARImagePipelineOutput(BaseOutput):
    """``images``: list of PIL images, or array (B, H, W, 3) / tensor (B, 3, H, W); ``tokens`` (B, N); ``stats``."""

    images: "list[PIL.Image.Image] | np.ndarray | torch.Tensor"
    tokens: torch.Tensor
    stats: DecodeStats


class ARImagePipeline(SafetensorsOnly, DiffusionPipeline):
    """condition -> ``transformer.prefill`` -> decoder (AR or an accelerator) -> ``vq.decode`` -> images."""

    model_cpu_offload_seq = "text_encoder->transformer->vq"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["tokens"]

    def __init__(self, transformer, vq, text_encoder=None, tokenizer=None):
        super().__init__()
        self.register_modules(transformer=transformer, vq=vq, text_encoder=text_encoder, tokenizer=tokenizer)
        self.image_processor = VaeImageProcessor(do_normalize=True)

    @property
    def is_class_conditional(self) -> bool:
        return self.transformer.is_class_conditional

    def check_inputs(self, prompt, class_labels, num_images_per_prompt, guidance_scale, output_type,
                     callback_on_step_end_tensor_inputs):
        if self.is_class_conditional:
            if prompt is not None:
                raise ValueError("prompt is not accepted by a class-conditional pipeline; pass class_labels")
            if class_labels is None:
                raise ValueError("class_labels is required for a class-conditional pipeline")
        elif class_labels is not None or prompt is None:
            raise ValueError("this is a text-to-image pipeline: pass prompt (a string or list of strings)")
        n = num_images_per_prompt
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt}")
        check_guidance(guidance_scale)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        bad = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be a subset of {self._callback_tensor_inputs}")

    def encode_condition(self, prompt=None, class_labels=None, num_images_per_prompt: int = 1) -> Condition:
        dev = self._execution_device
        if self.is_class_conditional:
            n = self.transformer.config.num_classes
            if isinstance(class_labels, (torch.Tensor, np.ndarray)) and class_labels.ndim <= 1:
                items = class_labels.reshape(-1).tolist()  # 0-d or 1-d: its numbers
            elif np.isscalar(class_labels) or not isinstance(class_labels, Iterable):
                items = [class_labels]
            else:
                items = list(class_labels)
            if not items or not all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))
                                    for c in items):
                raise ValueError(f"class_labels must be an int or a non-empty list of ints, got {class_labels!r}")
            labels = torch.as_tensor([int(c) for c in items])
            if bool((labels < 0).any()) or bool((labels >= n).any()):
                raise ValueError(f"class_labels must lie in [0, {n - 1}], got {labels.tolist()}")
            return Condition(class_labels=labels.long().repeat_interleave(num_images_per_prompt).to(dev))
        prompts = [prompt] if isinstance(prompt, str) else (list(prompt) if isinstance(prompt, (list, tuple)) else None)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        feats, mask = encode_prompts(self.text_encoder, self.tokenizer, prompts,
                                     self.transformer.config.prefix_len, dev)
        return Condition(text_features=feats.repeat_interleave(num_images_per_prompt, 0),
                         text_mask=mask.repeat_interleave(num_images_per_prompt, 0))

    @torch.no_grad()
    def __call__(self, prompt: "str | list[str] | None" = None, class_labels=None, num_images_per_prompt: int = 1,
                 guidance_scale: float = 3.0, cfg_interval: "tuple[float, float] | None" = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, do_sample: bool = True,
                 generator: "torch.Generator | list[torch.Generator] | None" = None, decoding=None,
                 decoding_options: "dict | None" = None, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: "list[str] | None" = None):
        """Generate images. ``decoding`` is a registered name ("ar", "sjd", "nar", ...) or a Decoder object;
        ``None`` uses the generator's own order (``transformer.native_decoding``: "ar", "nar" or "nbp").

        ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` runs after every decoder
        step (``timestep`` = number of tokens committed); it may return ``{"tokens": ...}`` to edit them.
        """
        cb_inputs = callback_on_step_end_tensor_inputs or ["tokens"]
        self.check_inputs(prompt, class_labels, num_images_per_prompt, guidance_scale, output_type, cb_inputs)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, do_sample=do_sample)
        decoder = get_decoder(self.transformer.native_decoding if decoding is None else decoding,
                              **(decoding_options or {}))
        decoder.check_generator(self.transformer)  # before prefill, whose cache layout depends on the decoder
        decoder.prepare(self.vq)
        cond = self.encode_condition(prompt, class_labels, num_images_per_prompt)
        n_tok = self.transformer.num_tokens
        with self.progress_bar(total=n_tok) as bar:
            done = [0]

            def callback(step, tokens):
                bar.update(tokens.shape[1] - done[0])
                done[0] = tokens.shape[1]
                if callback_on_step_end is None:
                    return None
                kwargs = {}
                for k in cb_inputs:
                    kwargs[k] = locals()[k]
                out = callback_on_step_end(self, step, tokens.shape[1], kwargs)
                if out is None:
                    return None
                if not isinstance(out, dict):
                    raise ValueError(f"callback_on_step_end must return a dict (or None), got {type(out).__name__}")
                new = out.pop("tokens", None)
                return None if new is None else check_token_edit(new, tokens, self.transformer.config.vocab_size,
                                                                  "callback_on_step_end's 'tokens'")

            state = self.transformer.prefill(cond, guidance_scale=guidance_scale, cfg_interval=cfg_interval,
                                             extra_slots=decoder.extra_slots)
            result = decoder.decode(self.transformer, state, sampling, generator, callback)
        tokens = result.tokens
        if output_type == "latent":
            images = tokens
        else:
            x = self.vq.decode(tokens, **self.vq.decode_kwargs(generator))  # (B, 3, H, W) in ~[-1, 1]
            images = self.image_processor.postprocess(x.clamp(-1, 1), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, result.stats
        return ARImagePipelineOutput(images=images, tokens=tokens, stats=result.stats)
