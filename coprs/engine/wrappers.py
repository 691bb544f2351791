"""Distributed model wrappers (MODEL_WRAPPERS registry)."""

from __future__ import annotations

from mmengine.model import MMDistributedDataParallel

from ..registry import MODEL_WRAPPERS

__all__ = ["CoprsDistributedDataParallel"]


@MODEL_WRAPPERS.register_module()
class CoprsDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper that also runs on CPU (gloo) and skips non-finite steps.

    mmengine hands ``device_ids=[LOCAL_RANK]`` to DDP, which fails for a module on CPU; here
    they are dropped for CPU modules. ``train_step`` mirrors
    :meth:`coprs.models.ReasoningSegmentor.train_step`: the ranks agree (all-reduce) on skipping
    an update whose loss is not finite.
    """

    def __init__(self, module, detect_anomalous_params: bool = False, **kwargs) -> None:
        if next(module.parameters()).device.type == "cpu":
            kwargs.pop("device_ids", None)
            kwargs.pop("output_device", None)
        super().__init__(module=module, detect_anomalous_params=detect_anomalous_params,
                         **kwargs)

    def train_step(self, data, optim_wrapper):
        from ..models.segmentor import apply_update

        with optim_wrapper.optim_context(self):
            data = self.module.data_preprocessor(data, training=True)
            losses = self._run_forward(data, mode="loss")
        parsed, log_vars = self.module.parse_losses(losses)
        return apply_update(parsed, log_vars, optim_wrapper)
