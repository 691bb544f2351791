"""Plain dataclasses that cross module borders."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Rollout", "ImageGeometry", "PolicyOutput", "ResponseForward", "PriorOutput",
           "SegmentationResult"]


@dataclass
class Rollout:
    """One response written by a policy.

    Attributes:
        text: the decoded response (special tokens kept).
        token_ids: response token ids (without the prompt, without padding).
        logprobs: per-token log-probabilities at sampling time, or None (greedy inference).
        hidden: D last-layer hidden state at the first special token of the response, kept by
            the rollout engine while sampling (the policy's readout then needs no forward), or
            None.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    hidden: torch.Tensor | None = None


@dataclass
class ImageGeometry:
    """Where one image lies in the two views, for priors and rewards that read pixel coordinates
    from the response text (Seg-Zero style).

    Coordinates a policy writes refer to its own view of the image (``view_hw``, Qwen's
    ``smart_resize`` of the original); masks, boxes and points given to the decoder live in the
    vision frame (the backbone's padded S x S input), where the image is the top-left
    ``frame_hw`` region. A view pixel (x, y) maps to ``(x · frame_w / view_w, y · frame_h /
    view_h)`` in the frame.

    Attributes:
        view_hw: (h, w) of the image as the policy sees it.
        frame_hw: (h, w) of the image inside the vision frame (the unpadded region).
        gt_points: ground-truth points ``[[x, y], …]`` in the vision frame when the dataset has
            them (the synthetic world does), else None. Read by point rewards only.
    """

    view_hw: tuple[int, int]
    frame_hw: tuple[int, int]
    gt_points: list[list[float]] | None = None

    @property
    def view_to_frame(self) -> tuple[float, float]:
        """(sx, sy): frame pixels per view pixel."""
        return self.frame_hw[1] / self.view_hw[1], self.frame_hw[0] / self.view_hw[0]


@dataclass
class PolicyOutput:
    """What a prior interface reads from the policy for a batch of B responses.

    Attributes:
        hidden: B x D last-layer hidden state at the special token (``<REF_POS>``/``<SEG>``), or
            None for priors that read text only.
        responses: the B response texts.
        has_token: B bools, whether the special token was written by the policy itself (False when
            it was appended for readout of a malformed response).
        geometry: B :class:`ImageGeometry`, filled in by the segmentor when it decodes (priors
            that read coordinates from the text need it), or None.
    """

    hidden: torch.Tensor | None
    responses: list[str]
    has_token: list[bool] = field(default_factory=list)
    geometry: list[ImageGeometry] | None = None


@dataclass
class ResponseForward:
    """One language-model forward over B (prompt + response) sequences, left padded.

    Attributes:
        last_hidden: B x W x D last-layer hidden states (after the final norm).
        special_pos: B positions of the special token in the padded sequences.
        has_token: B bools, whether the policy wrote the special token itself.
        resp_start: B positions where each response starts in the padded sequences.
        token_ids: B lists of the rollouts' own token ids.
        lm_head: the output projection (logits are computed only where needed).
    """

    last_hidden: torch.Tensor
    special_pos: torch.Tensor
    has_token: list[bool]
    resp_start: list[int]
    token_ids: list[list[int]]
    lm_head: torch.nn.Module

    def policy_output(self, responses: list[str]) -> PolicyOutput:
        """The hidden state at the special token of every sequence."""
        rows = torch.arange(self.last_hidden.shape[0], device=self.last_hidden.device)
        return PolicyOutput(hidden=self.last_hidden[rows, self.special_pos], responses=responses,
                            has_token=list(self.has_token))


@dataclass
class PriorOutput:
    """What a decoder consumes; each prior fills the fields it produces.

    Attributes:
        heatmap: B x 1 x h x w positional-prior logits at the key grid (CoPRS), or None.
        dense: B x 1 x 4h x 4w prior logits at the decoder's dense-prompt resolution, or None.
        sparse: B x N x C sparse prompt embeddings (latent token), or None.
        boxes: B x 4 boxes (x1, y1, x2, y2) in the vision frame, or None.
        points: B x P x 2 points in the vision frame, or None.
        valid: B bools; False where the policy output could not be turned into a prior.
    """

    heatmap: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    sparse: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    valid: list[bool] = field(default_factory=list)


@dataclass
class SegmentationResult:
    """The answer to one (image, instruction) pair, at the original image size.

    Attributes:
        cot: the chain of thought (inside ``<think>…</think>``; the whole response before the
            special token when the tags are missing).
        response: the full response text.
        heatmap: H x W float32 in [0, 1], the positional prior (sigmoid) resized to the image.
        mask: H x W bool, mask logits > 0 resized to the image.
        format_ok: whether the response followed the format (exactly one non-empty think block
            followed by exactly one special token).
    """

    cot: str
    response: str
    heatmap: np.ndarray
    mask: np.ndarray
    format_ok: bool
