"""The VisionBackbone contract: image batch → keys B x C x h x w, frozen by default."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import numpy as np
import torch
import torch.nn as nn

from ..image import longest_side_size

__all__ = ["BaseVisionBackbone"]


class BaseVisionBackbone(nn.Module, metaclass=ABCMeta):
    """A frozen image encoder.

    Attributes:
        img_size: side S of the square padded input.
        out_channels: channels C of the features.
        grid_size: side g of the feature grid (64 for SAM at 1024²).
    """

    img_size: int
    out_channels: int
    grid_size: int

    @abstractmethod
    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """B RGB uint8 arrays → (B x 3 x S x S tensor, valid (h, w) per image)."""

    def valid_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an image of size ``hw`` inside the padded S x S input (longest side → S)."""
        return longest_side_size(hw[0], hw[1], self.img_size)

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """A stable string naming the features this backbone produces (for the feature cache)."""
