"""Parameter counting on the meta device (no weights, no memory)."""

from __future__ import annotations

import torch.nn as nn

from ..registry import MODELS
from ..utils import is_meta_build, meta_build, register_all_modules

__all__ = ["COMPONENTS", "count_parameters", "count_model_parameters", "build_for_counting"]

#: the segmentor's parts, in the order they are reported
COMPONENTS = ("policy", "vision_backbone", "prior", "decoder")


def count_parameters(module: nn.Module, trainable: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once), or of those that train.

    A LoRA policy's frozen ``reference`` adapter is left out: it is a copy of the trained
    adapters kept as the GRPO reference, as a full fine-tune's frozen reference copy is no part
    of the model either."""
    from ..policies.adapters import is_adapter_weight

    return sum(p.numel() for name, p in module.named_parameters()
               if not is_adapter_weight(name, "reference")
               and (p.requires_grad or not trainable))


def build_for_counting(model_cfg: dict) -> nn.Module:
    """Build a segmentor config inside :func:`~coprs.utils.meta_build`: large parts are built
    on the meta device from their architecture values and no weight file is read."""
    register_all_modules()
    if is_meta_build():
        return MODELS.build(model_cfg)
    with meta_build():
        return MODELS.build(model_cfg)


def count_model_parameters(model: nn.Module) -> dict:
    """``{"total": int, "components": {name: int}, "trainable": {"total": int, "components":
    {name: int}}}`` for a built segmentor: all parameters, and those the optimiser updates
    (``requires_grad``: frozen backbones, a frozen vision tower and LoRA's base weights left
    out)."""
    def counts(trainable):
        return {"total": count_parameters(model, trainable),
                "components": {name: count_parameters(getattr(model, name), trainable)
                               for name in COMPONENTS}}

    return {**counts(False), "trainable": counts(True)}
