"""Segmentors (MODELS registry)."""

from .segmentor import ReasoningSegmentor, postprocess_logits

__all__ = ["ReasoningSegmentor", "postprocess_logits"]
