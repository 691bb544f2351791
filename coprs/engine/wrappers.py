"""Distributed model wrappers (MODEL_WRAPPERS registry)."""

from __future__ import annotations

from mmengine.model import MMDistributedDataParallel, MMFullyShardedDataParallel

from ..registry import MODEL_WRAPPERS

__all__ = ["CoprsDistributedDataParallel", "CoprsFullyShardedDataParallel"]


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


@MODEL_WRAPPERS.register_module()
class CoprsFullyShardedDataParallel(MMFullyShardedDataParallel):
    """mmengine's FSDP wrapper with coprs' training step: non-finite losses skip the update on
    every rank together, and gradient clipping uses the global norm over all shards.

    mmengine's optimiser wrapper clips with ``torch.nn.utils.clip_grad_norm_`` over the
    parameters it holds; under FSDP those are this rank's shards, so each rank would clip by its
    own partial norm (and scale its shard differently). Here the wrapper's clip function is
    FSDP's own ``clip_grad_norm_``, which all-reduces the norm first. Set it as
    ``strategy.model_wrapper.type`` (the 8-GPU config does).
    """

    def train_step(self, data, optim_wrapper):
        from ..models.segmentor import apply_update

        self._use_global_grad_norm(optim_wrapper)
        with optim_wrapper.optim_context(self):
            data = self.module.data_preprocessor(data, training=True)
            losses = self._run_forward(data, mode="loss")
        parsed, log_vars = self.module.parse_losses(losses)
        return apply_update(parsed, log_vars, optim_wrapper)

    def _use_global_grad_norm(self, optim_wrapper) -> None:
        if getattr(optim_wrapper, "grad_name", None) != "grad_norm":
            return  # no clipping, or clipping by value (elementwise, the same on every shard)
        if getattr(optim_wrapper, "_coprs_fsdp_clip", None) is self:
            return

        def clip(params, max_norm, norm_type=2.0, **_):
            return self.clip_grad_norm_(max_norm, norm_type=norm_type)

        optim_wrapper.clip_func = clip
        optim_wrapper._coprs_fsdp_clip = self
