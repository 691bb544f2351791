"""Mask score: how well a rollout's decoded mask covers the ground truth (SPEC §4, paper B.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import REWARDS
from .base import BaseReward

__all__ = ["mask_score", "MaskReward"]


def mask_score(pred_prob: Tensor, gt: Tensor, valid: Tensor | None = None, w_soft_iou: float = 0.5,
               w_soft_dice: float = 0.2, w_hard_iou: float = 0.3, eps: float = 1e-6,
               threshold: float = 0.5) -> Tensor:
    """``w_soft_iou · softIoU + w_soft_dice · softDice + w_hard_iou · hardIoU``, per mask.

    With ``p`` the probabilities and ``g`` the ground truth, sums over the valid pixels:

    * soft IoU  = Σpg / (Σp + Σg - Σpg + eps);
    * soft Dice = 2Σpg / (Σp + Σg + eps);
    * hard IoU  = |{p > threshold} ∩ g| / |{p > threshold} ∪ g| (exact division).

    **Empty/empty**: when the ground truth is empty and no valid pixel is above ``threshold`` (the
    prediction is empty once binarised), each of the three terms is 1.0, consistent with the
    evaluation's default (``empty_empty=1.0``: empty prediction and empty ground truth ⇒ IoU 1).
    An empty ground truth with a non-empty prediction scores ≈ 0 on every term.

    Each term lies in [0, 1], so the score lies in [0, w_soft_iou + w_soft_dice + w_hard_iou]
    (= [0, 1] for the defaults 0.5 / 0.2 / 0.3).

    Args:
        pred_prob: H x W or B x H x W probabilities in [0, 1] (sigmoid of the mask logits).
        gt: same shape, bool or 0/1.
        valid: same shape, bool; only pixels where it is True count. None: all pixels.
        w_soft_iou: weight of soft IoU.
        w_soft_dice: weight of soft Dice.
        w_hard_iou: weight of hard IoU.
        eps: added to the soft denominators.
        threshold: binarisation threshold of the hard IoU.

    Returns:
        Tensor: scalar (H x W input) or B scores, float32.
    """
    if pred_prob.dim() not in (2, 3):
        raise ValueError(
            f"pred_prob must be H x W or B x H x W, got shape {tuple(pred_prob.shape)}"
        )
    if gt.shape != pred_prob.shape or (valid is not None and valid.shape != pred_prob.shape):
        raise ValueError(
            f"pred_prob {tuple(pred_prob.shape)}, gt {tuple(gt.shape)} and valid "
            f"{None if valid is None else tuple(valid.shape)} must have the same shape"
        )
    if min(w_soft_iou, w_soft_dice, w_hard_iou) < 0:
        raise ValueError(
            f"mask score weights must be >= 0, got soft IoU {w_soft_iou}, soft Dice "
            f"{w_soft_dice}, hard IoU {w_hard_iou}"
        )
    p = pred_prob.detach().float()
    if p.numel() and (p.min() < 0 or p.max() > 1):
        raise ValueError(
            f"pred_prob must hold probabilities in [0, 1], got values in [{p.min().item():.3g}, "
            f"{p.max().item():.3g}]; pass sigmoid(mask_logits), not the logits"
        )
    g = gt.detach().float()
    v = torch.ones_like(p, dtype=torch.bool) if valid is None else valid.bool()
    p, g = p.masked_fill(~v, 0), g.masked_fill(~v, 0)
    dims = (-2, -1)
    inter, sum_p, sum_g = (p * g).sum(dims), p.sum(dims), g.sum(dims)
    soft_iou = inter / (sum_p + sum_g - inter + eps)
    soft_dice = 2 * inter / (sum_p + sum_g + eps)
    hard = (p > threshold) & v  # p is 0 outside v already; kept explicit for threshold < 0
    hard_inter = (hard & (g > 0.5)).sum(dims).float()
    hard_union = (hard | (g > 0.5)).sum(dims).float()
    hard_iou = hard_inter / hard_union.clamp_min(1)
    empty_empty = hard_union == 0  # no ground truth and an empty binarised prediction
    one = torch.ones_like(soft_iou)
    soft_iou = torch.where(empty_empty, one, soft_iou)
    soft_dice = torch.where(empty_empty, one, soft_dice)
    hard_iou = torch.where(empty_empty, one, hard_iou)
    return w_soft_iou * soft_iou + w_soft_dice * soft_dice + w_hard_iou * hard_iou


def _resize_nearest(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """N x H' x W' → N x H x W with nearest-exact (a 1024² padded mask for a 256² prediction)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    out = F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")[:, 0]
    return out.to(mask.dtype)


@REWARDS.register_module()
class MaskReward(BaseReward):
    """The CoPRS mask score of each rollout's decoded mask (see :func:`mask_score`).

    The loop decides which mask a rollout is scored with: for an invalid response (format score
    0), CoPRS still decodes the mask from the hidden state of the appended special token, and this
    reward scores it like any other.

    Ground truth and valid masks at another resolution than ``pred_probs`` (e.g. the 1024² padded
    masks for a 256² prediction) are resized to the prediction size with ``nearest-exact``.

    Args:
        w_soft_iou: weight of soft IoU.
        w_soft_dice: weight of soft Dice.
        w_hard_iou: weight of hard IoU.
        eps: added to the soft denominators.
        threshold: binarisation threshold of the hard IoU.
        name: key in a breakdown dict.
    """

    name = "mask"
    needs_masks = True

    def __init__(self, w_soft_iou: float = 0.5, w_soft_dice: float = 0.2, w_hard_iou: float = 0.3,
                 eps: float = 1e-6, threshold: float = 0.5, name: str | None = None) -> None:
        super().__init__(name)
        self.weights = dict(w_soft_iou=w_soft_iou, w_soft_dice=w_soft_dice, w_hard_iou=w_hard_iou)
        self.eps, self.threshold = eps, threshold

    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """Args and returns: see :meth:`BaseReward.__call__`; ``pred_probs`` and ``gt`` are
        required."""
        if pred_probs is None or gt is None:
            raise ValueError(
                f"{type(self).__name__} needs pred_probs (N x H x W) and gt; the loop must decode "
                "each rollout's mask before scoring"
            )
        if pred_probs.dim() != 3 or len(responses) != pred_probs.shape[0]:
            raise ValueError(
                f"pred_probs must be N x H x W with N = {len(responses)} responses, got shape "
                f"{tuple(pred_probs.shape)}"
            )
        size = tuple(pred_probs.shape[-2:])
        gt = _resize_nearest(gt.to(pred_probs.device), size)
        if valid is not None:
            valid = _resize_nearest(valid.to(pred_probs.device), size)
        return mask_score(pred_probs, gt, valid, **self.weights, eps=self.eps,
                          threshold=self.threshold)
