"""Rollout engines (ROLLOUT_ENGINES registry)."""

from .base import BaseRolloutEngine
from .hf import HFRolloutEngine
from .vllm import VLLMRolloutEngine

__all__ = ["BaseRolloutEngine", "HFRolloutEngine", "VLLMRolloutEngine"]
