"""AR generators implementing the generator contract (prefill / forward_step / rollback-able cache)."""

from .ar_transformer import ARTransformer, Condition, DecodeState, StepOutput

__all__ = ["ARTransformer", "Condition", "DecodeState", "StepOutput"]
