"""Format of LISA-style responses: an answer that carries exactly one special token."""

from __future__ import annotations

import torch
from torch import Tensor

from ..policies.prompts import parse_token_response
from ..registry import REWARDS
from .base import BaseReward

__all__ = ["token_format_score", "TokenFormatReward"]


def token_format_score(response: str, special_token: str = "<SEG>") -> float:
    """1.0 if ``special_token`` occurs exactly once in the response (chat end tokens ignored),
    else 0.0 (:func:`~coprs.policies.prompts.parse_token_response`)."""
    return 1.0 if parse_token_response(response, special_token).valid else 0.0


@REWARDS.register_module()
class TokenFormatReward(BaseReward):
    """The LISA-style format check as a reward (:func:`token_format_score`): LISA trains
    without rewards; with GRPO (optional) it pairs with :class:`~coprs.rewards.MaskReward`.

    Args:
        special_token: the token a response must contain once.
        name: key in a breakdown dict.
    """

    name = "format"

    def __init__(self, special_token: str = "<SEG>", name: str | None = None) -> None:
        super().__init__(name)
        self.special_token = special_token

    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """Args and returns: see :meth:`BaseReward.__call__`; only ``responses`` is read."""
        return torch.tensor([token_format_score(r, self.special_token) for r in responses],
                            dtype=torch.float32, device=self._out_device(pred_probs))
