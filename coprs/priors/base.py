"""The PriorInterface contract: policy output + image keys → what the decoder consumes."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
import torch.nn as nn

from ..policies.prompts import ParsedResponse, parse_think_response
from ..structures import PolicyOutput, PriorOutput

__all__ = ["BasePrior"]


class BasePrior(nn.Module, metaclass=ABCMeta):
    """Turns what the policy wrote into a prior the decoder understands.

    Attributes:
        special_token: the token whose hidden state this prior reads, or None (text only).
        prompt_template: the policy prompt this prior expects ('coprs', 'lisa', 'segzero').
    """

    special_token: str | None = None
    prompt_template: str = "coprs"

    def parse_response(self, response: str) -> ParsedResponse:
        """Split a response in the format this prior reads; ``valid`` is the response's format
        check (``SegmentationResult.format_ok``). Default: ``<think>…</think>`` + special token."""
        return parse_think_response(response, self.special_token or "")

    @abstractmethod
    def forward(self, policy_out: PolicyOutput, image_keys: torch.Tensor) -> PriorOutput:
        """Args: policy output for B responses; image keys B x C x h x w. Never raises on a
        malformed response: it is marked ``valid=False`` instead."""
