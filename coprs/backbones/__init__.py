"""Vision backbones (VISION_BACKBONES registry)."""

from .adapter import FeatureMapBackbone, GridNeck, file_fingerprint, load_state_file
from .base import BaseVisionBackbone
from .feature_cache import FeatureCache, image_key
from .sam_vit import SAM_VIT_PRESETS, SAMViTBackbone, build_sam_image_encoder, load_sam_state

__all__ = [
    "BaseVisionBackbone", "SAMViTBackbone", "FeatureCache", "image_key", "SAM_VIT_PRESETS", "build_sam_image_encoder",
    "load_sam_state", "FeatureMapBackbone", "GridNeck", "load_state_file", "file_fingerprint",
]
