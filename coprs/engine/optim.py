"""Parameter groups with learning-rate multipliers (OPTIM_WRAPPER_CONSTRUCTORS registry)."""

from __future__ import annotations

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ["GroupedOptimWrapperConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GroupedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """One parameter group per ``paramwise_cfg.custom_keys`` prefix, plus one for the rest.

    mmengine's default constructor makes a group per parameter (thousands for a 7B policy, each
    logged) and adds weights shared between modules twice (tied embeddings). Here each
    trainable parameter appears once, in the group of the longest ``custom_keys`` prefix its
    name starts with; ``lr_mult`` / ``decay_mult`` scale the base lr / weight decay. Frozen
    parameters are left out. The per-group learning rates survive schedulers such as
    ``CosineAnnealingLR`` (they scale each group's own base lr).

    Example (paper multipliers)::

        paramwise_cfg=dict(custom_keys={'prior': dict(lr_mult=25.0),
                                        'decoder.downscaler': dict(lr_mult=10.0),
                                        'decoder.mask_decoder': dict(lr_mult=5.0)})
    """

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "",
                   is_dcn_module=None) -> None:
        custom = (self.paramwise_cfg or {}).get("custom_keys", {})
        unknown = set(self.paramwise_cfg or {}) - {"custom_keys"}
        if unknown:
            raise ValueError(f"GroupedOptimWrapperConstructor supports only custom_keys in "
                             f"paramwise_cfg, got {sorted(unknown)}")
        keys = sorted(custom, key=len, reverse=True)
        groups: dict[str, list] = {}
        for name, param in module.named_parameters():  # each shared tensor once
            if not param.requires_grad:
                continue
            key = next((k for k in keys if name == k or name.startswith(k + ".")), "")
            groups.setdefault(key, []).append(param)
        for key in ["", *keys]:
            if key not in groups:
                continue
            group = {"params": groups[key]}
            if key:
                opts = custom[key]
                group["lr"] = self.base_lr * opts.get("lr_mult", 1.0)
                if self.base_wd is not None:
                    group["weight_decay"] = self.base_wd * opts.get("decay_mult", 1.0)
            params.append(group)
            n = sum(p.numel() for p in groups[key])
            print_log(f"param group '{key or 'default'}': {len(groups[key])} tensors, {n:,} "
                      f"parameters, lr {group.get('lr', self.base_lr):.3g}", logger="current")
