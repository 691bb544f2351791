"""The Policy contract: a multimodal LLM that writes responses and exposes hidden states."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch.nn as nn
from PIL import Image

from ..structures import PolicyOutput, Rollout

__all__ = ["BasePolicy"]


class BasePolicy(nn.Module, metaclass=ABCMeta):
    """A policy wraps a transformers multimodal LLM loaded from a local path or a config.

    Subclasses never download: weights come from a directory on disk.

    Attributes:
        hidden_size: width D of the last-layer hidden states.
        special_token: the token whose hidden state the prior reads (``<REF_POS>``, ``<SEG>``) or
            None for text-only priors.
        max_prompt_tokens: the prompt-length cap the training loop enforces
            (:meth:`overlong_prompts`); None: no cap.
    """

    hidden_size: int
    special_token: str | None
    max_prompt_tokens: int | None = None

    @abstractmethod
    def generate(self, images: list[Image.Image], instructions: list[str], num_samples: int = 1,
                 **sampling) -> list[list[Rollout]]:
        """Write ``num_samples`` responses per (image, instruction); returns B lists of rollouts."""

    def view_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the image the policy sees for an image of ``height`` x ``width``: pixel
        coordinates in its responses refer to this view. Default: the image unchanged."""
        return height, width

    def overlong_prompts(self, images: list, instructions: list[str]) -> dict[int, int]:
        """``{index: prompt length in tokens}`` of the (image, instruction) pairs whose prompt
        is longer than ``max_prompt_tokens`` (the training loop drops them and names their
        lengths). Default: none, a policy without a prompt-length cap."""
        return {}

    @abstractmethod
    def readout(self, images: list[Image.Image], instructions: list[str],
                rollouts: list[Rollout]) -> PolicyOutput:
        """One forward pass over prompt + response; the hidden state at the special token."""
