"""Decoders (DECODERS registry)."""

from .base import BaseDecoder
from .prior_decoder import PriorDecoder
from .sam_modules import SAM_DECODER_PRESETS, BatchedMaskDecoder

__all__ = ["BaseDecoder", "PriorDecoder", "BatchedMaskDecoder", "SAM_DECODER_PRESETS"]
