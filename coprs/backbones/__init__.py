"""Vision backbones (VISION_BACKBONES registry)."""

from .base import BaseVisionBackbone
from .feature_cache import FeatureCache, image_key
from .sam_vit import SAM_VIT_PRESETS, SAMViTBackbone, build_sam_image_encoder, load_sam_state

__all__ = [
    "BaseVisionBackbone", "SAMViTBackbone", "FeatureCache", "image_key", "SAM_VIT_PRESETS", "build_sam_image_encoder",
    "load_sam_state",
]
