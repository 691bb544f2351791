"""Rewards for GRPO (REWARDS registry)."""

from .base import BaseReward
from .combine import COPRS_REWARD, WeightedSumReward
from .format import FormatReward, format_score
from .mask import MaskReward, mask_score
from .segzero import (
    SEGZERO_REWARD,
    AnswerFormatReward,
    BoxIoUReward,
    BoxL1Reward,
    PointInMaskReward,
    PointL1Reward,
    ThinkFormatReward,
    answer_format_score,
    box_iou,
    box_iou_score,
    box_l1_score,
    mask_box,
    point_l1_score,
    points_in_mask_score,
    thinking_format_score,
)
from .token_format import TokenFormatReward, token_format_score

__all__ = [
    "BaseReward", "MaskReward", "FormatReward", "WeightedSumReward", "COPRS_REWARD",
    "mask_score", "format_score",
    "TokenFormatReward", "token_format_score",
    "SEGZERO_REWARD", "ThinkFormatReward", "AnswerFormatReward", "BoxIoUReward", "BoxL1Reward",
    "PointL1Reward", "PointInMaskReward", "thinking_format_score", "answer_format_score",
    "mask_box", "box_iou", "box_iou_score", "box_l1_score", "point_l1_score",
    "points_in_mask_score",
]
