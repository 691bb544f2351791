"""Decoders (DECODERS registry)."""

from .base import BaseDecoder
from .prior_decoder import PriorDecoder
from .sam_modules import SAM_DECODER_PRESETS, BatchedMaskDecoder
from .sam_prompt_decoder import SAMPromptDecoder

__all__ = ["BaseDecoder", "PriorDecoder", "SAMPromptDecoder", "BatchedMaskDecoder",
           "SAM_DECODER_PRESETS"]
