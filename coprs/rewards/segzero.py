"""Seg-Zero's rewards (Liu et al. 2025): format, box IoU, box L1, point L1, point-in-mask.

Seg-Zero's policy writes ``<think>…</think><answer>{"bbox": [x1,y1,x2,y2], "points": [[x,y],
[x,y]]}</answer>`` in the pixels of the image it sees; its reward is the plain sum of five 0/1
terms (thinking format, answer format, box IoU > 0.5, box L1 < 10 px, point L1 < 100 px, pixels
of its 840² view). Here each term is its own registered reward and a pure function, weighted in
config (:data:`SEGZERO_REWARD`). The thresholds are in policy-view pixels: scale them with the
view (the tiny 112² world uses 112/840 of Seg-Zero's).

Ground truth comes from the rollout's ground-truth mask in the vision frame (the box is the
mask's tight box) and, for :class:`PointL1Reward`, from the dataset's points
(``ImageGeometry.gt_points``); :class:`~coprs.structures.ImageGeometry` maps between the frame
and the policy view. A response whose answer cannot be read scores 0 on every term.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..policies.prompts import parse_coordinate_answer
from ..registry import REWARDS
from ..structures import ImageGeometry
from .base import BaseReward

__all__ = [
    "SEGZERO_REWARD", "thinking_format_score", "answer_format_score", "mask_box", "box_iou",
    "box_iou_score", "box_l1_score", "point_l1_score", "points_in_mask_score",
    "ThinkFormatReward", "AnswerFormatReward", "BoxIoUReward", "BoxL1Reward", "PointL1Reward",
    "PointInMaskReward",
]

#: Seg-Zero's reward: the unweighted sum of its five terms (thresholds for an 840² view)
SEGZERO_REWARD = dict(
    type="WeightedSumReward",
    rewards=[
        dict(reward=dict(type="ThinkFormatReward"), weight=1.0),
        dict(reward=dict(type="AnswerFormatReward"), weight=1.0),
        dict(reward=dict(type="BoxIoUReward", threshold=0.5), weight=1.0),
        dict(reward=dict(type="BoxL1Reward", threshold=10.0), weight=1.0),
        dict(reward=dict(type="PointL1Reward", threshold=100.0), weight=1.0),
    ],
)

_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def _strip(response: str) -> str:
    for tok in _END_TOKENS:
        response = response.replace(tok, "")
    return response.strip()


# --- pure functions ---------------------------------------------------------------------------
def thinking_format_score(response: str) -> float:
    """1.0 if the whole response is ``<think>…</think>`` then ``<answer>…</answer>`` (only
    whitespace between and around them; chat end tokens ignored), else 0.0 (Seg-Zero's
    ``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", …, re.DOTALL)``)."""
    return 1.0 if _THINK_ANSWER.fullmatch(_strip(response)) else 0.0


def answer_format_score(response: str, num_points: int = 2) -> float:
    """1.0 if the first answer block holds well-formed JSON with a non-degenerate ``bbox`` of
    four numbers and ``num_points`` ``[x, y]`` points
    (:func:`~coprs.policies.prompts.parse_coordinate_answer`), else 0.0."""
    return 0.0 if parse_coordinate_answer(response, num_points)[0] is None else 1.0


def mask_box(mask: Tensor) -> list[float] | None:
    """Tight box ``[x1, y1, x2, y2]`` of a H x W mask (``x2``/``y2`` exclusive, as the synthetic
    world's ``bbox``), or None for an empty mask."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if xs.numel() == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes ``(x1, y1, x2, y2)``: ``|a ∩ b| / (|a| + |b| - |a ∩ b|)``; 0 when the
    union is empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
             + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter)
    return inter / union if union > 0 else 0.0


def box_iou_score(pred: Sequence[float], gt: Sequence[float], threshold: float | None = 0.5
                  ) -> float:
    """Seg-Zero's box-IoU reward: 1.0 if ``IoU(pred, gt) > threshold`` else 0.0; with
    ``threshold=None`` the IoU itself (a continuous variant)."""
    iou = box_iou(pred, gt)
    return iou if threshold is None else float(iou > threshold)


def box_l1_score(pred: Sequence[float], gt: Sequence[float], threshold: float = 10.0) -> float:
    """Seg-Zero's box-L1 reward: 1.0 if the mean absolute difference of the four coordinates,
    ``Σ|pred_i - gt_i| / 4``, is below ``threshold`` pixels, else 0.0."""
    l1 = sum(abs(p - g) for p, g in zip(pred, gt)) / 4.0
    return float(l1 < threshold)


def point_l1_score(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]],
                   threshold: float = 100.0) -> float:
    """Seg-Zero's point-L1 reward: 1.0 if the mean absolute coordinate difference between the
    predicted and ground-truth points, taken in order (``Σ_k |x_k - x'_k| + |y_k - y'_k|`` over
    ``2P`` coordinates), is below ``threshold`` pixels, else 0.0. Different numbers of points
    score 0."""
    if len(pred) != len(gt) or not len(pred):
        return 0.0
    l1 = sum(abs(p[0] - g[0]) + abs(p[1] - g[1]) for p, g in zip(pred, gt)) / (2 * len(pred))
    return float(l1 < threshold)


def points_in_mask_score(points: Sequence[Sequence[float]], mask: Tensor) -> float:
    """Fraction of the points whose pixel (``floor(x), floor(y)``) lies inside the H x W mask;
    points outside the mask's extent count as outside; no points score 0."""
    if not len(points):
        return 0.0
    h, w = mask.shape[-2:]
    inside = 0
    for x, y in points:
        xi, yi = int(x // 1), int(y // 1)
        inside += int(0 <= xi < w and 0 <= yi < h and bool(mask[yi, xi] > 0.5))
    return inside / len(points)


# --- rewards ------------------------------------------------------------------------------------
class _CoordinateReward(BaseReward):
    """A reward that compares a response's coordinates (policy view) with the ground truth."""

    needs_masks = True
    needs_geometry = True

    def __init__(self, num_points: int = 2, name: str | None = None) -> None:
        super().__init__(name)
        self.num_points = num_points

    def _check(self, responses, gt, geometry) -> None:
        if gt is None or geometry is None:
            raise ValueError(f"{type(self).__name__} needs gt (N x S x S masks in the vision "
                             "frame) and geometry (N ImageGeometry); the training loop passes them")
        if gt.dim() != 3 or len(responses) != gt.shape[0] or len(geometry) != len(responses):
            raise ValueError(f"{type(self).__name__}: {len(responses)} responses, gt of shape "
                             f"{tuple(gt.shape)} and {len(geometry)} geometries must agree")

    @staticmethod
    def _gt_box_in_view(mask: Tensor, geom: ImageGeometry) -> list[float] | None:
        fh, fw = geom.frame_hw
        if fh > mask.shape[-2] or fw > mask.shape[-1]:
            raise ValueError(f"the image region {geom.frame_hw} does not fit the {tuple(mask.shape)}"
                             " ground truth: pass gt in the vision frame (the padded S x S masks)")
        box = mask_box(mask)
        if box is None:
            return None
        sx, sy = geom.view_to_frame
        return [box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy]

    @abstractmethod
    def score_one(self, answer, mask: Tensor, geom: ImageGeometry) -> float:
        """The reward of one parsed answer against its ground-truth mask (vision frame)."""

    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None,
                 geometry: list[ImageGeometry] | None = None) -> Tensor:
        """Args and returns: see :meth:`BaseReward.__call__`; reads ``responses``, ``gt`` (in
        the vision frame) and ``geometry``."""
        self._check(responses, gt, geometry)
        scores = []
        for text, mask, geom in zip(responses, gt, geometry):
            answer, _ = parse_coordinate_answer(text, self.num_points)
            scores.append(0.0 if answer is None else self.score_one(answer, mask.cpu(), geom))
        return torch.tensor(scores, dtype=torch.float32, device=self._out_device(pred_probs))


@REWARDS.register_module()
class ThinkFormatReward(BaseReward):
    """Seg-Zero's thinking-format reward (:func:`thinking_format_score`).

    Args:
        name: key in a breakdown dict.
    """

    name = "think_format"

    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """Args and returns: see :meth:`BaseReward.__call__`; only ``responses`` is read."""
        return torch.tensor([thinking_format_score(r) for r in responses], dtype=torch.float32,
                            device=self._out_device(pred_probs))


@REWARDS.register_module()
class AnswerFormatReward(BaseReward):
    """Seg-Zero's answer-format reward (:func:`answer_format_score`).

    Args:
        num_points: points the answer must hold.
        name: key in a breakdown dict.
    """

    name = "answer_format"

    def __init__(self, num_points: int = 2, name: str | None = None) -> None:
        super().__init__(name)
        self.num_points = num_points

    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """Args and returns: see :meth:`BaseReward.__call__`; only ``responses`` is read."""
        return torch.tensor([answer_format_score(r, self.num_points) for r in responses],
                            dtype=torch.float32, device=self._out_device(pred_probs))


class _GtBoxReward(_CoordinateReward):
    """A score of the answer's box against the ground-truth mask's tight box, in policy-view
    pixels (``box_score(pred, gt, threshold)``); an empty ground truth scores 0."""

    box_score: Callable[[list[float], list[float], float | None], float]

    def __init__(self, threshold: float | None, num_points: int = 2, name: str | None = None
                 ) -> None:
        super().__init__(num_points, name)
        self.threshold = threshold

    def score_one(self, answer, mask, geom) -> float:
        gt_box = self._gt_box_in_view(mask, geom)
        return 0.0 if gt_box is None else self.box_score(answer.bbox, gt_box, self.threshold)


@REWARDS.register_module()
class BoxIoUReward(_GtBoxReward):
    """Seg-Zero's box-IoU reward (:func:`box_iou_score`) against the ground-truth mask's tight
    box, in policy-view pixels; an empty ground truth scores 0.

    Args:
        threshold: IoU that must be exceeded (Seg-Zero: 0.5); None: the IoU itself.
        num_points: points an answer must hold to be read.
        name: key in a breakdown dict.
    """

    name = "box_iou"
    box_score = staticmethod(box_iou_score)

    def __init__(self, threshold: float | None = 0.5, num_points: int = 2,
                 name: str | None = None) -> None:
        super().__init__(threshold, num_points, name)


@REWARDS.register_module()
class BoxL1Reward(_GtBoxReward):
    """Seg-Zero's box-L1 reward (:func:`box_l1_score`) against the ground-truth mask's tight
    box, in policy-view pixels; an empty ground truth scores 0.

    Args:
        threshold: mean absolute coordinate error (view pixels) to stay under (Seg-Zero: 10 at
            840²).
        num_points: points an answer must hold to be read.
        name: key in a breakdown dict.
    """

    name = "box_l1"
    box_score = staticmethod(box_l1_score)

    def __init__(self, threshold: float = 10.0, num_points: int = 2, name: str | None = None
                 ) -> None:
        super().__init__(threshold, num_points, name)


@REWARDS.register_module()
class PointL1Reward(_CoordinateReward):
    """Seg-Zero's point-L1 reward (:func:`point_l1_score`) against the dataset's points
    (``ImageGeometry.gt_points``, mapped into the policy view), in order.

    Datasets without annotated points (RefCOCO, ReasonSeg) cannot use it: use
    :class:`PointInMaskReward` instead.

    Args:
        threshold: mean absolute coordinate error (view pixels) to stay under (Seg-Zero: 100 at
            840²).
        num_points: points an answer must hold to be read.
        name: key in a breakdown dict.
    """

    name = "point_l1"

    def __init__(self, threshold: float = 100.0, num_points: int = 2, name: str | None = None
                 ) -> None:
        super().__init__(num_points, name)
        self.threshold = threshold

    def score_one(self, answer, mask, geom) -> float:
        if geom.gt_points is None:
            raise ValueError("PointL1Reward needs ground-truth points (a 'points' key in the "
                             "dataset's samples, as the synthetic world has); use "
                             "PointInMaskReward for datasets without them")
        sx, sy = geom.view_to_frame
        gt = [(x / sx, y / sy) for x, y in geom.gt_points]
        return point_l1_score(answer.points, gt, self.threshold)


@REWARDS.register_module()
class PointInMaskReward(_CoordinateReward):
    """Fraction of the answer's points that fall inside the ground-truth mask
    (:func:`points_in_mask_score`, points mapped into the vision frame): a point reward for
    datasets without annotated points.

    Args:
        num_points: points an answer must hold to be read.
        name: key in a breakdown dict.
    """

    name = "point_in_mask"

    def score_one(self, answer, mask, geom) -> float:
        sx, sy = geom.view_to_frame
        fh, fw = geom.frame_hw
        pts = [(x * sx, y * sy) if 0 <= x * sx < fw and 0 <= y * sy < fh else (-1.0, -1.0)
               for x, y in answer.points]
        return points_in_mask_score(pts, mask)
