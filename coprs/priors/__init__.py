"""Prior interfaces (PRIORS registry)."""

from .base import BasePrior
from .heatmap import HeatmapPrior

__all__ = ["BasePrior", "HeatmapPrior"]
