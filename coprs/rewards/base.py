"""The Reward contract: a batch of rollouts (+ their decoded masks) → one float each."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import Tensor

__all__ = ["BaseReward"]


class BaseReward(metaclass=ABCMeta):
    """Scores N rollouts for GRPO; one float per rollout (TRL's reward-function bank).

    A reward is a plain object (no parameters, no gradient). Rewards are combined by
    :class:`~coprs.rewards.combine.WeightedSumReward`, which keeps each one's value under its
    ``name`` so the loop can log it (``reward/<name>``).

    Attributes:
        name: key of this reward in a breakdown dict (override per instance with ``name=``).
        needs_masks: whether ``__call__`` reads ``pred_probs``/``gt``; when no reward of a loop
            needs them, the loop may skip the no-grad decode of the rollouts.
        needs_geometry: whether ``__call__`` takes a ``geometry`` keyword: N
            :class:`~coprs.structures.ImageGeometry` (policy-view and vision-frame sizes of each
            rollout's image, ground-truth points when the dataset has them), for rewards that
            compare pixel coordinates written in the response with the ground truth (Seg-Zero).
            Only rewards that set it receive the keyword.
    """

    name: str = "reward"
    needs_masks: bool = False
    needs_geometry: bool = False

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    @abstractmethod
    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """Score N rollouts.

        Args:
            responses: the N response texts (special tokens kept).
            pred_probs: N x H x W sigmoid mask probabilities decoded (without gradient) from each
                rollout, at the decoder size (256² for CoPRS), or None.
            gt: N x H' x W' ground-truth masks (bool or 0/1) of each rollout's sample, or None.
            valid: N x H' x W' bool, the pixels that count (unpadded image region, not "ignore"),
                or None (all count).

        Returns:
            Tensor: N float32 rewards, on ``pred_probs``' device when given, else on the CPU.
        """

    @staticmethod
    def _out_device(pred_probs: Tensor | None) -> torch.device:
        return pred_probs.device if pred_probs is not None else torch.device("cpu")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
