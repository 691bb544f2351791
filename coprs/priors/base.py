"""The PriorInterface contract: policy output + image keys → what the decoder consumes."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
import torch.nn as nn

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

    @abstractmethod
    def forward(self, policy_out: PolicyOutput, image_keys: torch.Tensor) -> PriorOutput:
        """Args: policy output for B responses; image keys B x C x h x w. Never raises on a
        malformed response: it is marked ``valid=False`` instead."""
