"""mmsegmentation backbones as frozen coprs vision backbones (needs mmseg with a compiled mmcv)."""

from __future__ import annotations

import importlib

import torch

from coprs.backbones import FeatureMapBackbone, file_fingerprint, load_state_file
from coprs.backbones.adapter import IMAGENET_MEAN, IMAGENET_STD
from coprs.utils import is_meta_build

__all__ = ["MMSegBackbone", "mmseg_unavailable", "INSTALL_HINT"]

INSTALL_HINT = ("install mmsegmentation 1.x with an mmcv built with its compiled ops "
                "(`pip install -U openmim && mim install mmcv && pip install mmsegmentation`)")


def mmseg_unavailable() -> str | None:
    """Why ``mmseg.models`` cannot be imported (``'ModuleNotFoundError: …'``), or None if it can.

    mmseg imports fine without mmcv's compiled ops; its models do not (``mmcv._ext``), and mmseg
    asserts a compatible mmcv version at import.
    """
    try:
        importlib.import_module("mmseg.models")
    except Exception as exc:  # noqa: BLE001 - ImportError, mmseg's mmcv-version AssertionError, …
        return f"{type(exc).__name__}: {exc}"
    return None


def _mmseg_models():
    reason = mmseg_unavailable()
    if reason is not None:
        raise ImportError(f"MMSegBackbone needs mmseg.models, which cannot be imported ({reason}); "
                          + INSTALL_HINT)
    from mmseg.registry import MODELS

    return MODELS


class MMSegBackbone(FeatureMapBackbone):
    """A backbone of mmsegmentation's ``MODELS`` registry as a frozen coprs backbone.

    The mmseg backbone gives a tuple of feature maps; level ``out_index`` goes through the neck
    (projection to ``out_channels``, resampling to ``grid_size`` x ``grid_size``).

    Config::

        vision_backbone=dict(
            type='MMSegBackbone',
            backbone=dict(type='MixVisionTransformer', embed_dims=64,
                          num_layers=[3, 4, 6, 3], num_heads=[1, 2, 5, 8]),  # MiT-B2
            checkpoint='/models/segformer_mit-b2_ade20k.pth')

    Args:
        backbone: an mmseg ``MODELS`` config of a backbone (its ``init_cfg`` is ignored: weights
            come only from ``checkpoint``).
        checkpoint: local weights: a backbone state dict, or an mmseg segmentor checkpoint (its
            ``backbone.*`` keys are used); None keeps the random initialisation.
        img_size: S, side of the square padded input.
        out_index: which output of the backbone's tuple (negative: from the deepest).
        body_channels: channels of that output; None measures them with one forward pass of a
            blank image (give it for meta-device builds).
        out_channels: C, the key width; None keeps the backbone's.
        grid_size: g, side of the key grid.
        pixel_mean, pixel_std: 0-255 RGB statistics (ImageNet's by default, as mmseg's).
        frozen: freeze backbone and neck.
        seed: seed of the random initialisation of backbone and neck.
    """

    def __init__(self, backbone: dict, checkpoint: str | None = None, img_size: int = 1024,
                 out_index: int = -1, body_channels: int | None = None,
                 out_channels: int | None = 256, grid_size: int = 64,
                 pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
                 pixel_std: tuple[float, float, float] = IMAGENET_STD,
                 frozen: bool = True, seed: int = 0) -> None:
        models = _mmseg_models()
        cfg = {k: v for k, v in dict(backbone).items() if k not in ("init_cfg", "pretrained")}
        # built in mmseg's scope whatever the default scope (coprs' inside a coprs config)
        scoped = {**cfg, "_scope_": "mmseg"}
        if is_meta_build():
            if body_channels is None:
                raise ValueError("MMSegBackbone on the meta device needs body_channels")
            # some mmseg backbones call .item() while building (drop-path rates), which the meta
            # device refuses: build on the CPU, then drop the storage
            body = models.build(scoped).to("meta")
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                body = models.build(scoped)
            if checkpoint is not None:
                self._load(body, checkpoint, cfg.get("type"))
        self.out_index = out_index
        if body_channels is None:
            body.eval()
            with torch.no_grad():
                body_channels = self._select(body(torch.zeros(1, 3, img_size, img_size))).shape[1]
        super().__init__(body, int(body_channels), img_size=img_size, out_channels=out_channels,
                         grid_size=grid_size, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         frozen=frozen, seed=seed)
        self.backbone_cfg, self.checkpoint, self.seed = cfg, checkpoint, seed

    @staticmethod
    def _load(body, path: str, type_name) -> None:
        state = load_state_file(path)
        if any(k.startswith("backbone.") for k in state):  # a whole segmentor's checkpoint
            state = {k[len("backbone."):]: v for k, v in state.items()
                     if k.startswith("backbone.")}
        try:
            body.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint '{path}' does not fit mmseg backbone {type_name!r}: "
                             + str(exc).splitlines()[0]) from exc

    def _select(self, outs) -> torch.Tensor:
        feats = outs[self.out_index] if isinstance(outs, (list, tuple)) else outs
        if isinstance(feats, (list, tuple)):  # e.g. ViT with output_cls_token: (map, cls)
            feats = feats[0]
        return feats

    def body_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S → B x C' x h' x w' (output ``out_index`` of the mmseg backbone)."""
        return self._select(self.body(x))

    @property
    def cache_key(self) -> str:
        """Identifies the keys this backbone produces (backbone config, sizes, neck, weights)."""
        weights = file_fingerprint(self.checkpoint) or f"random-seed{self.seed}"
        return self.make_cache_key(
            f"mmseg_{self.backbone_cfg.get('type', 'backbone')}", sorted(self.backbone_cfg.items()),
            self.out_index, self.img_size, self.out_channels, self.grid_size, weights,
            f"neck-seed{self.seed}")
