"""Format score: does the response follow ``<think>…</think><REF_POS>`` (SPEC §4, paper B.1)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..policies.prompts import parse_think_response
from ..registry import REWARDS
from .base import BaseReward

__all__ = ["format_score", "FormatReward"]


def format_score(response: str, special_token: str = "<REF_POS>", max_think_chars: int = 2048,
                 penalty: float = 0.9, max_words_between: int | None = None) -> float:
    """Score one response's format; the five canonical cases of the paper (B.1).

    Parsing is :func:`coprs.policies.prompts.parse_think_response` (chat end tokens
    ``<|im_end|>``/``<|endoftext|>`` are removed first, so they never count as text). A response is
    *valid* when it has exactly one non-empty ``<think>…</think>`` followed by exactly one
    ``special_token``.

    * invalid → 0.0;
    * valid and clean → 1.0;
    * valid, but the (stripped) think content is longer than ``max_think_chars`` → ``penalty``;
    * valid, but non-whitespace text before ``<think>`` → ``penalty``;
    * valid, but non-whitespace text after the special token → ``penalty``.

    Optional rule from the authors' released code (off by default): more than
    ``max_words_between`` whitespace-separated words between ``</think>`` and the special token →
    ``penalty`` (their value: 10).

    Several issues at once still give a single ``penalty`` (not ``penalty²``): the paper's score
    set is {0, 0.9, 1.0}, "reduced to 0.9 if … or …".

    Args:
        response: the response text (special tokens kept).
        special_token: the token that ends the reasoning.
        max_think_chars: longest think content that is not penalised.
        penalty: score of a valid response with an issue.
        max_words_between: words allowed between ``</think>`` and the special token; None: no
            limit.

    Returns:
        float: 0.0, ``penalty`` or 1.0.
    """
    parsed = parse_think_response(response, special_token)
    if not parsed.valid:
        return 0.0
    too_wordy = max_words_between is not None and len(parsed.between.split()) > max_words_between
    issue = (len(parsed.cot) > max_think_chars or bool(parsed.before_think) or bool(parsed.after)
             or too_wordy)
    return float(penalty) if issue else 1.0


@REWARDS.register_module()
class FormatReward(BaseReward):
    """The CoPRS format score of each response (see :func:`format_score`).

    Args:
        special_token: the token that ends the reasoning.
        max_think_chars: longest think content that is not penalised.
        penalty: score of a valid response with an issue.
        max_words_between: words allowed between ``</think>`` and the special token (the
            authors' code: 10); None (default) disables the rule.
        name: key in a breakdown dict.
    """

    name = "format"
    needs_masks = False

    def __init__(self, special_token: str = "<REF_POS>", max_think_chars: int = 2048,
                 penalty: float = 0.9, max_words_between: int | None = None,
                 name: str | None = None) -> None:
        super().__init__(name)
        if not 0.0 <= penalty <= 1.0:
            raise ValueError(f"penalty must lie in [0, 1], got {penalty}")
        self.special_token, self.max_think_chars = special_token, max_think_chars
        self.penalty, self.max_words_between = penalty, max_words_between

    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """Args and returns: see :meth:`BaseReward.__call__`; only ``responses`` is read."""
        scores = [
            format_score(r, self.special_token, self.max_think_chars, self.penalty,
                         self.max_words_between)
            for r in responses
        ]
        return torch.tensor(scores, dtype=torch.float32, device=self._out_device(pred_probs))
