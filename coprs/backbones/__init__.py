"""Vision backbones (VISION_BACKBONES registry)."""

from .base import BaseVisionBackbone
from .sam_vit import SAM_VIT_PRESETS, SAMViTBackbone, build_sam_image_encoder, load_sam_state

__all__ = [
    "BaseVisionBackbone", "SAMViTBackbone", "SAM_VIT_PRESETS", "build_sam_image_encoder",
    "load_sam_state",
]
