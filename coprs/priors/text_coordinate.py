"""Seg-Zero-style text-coordinate prior: a box and points parsed from the response text."""

from __future__ import annotations

import torch

from ..policies.prompts import ParsedResponse, parse_coordinate_answer, parse_segzero_response
from ..registry import PRIORS
from ..structures import ImageGeometry, PolicyOutput, PriorOutput
from .base import BasePrior

__all__ = ["TextCoordinatePrior", "coordinates_to_frame"]


def coordinates_to_frame(bbox, points, geometry: ImageGeometry, min_box_size: float = 1.0
                         ) -> tuple[list[float], list[list[float]]] | None:
    """Map a box and points from policy-view pixels into the vision frame, clamped to the image.

    ``x_frame = x_view · frame_w / view_w`` (likewise y). Box corners are clamped to
    ``[0, frame_w] x [0, frame_h]``, points to ``[0, frame_w - 1] x [0, frame_h - 1]`` (the
    image region of the padded frame; padding is never prompted).

    Args:
        bbox: (x1, y1, x2, y2) in view pixels.
        points: P (x, y) in view pixels.
        geometry: the image's view and frame sizes.
        min_box_size: a clamped box narrower or lower than this (frame pixels) is degenerate.

    Returns:
        ``(box [4], points [P x 2])`` in frame pixels, or None when the clamped box is degenerate
        (e.g. it lay entirely outside the image).
    """
    sx, sy = geometry.view_to_frame
    fh, fw = geometry.frame_hw
    x1, x2 = (min(max(v * sx, 0.0), float(fw)) for v in (bbox[0], bbox[2]))
    y1, y2 = (min(max(v * sy, 0.0), float(fh)) for v in (bbox[1], bbox[3]))
    if x2 - x1 < min_box_size or y2 - y1 < min_box_size:
        return None
    pts = [[min(max(x * sx, 0.0), fw - 1.0), min(max(y * sy, 0.0), fh - 1.0)] for x, y in points]
    return [x1, y1, x2, y2], pts


@PRIORS.register_module()
class TextCoordinatePrior(BasePrior):
    """Reads ``<answer>{"bbox": [x1,y1,x2,y2], "points": [[x,y],[x,y]]}</answer>`` (Seg-Zero).

    The coordinates are in the pixels of the image the policy saw (its view,
    :func:`coprs.image.policy_view_size`); they are mapped into the vision frame (the backbone's
    padded S x S input: 1024² for SAM, 112² for the tiny assembly) and clamped to the image
    (:func:`coordinates_to_frame`), then prompt a SAM prompt decoder as one box and
    ``num_points`` foreground points.

    No parameters, no hidden state: the policy's special token is None. A malformed answer
    (no answer block, bad JSON, a missing key, non-numbers, a wrong number of points) or a
    degenerate box (before or after clamping) never raises: the row is ``valid=False``, its
    box and points are zeros, and the decoder gives it an empty mask.

    Args:
        num_points: points per answer (Seg-Zero: 2).
        min_box_size: smallest box side, in frame pixels, after clamping.
    """

    special_token = None
    prompt_template = "segzero"

    def __init__(self, num_points: int = 2, min_box_size: float = 1.0) -> None:
        super().__init__()
        if num_points < 0:
            raise ValueError(f"num_points must be >= 0, got {num_points}")
        self.num_points, self.min_box_size = num_points, float(min_box_size)

    def parse_response(self, response: str) -> ParsedResponse:
        """Valid when one non-empty think block is followed by one well-formed answer
        (:func:`parse_segzero_response`)."""
        return parse_segzero_response(response, self.num_points)

    def parse(self, response: str, geometry: ImageGeometry
              ) -> tuple[list[float], list[list[float]]] | None:
        """Box (4) and points (P x 2) of one response in the vision frame, or None if invalid."""
        answer, _ = parse_coordinate_answer(response, self.num_points)
        if answer is None:
            return None
        return coordinates_to_frame(answer.bbox, answer.points, geometry, self.min_box_size)

    def forward(self, policy_out: PolicyOutput, image_keys: torch.Tensor) -> PriorOutput:
        """Args: ``policy_out.responses`` (B texts) and ``policy_out.geometry`` (B
        :class:`ImageGeometry`); image_keys B x C x h x w (only its device is used).

        Returns:
            :class:`PriorOutput` with ``boxes`` B x 4 and ``points`` B x P x 2 (vision-frame
            pixels; zeros where invalid) and ``valid``.
        """
        n = len(policy_out.responses)
        if policy_out.geometry is None or len(policy_out.geometry) != n:
            raise ValueError("TextCoordinatePrior needs policy_out.geometry (one ImageGeometry "
                             "per response); ReasoningSegmentor.decode fills it in when given "
                             "the images' sizes")
        boxes = torch.zeros(n, 4)
        points = torch.zeros(n, self.num_points, 2)
        valid = []
        for i, (text, geom) in enumerate(zip(policy_out.responses, policy_out.geometry)):
            parsed = self.parse(text, geom)
            valid.append(parsed is not None)
            if parsed is not None:
                boxes[i] = torch.tensor(parsed[0])
                if self.num_points:
                    points[i] = torch.tensor(parsed[1])
        device = image_keys.device
        return PriorOutput(boxes=boxes.to(device),
                           points=points.to(device) if self.num_points else None, valid=valid)
