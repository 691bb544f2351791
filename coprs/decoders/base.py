"""The Decoder contract: (image keys, prior) → mask logits at 4x the key grid."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
import torch.nn as nn

from ..structures import PriorOutput

__all__ = ["BaseDecoder"]


class BaseDecoder(nn.Module, metaclass=ABCMeta):
    """Turns image features and a prior into mask logits."""

    @abstractmethod
    def forward(self, image_keys: torch.Tensor, prior: PriorOutput) -> dict[str, torch.Tensor]:
        """Args: image_keys B x C x h x w; prior for B prompts.

        Returns:
            ``{'mask_logits': B x 1 x 4h x 4w, 'iou_pred': B x 1}``.
        """
