"""Parameter counting on the meta device (no weights, no memory)."""

from __future__ import annotations

import torch.nn as nn

from ..registry import MODELS
from ..utils import is_meta_build, meta_build, register_all_modules

__all__ = ["COMPONENTS", "count_parameters", "count_model_parameters", "build_for_counting"]

#: the segmentor's parts, in the order they are reported
COMPONENTS = ("policy", "vision_backbone", "prior", "decoder")


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in module.parameters())


def build_for_counting(model_cfg: dict) -> nn.Module:
    """Build a segmentor config inside :func:`~coprs.utils.meta_build`: large parts are built
    on the meta device from their architecture values and no weight file is read."""
    register_all_modules()
    if is_meta_build():
        return MODELS.build(model_cfg)
    with meta_build():
        return MODELS.build(model_cfg)


def count_model_parameters(model: nn.Module) -> dict:
    """``{"total": int, "components": {name: int}}`` for a built segmentor."""
    comps = {name: count_parameters(getattr(model, name)) for name in COMPONENTS}
    return {"total": count_parameters(model), "components": comps}
