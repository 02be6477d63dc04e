"""mmgen: token-based multimodal generation with training-free accelerators."""

__version__ = "0.1.0"
