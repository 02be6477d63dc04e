"""diffusers-style pipelines (components + ``__call__``)."""

from .ar_image import ARImagePipeline, ARImagePipelineOutput

__all__ = ["ARImagePipeline", "ARImagePipelineOutput"]
