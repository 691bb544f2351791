"""Prior interfaces (PRIORS registry)."""

from .base import BasePrior
from .heatmap import HeatmapPrior
from .latent_token import LatentTokenPrior
from .text_coordinate import TextCoordinatePrior, coordinates_to_frame

__all__ = ["BasePrior", "HeatmapPrior", "LatentTokenPrior", "TextCoordinatePrior",
           "coordinates_to_frame"]
