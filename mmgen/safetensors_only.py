"""Weights are read from safetensors only: nothing in mmgen unpickles a file a user could hand it."""

from __future__ import annotations


class SafetensorsOnly:
    """Mixin listed before diffusers' ``ModelMixin`` / ``DiffusionPipeline``: ``from_pretrained`` passes
    ``use_safetensors=True`` (every component of a pipeline too), so a folder holding only a pickle-based ``.bin``
    is refused with diffusers' "no file named ... .safetensors" error instead of being unpickled."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        if kwargs.get("use_safetensors") is False:
            raise ValueError("use_safetensors=False is not supported: mmgen loads weights from safetensors only")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(*args, **kwargs)
