"""Segmentation losses."""

from .segmentation import SegmentationLoss, bce_prior_loss, dice_loss, focal_loss

__all__ = ["SegmentationLoss", "bce_prior_loss", "dice_loss", "focal_loss"]
