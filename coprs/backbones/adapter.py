"""Building blocks for wrapping a third-party image model as a vision backbone (timm, mmseg, …).

A wrapped backbone is a frozen *body* (any module giving B x C' x h' x w' features) followed by
a :class:`GridNeck` that projects to the key width the prior and decoder expect and resamples to
a fixed g x g grid (SAM's 64 x 64 by default), so a config can swap SAM for another encoder
without touching the prior or the decoder. ``plugins/coprs-timm`` and ``plugins/coprs-mmseg``
are built on :class:`FeatureMapBackbone`.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils import is_meta_build
from .base import BaseVisionBackbone

__all__ = ["GridNeck", "FeatureMapBackbone", "load_state_file", "file_fingerprint"]

#: ImageNet statistics in 0-255 RGB (timm's and mmseg's default)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a B x C x h x w map (as SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GridNeck(nn.Module):
    """B x C' x h' x w' → B x C x g x g: 1x1 projection + channel LayerNorm, bilinear resample.

    Args:
        in_channels: C', channels of the body's features.
        out_channels: C, the key width (256 for SAM-sized decoders); None keeps C' (no
            projection, no norm).
        grid_size: g; the features are resampled to g x g unless they already are.
    """

    def __init__(self, in_channels: int, out_channels: int | None, grid_size: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        if out_channels is None:
            self.proj = nn.Identity()
        else:
            self.proj = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      LayerNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # B x C x h' x w'
        if tuple(x.shape[-2:]) != (self.grid_size, self.grid_size):
            x = F.interpolate(x, size=(self.grid_size, self.grid_size), mode="bilinear",
                              align_corners=False)  # B x C x g x g
        return x


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` file or a torch file read with
    ``weights_only=True`` (a ``{'state_dict': …}`` or ``{'model': …}`` wrapper is unwrapped).

    Raises:
        FileNotFoundError: no such file (coprs never downloads weights).
        ValueError: the file cannot be read as a state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' not found; put the weights on disk and set "
                                "`checkpoint` in the config (coprs never downloads weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
        raise ValueError(f"cannot read checkpoint '{path}': {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint '{path}' holds a {type(state).__name__}, not a state dict")
    return state


def file_fingerprint(path: str | Path | None) -> str:
    """``'<resolved path>:<size>:<mtime>'`` of a weights file (for cache keys); '' for None."""
    if path is None:
        return ""
    p = Path(path).expanduser()
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"


class FeatureMapBackbone(BaseVisionBackbone):
    """A frozen third-party *body* + a :class:`GridNeck`, with the coprs backbone contract.

    Subclasses build their body (on the meta device inside :func:`coprs.utils.meta_build`), then
    call ``super().__init__(body, body_channels, ...)`` and implement :meth:`body_features` and
    :attr:`cache_key`. ``preprocess`` is the base class's: longest side → ``img_size``,
    normalise, pad bottom/right.

    Args:
        body: the image model.
        body_channels: C', channels of :meth:`body_features`.
        img_size: S, side of the square padded input.
        out_channels: C, channels of the keys (the neck's projection); None keeps C'.
        grid_size: g, side of the key grid.
        pixel_mean: per-channel mean of 0-255 RGB input.
        pixel_std: per-channel std of 0-255 RGB input.
        frozen: freeze body and neck (eval mode; the features are cacheable).
        seed: seed of the neck's initialisation.
    """

    def __init__(self, body: nn.Module, body_channels: int, img_size: int = 1024,
                 out_channels: int | None = 256, grid_size: int = 64,
                 pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
                 pixel_std: tuple[float, float, float] = IMAGENET_STD,
                 frozen: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.body = body
        self.img_size, self.grid_size = int(img_size), int(grid_size)
        self.out_channels = int(out_channels if out_channels is not None else body_channels)
        if is_meta_build():
            with torch.device("meta"):
                self.neck = GridNeck(body_channels, out_channels, self.grid_size)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.neck = GridNeck(body_channels, out_channels, self.grid_size)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.frozen = frozen
        if frozen:
            self.body.requires_grad_(False)
            self.neck.requires_grad_(False)
            self.body.eval()
            self.neck.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.body.eval()
            self.neck.eval()
        return self

    @abstractmethod
    def body_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalised images → B x C' x h' x w' body features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalised images → B x C x g x g keys (C = ``out_channels``)."""
        if self.frozen:
            with torch.no_grad():
                return self.neck(self.body_features(x))
        return self.neck(self.body_features(x))

    @staticmethod
    def make_cache_key(prefix: str, *parts) -> str:
        """``prefix`` + a short hash of ``parts`` (stable across runs)."""
        return f"{prefix}_" + hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]
