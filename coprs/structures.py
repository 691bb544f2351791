"""Plain dataclasses that cross module borders."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Rollout", "PolicyOutput", "ResponseForward", "PriorOutput", "SegmentationResult"]


@dataclass
class Rollout:
    """One response written by a policy.

    Attributes:
        text: the decoded response (special tokens kept).
        token_ids: response token ids (without the prompt, without padding).
        logprobs: per-token log-probabilities at sampling time, or None (greedy inference).
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None


@dataclass
class PolicyOutput:
    """What a prior interface reads from the policy for a batch of B responses.

    Attributes:
        hidden: B x D last-layer hidden state at the special token (``<REF_POS>``/``<SEG>``), or
            None for priors that read text only.
        responses: the B response texts.
        has_token: B bools, whether the special token was written by the policy itself (False when
            it was appended for readout of a malformed response).
    """

    hidden: torch.Tensor | None
    responses: list[str]
    has_token: list[bool] = field(default_factory=list)


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
