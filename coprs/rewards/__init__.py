"""Rewards for GRPO (REWARDS registry)."""

from .base import BaseReward
from .combine import COPRS_REWARD, WeightedSumReward
from .format import FormatReward, format_score
from .mask import MaskReward, mask_score

__all__ = [
    "BaseReward", "MaskReward", "FormatReward", "WeightedSumReward", "COPRS_REWARD",
    "mask_score", "format_score",
]
