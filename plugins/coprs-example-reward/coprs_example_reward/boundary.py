"""Boundary F-score: how well the outline of a rollout's mask follows the ground truth's.

The CoPRS mask score (soft/hard IoU, Dice) is dominated by the interior of large objects; a
boundary F-score (as in DAVIS' F measure) rewards a mask whose *edges* are where the object's
edges are, within a pixel tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from coprs.rewards import BaseReward

__all__ = ["boundary_map", "boundary_fscore", "BoundaryFScoreReward"]


def boundary_map(mask: Tensor, valid: Tensor | None = None) -> Tensor:
    """The foreground pixels that have a background pixel among their 8 neighbours.

    Pixels outside the image, and outside ``valid``, are not background: an object cut by the
    image border or by padding has no boundary along the cut.

    Args:
        mask: B x H x W bool.
        valid: B x H x W bool, or None (every pixel valid).

    Returns:
        B x H x W bool.
    """
    fg = mask.bool() if valid is None else mask.bool() & valid.bool()
    bg = (~fg).float() if valid is None else (~fg & valid.bool()).float()
    # max-pooling pads with -inf, so pixels beyond the border never count as background
    near_bg = F.max_pool2d(bg[:, None], 3, stride=1, padding=1)[:, 0] > 0  # B x H x W
    return fg & near_bg


def _dilate(b: Tensor, tolerance: int) -> Tensor:
    if tolerance <= 0:
        return b
    k = 2 * tolerance + 1
    return F.max_pool2d(b.float()[:, None], k, stride=1, padding=tolerance)[:, 0] > 0


def boundary_fscore(pred_prob: Tensor, gt: Tensor, valid: Tensor | None = None,
                    tolerance: int = 1, threshold: float = 0.5) -> Tensor:
    """F-score between the boundaries of ``pred_prob > threshold`` and ``gt``, per mask.

    With ``Bp``, ``Bg`` the boundary pixels (:func:`boundary_map`) and ``D(·)`` a dilation by
    ``tolerance`` pixels (a (2·tolerance+1)² square):

    * precision ``P = |Bp ∩ D(Bg)| / |Bp|``, recall ``R = |Bg ∩ D(Bp)| / |Bg|``;
    * ``F = 2PR / (P + R)`` (0 when P + R = 0).

    **Empty boundaries**: both empty (e.g. empty prediction and empty ground truth) ⇒ 1.0, as
    coprs' mask score and evaluation (``empty_empty=1``); exactly one empty ⇒ 0.0.

    Args:
        pred_prob: H x W or B x H x W probabilities in [0, 1].
        gt: same shape, bool or 0/1.
        valid: same shape, bool; pixels outside it are ignored. None: all pixels count.
        tolerance: distance (pixels, chessboard) within which a boundary pixel counts as matched.
        threshold: binarisation threshold of ``pred_prob``.

    Returns:
        Tensor: scalar (H x W input) or B scores in [0, 1], float32.
    """
    if pred_prob.dim() not in (2, 3):
        raise ValueError(f"pred_prob must be H x W or B x H x W, got {tuple(pred_prob.shape)}")
    if gt.shape != pred_prob.shape or (valid is not None and valid.shape != pred_prob.shape):
        raise ValueError(
            f"pred_prob {tuple(pred_prob.shape)}, gt {tuple(gt.shape)} and valid "
            f"{None if valid is None else tuple(valid.shape)} must have the same shape")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    single = pred_prob.dim() == 2
    p, g = pred_prob.detach()[None] if single else pred_prob.detach(), gt[None] if single else gt
    v = None if valid is None else (valid[None] if single else valid)
    bp = boundary_map(p > threshold, v)
    bg = boundary_map(g > 0.5, v)
    dims = (-2, -1)
    n_p, n_g = bp.sum(dims).float(), bg.sum(dims).float()
    precision = (bp & _dilate(bg, tolerance)).sum(dims).float() / n_p.clamp_min(1)
    recall = (bg & _dilate(bp, tolerance)).sum(dims).float() / n_g.clamp_min(1)
    f = torch.where(precision + recall > 0,
                    2 * precision * recall / (precision + recall).clamp_min(1e-12),
                    torch.zeros_like(precision))
    f = torch.where((n_p == 0) & (n_g == 0), torch.ones_like(f), f)
    f = torch.where((n_p == 0) ^ (n_g == 0), torch.zeros_like(f), f)
    return f[0] if single else f


def _resize_nearest(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """N x H' x W' → N x H x W, nearest-exact (the 1024² padded ground truth to a 256² mask)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")[:, 0] > 0.5


class BoundaryFScoreReward(BaseReward):
    """The boundary F-score (:func:`boundary_fscore`) of each rollout's decoded mask.

    Combine it with coprs' rewards in a config::

        reward=dict(type='WeightedSumReward', rewards=[
            dict(reward=dict(type='MaskReward'), weight=0.5),
            dict(reward=dict(type='BoundaryFScoreReward', tolerance=2), weight=0.2),
            dict(reward=dict(type='FormatReward'), weight=0.3)])

    Ground truth and valid masks at another resolution than ``pred_probs`` are resized to it
    (nearest-exact), so ``tolerance`` is in pixels of the decoded mask (256² for CoPRS).

    Args:
        tolerance: matching distance in pixels of the prediction.
        threshold: binarisation threshold of the predicted probabilities.
        name: key in the loop's breakdown (logged as ``reward/<name>``).
    """

    name = "boundary"
    needs_masks = True

    def __init__(self, tolerance: int = 1, threshold: float = 0.5, name: str | None = None) -> None:
        super().__init__(name)
        self.tolerance, self.threshold = int(tolerance), float(threshold)

    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """N rewards in [0, 1] (arguments: :meth:`coprs.rewards.BaseReward.__call__`)."""
        if pred_probs is None or gt is None:
            raise ValueError(f"{type(self).__name__} needs pred_probs (N x H x W) and gt; the loop "
                             "decodes each rollout's mask when a reward sets needs_masks")
        if pred_probs.dim() != 3 or pred_probs.shape[0] != len(responses):
            raise ValueError(f"pred_probs must be N x H x W with N = {len(responses)} responses, "
                             f"got {tuple(pred_probs.shape)}")
        size = tuple(pred_probs.shape[-2:])
        gt = _resize_nearest(gt.to(pred_probs.device), size)
        if valid is not None:
            valid = _resize_nearest(valid.to(pred_probs.device), size)
        return boundary_fscore(pred_probs, gt, valid, self.tolerance, self.threshold)
