"""The RolloutEngine contract: sample G responses per (image, instruction)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

from PIL import Image

from ..structures import Rollout

__all__ = ["BaseRolloutEngine"]


class BaseRolloutEngine(metaclass=ABCMeta):
    """Samples rollouts with the current policy.

    Args:
        temperature, top_p, top_k: sampling settings (paper: 1.0, 1.0, disabled).
        max_new_tokens: response budget (None: the policy's default).
        min_new_tokens: forbid the end tokens before this many new tokens (None: no minimum;
            benchmarks use it to force a fixed response length).
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
                 max_new_tokens: int | None = None, min_new_tokens: int | None = None) -> None:
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens

    @abstractmethod
    def generate(self, policy, images: list[Image.Image], instructions: list[str],
                 num_samples: int) -> list[list[Rollout]]:
        """B lists of ``num_samples`` rollouts, each with token ids and sampling log-probs."""
