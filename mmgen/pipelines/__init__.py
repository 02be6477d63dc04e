"""diffusers-style pipelines (components + ``__call__``)."""

from .ar_image import ARImagePipeline, ARImagePipelineOutput
from .speech import DualTokenSpeechPipeline, SpeechPipeline, SpeechPipelineOutput

__all__ = ["ARImagePipeline", "ARImagePipelineOutput", "SpeechPipeline", "SpeechPipelineOutput",
           "DualTokenSpeechPipeline"]
