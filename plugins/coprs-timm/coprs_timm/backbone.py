"""timm image models as frozen coprs vision backbones."""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn as nn

from coprs.backbones import FeatureMapBackbone, file_fingerprint, load_state_file
from coprs.utils import is_meta_build

__all__ = ["TimmBackbone", "build_timm_model", "load_timm_weights"]

FEATURE_MODES = ("features_only", "forward_features")


def build_timm_model(model_name: str, img_size: int, **model_kwargs) -> nn.Module:
    """``timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)``.

    Models with a fixed input size (ViTs) get ``img_size`` unless ``model_kwargs`` sets it, so
    their position embeddings match the padded input. Never downloads anything.
    """
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"timm has no model {model_name!r}; see timm.list_models('*pattern*')")
    kwargs = dict(num_classes=0, **model_kwargs)
    if "img_size" not in kwargs:
        fixed = timm.models.get_pretrained_cfg_value(model_name, "fixed_input_size")
        if fixed:
            kwargs["img_size"] = img_size
    return timm.create_model(model_name, pretrained=False, **kwargs)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_timm_weights(model: nn.Module, path: str, model_name: str) -> None:
    """Load a local checkpoint of a timm model (``.safetensors`` or a torch file read with
    ``weights_only=True``) into ``model``.

    The model module's own ``checkpoint_filter_fn`` (e.g. ViT position-embedding resampling for
    another ``img_size``) is applied when it has one. Classifier-head weights in the file are
    ignored (the backbone has no head); any other missing or unexpected key is an error.
    """
    state = load_state_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn",
                        None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # noqa: BLE001 - a file of another model trips the filter
            raise ValueError(f"checkpoint '{path}' does not fit timm model {model_name!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
    head = _classifier_prefixes(model)
    state = {k: v for k, v in state.items() if not (head and k.startswith(head))}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint '{path}' does not fit timm model {model_name!r}: "
                         + str(exc).splitlines()[-1].strip()) from exc
    if missing or unexpected:
        raise ValueError(
            f"checkpoint '{path}' does not fit timm model {model_name!r}: missing keys "
            f"{missing[:5]}{' …' if len(missing) > 5 else ''}, unexpected keys "
            f"{unexpected[:5]}{' …' if len(unexpected) > 5 else ''} (is it a checkpoint of "
            "that model, at that size?)")


class TimmBackbone(FeatureMapBackbone):
    """Any ``timm.create_model`` name as a frozen backbone giving B x C x g x g keys.

    The timm model (random-initialised, or loaded from a local ``checkpoint``) gives features
    B x C' x h' x w'; a neck projects them to ``out_channels`` and resamples them to
    ``grid_size`` x ``grid_size`` (SAM's 256 x 64 x 64 by default), so the prior and decoder of
    a SAM config work unchanged.

    Config::

        vision_backbone=dict(type='TimmBackbone', model_name='convnext_tiny',
                             checkpoint='/models/convnext_tiny.safetensors')

    Args:
        model_name: a timm model name (``'vit_base_patch16_224'``, ``'convnext_tiny'``,
            ``'resnet50'`` …).
        checkpoint: local weights of that model (``.safetensors``, ``.pth``, ``.bin``); None
            keeps the random initialisation (tests, tiny assemblies). Never downloaded.
        img_size: S, side of the square padded input.
        features: ``'features_only'``: level ``out_index`` of the model's feature pyramid
            (``model.feature_info``; read through timm's ``forward_intermediates``, as timm's
            ``features_only`` wrappers do); ``'forward_features'``: the output of the model's
            ``forward_features`` (ViT tokens are reshaped to their grid, prefix tokens dropped).
        out_index: the pyramid level for ``'features_only'`` (negative: from the deepest).
        out_channels: C, the key width; None keeps the model's channels.
        grid_size: g, side of the key grid.
        pixel_mean: 0-255 RGB mean; None takes the model's (``pretrained_cfg``).
        pixel_std: 0-255 RGB std; None takes the model's.
        frozen: freeze the model and the neck (the paper's setting; features are cacheable).
        seed: seed of the random initialisation of model and neck.
        model_kwargs: more ``timm.create_model`` arguments (``pretrained`` is always False).
    """

    def __init__(self, model_name: str, checkpoint: str | None = None, img_size: int = 1024,
                 features: str = "features_only", out_index: int = -1,
                 out_channels: int | None = 256, grid_size: int = 64,
                 pixel_mean: tuple[float, float, float] | None = None,
                 pixel_std: tuple[float, float, float] | None = None,
                 frozen: bool = True, seed: int = 0, model_kwargs: dict | None = None) -> None:
        if features not in FEATURE_MODES:
            raise ValueError(f"features must be one of {FEATURE_MODES}, got {features!r}")
        model_kwargs = dict(model_kwargs or {})
        if model_kwargs.pop("pretrained", False):
            raise ValueError("TimmBackbone never downloads: drop model_kwargs.pretrained and give "
                             "checkpoint=/local/weights instead")
        if is_meta_build():
            with torch.device("meta"):
                body = build_timm_model(model_name, img_size, **model_kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                body = build_timm_model(model_name, img_size, **model_kwargs)
            if checkpoint is not None:
                load_timm_weights(body, checkpoint, model_name)
        if features == "features_only":
            if not hasattr(body, "forward_intermediates") or not getattr(body, "feature_info",
                                                                         None):
                raise ValueError(f"timm model {model_name!r} has no feature pyramid "
                                 "(forward_intermediates); use features='forward_features'")
            n = len(body.feature_info)
            if not -n <= out_index < n:
                raise ValueError(f"out_index {out_index} is outside the {n} feature levels of "
                                 f"{model_name!r}")
            out_index %= n
            channels = int(body.feature_info[out_index]["num_chs"])
        else:
            channels = int(body.num_features)
        cfg = getattr(body, "pretrained_cfg", None) or {}
        mean = pixel_mean or tuple(255.0 * m for m in cfg.get("mean", (0.485, 0.456, 0.406)))
        std = pixel_std or tuple(255.0 * s for s in cfg.get("std", (0.229, 0.224, 0.225)))
        super().__init__(body, channels, img_size=img_size, out_channels=out_channels,
                         grid_size=grid_size, pixel_mean=mean, pixel_std=std, frozen=frozen,
                         seed=seed)
        self.model_name, self.checkpoint, self.seed = model_name, checkpoint, seed
        self.features, self.out_index = features, out_index
        self._kwargs = model_kwargs

    def body_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S → B x C' x h' x w'."""
        if self.features == "features_only":
            (feats,) = self.body.forward_intermediates(x, indices=[self.out_index],
                                                       intermediates_only=True)
            return feats
        y = self.body.forward_features(x)
        if y.dim() == 3:  # B x (prefix + h'w') x C' tokens
            y = y[:, getattr(self.body, "num_prefix_tokens", 0):]
            side = math.isqrt(y.shape[1])
            if side * side != y.shape[1]:
                raise ValueError(f"{self.model_name}: cannot lay {y.shape[1]} tokens on a square "
                                 "grid; use features='features_only'")
            return y.transpose(1, 2).reshape(y.shape[0], -1, side, side)
        if getattr(self.body, "output_fmt", "NCHW") == "NHWC":
            y = y.permute(0, 3, 1, 2)
        return y

    @property
    def cache_key(self) -> str:
        """Identifies the keys this backbone produces (model, sizes, neck, weights)."""
        weights = file_fingerprint(self.checkpoint) or f"random-seed{self.seed}"
        return self.make_cache_key(
            f"timm_{self.model_name}", self.model_name, sorted(self._kwargs.items()),
            self.features, self.out_index, self.img_size, self.out_channels, self.grid_size,
            weights, f"neck-seed{self.seed}")
