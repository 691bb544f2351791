"""The VisionBackbone contract: image batch → keys B x C x h x w, frozen by default."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..image import longest_side_size, resize_longest_side

__all__ = ["BaseVisionBackbone"]


class BaseVisionBackbone(nn.Module, metaclass=ABCMeta):
    """A frozen image encoder.

    Subclasses register ``pixel_mean`` / ``pixel_std`` buffers (3 x 1 x 1, 0-255 RGB) and set
    ``frozen``; the segmentor reads ``pixel_mean``'s device and dtype as the backbone's.

    Attributes:
        img_size: side S of the square padded input.
        out_channels: channels C of the features.
        grid_size: side g of the feature grid (64 for SAM at 1024²).
        frozen: parameters frozen and the module kept in eval mode.
    """

    img_size: int
    out_channels: int
    grid_size: int
    frozen: bool

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Resize the longer side to ``img_size`` (aspect kept), normalise, pad bottom/right.

        Args:
            images: B arrays H x W x 3 uint8 RGB.

        Returns:
            (B x 3 x S x S float tensor, B (h, w) sizes of the valid region inside it).
        """
        device = self.pixel_mean.device
        batch, valid = [], []
        for img in images:
            img = resize_longest_side(img, self.img_size)  # PIL bilinear, as SAM's
            nh, nw = img.shape[:2]
            x = torch.from_numpy(np.array(img, dtype=np.float32)).to(device).permute(2, 0, 1)
            x = (x - self.pixel_mean) / self.pixel_std
            x = F.pad(x, (0, self.img_size - nw, 0, self.img_size - nh))
            batch.append(x)
            valid.append((nh, nw))
        return torch.stack(batch), valid

    def valid_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an image of size ``hw`` inside the padded S x S input (longest side → S)."""
        return longest_side_size(hw[0], hw[1], self.img_size)

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """A stable string naming the features this backbone produces (for the feature cache)."""
