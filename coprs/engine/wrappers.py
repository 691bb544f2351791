"""Distributed model wrappers (MODEL_WRAPPERS registry) and the FSDP strategy (STRATEGIES)."""

from __future__ import annotations

import contextlib
import dataclasses

from mmengine._strategy import FSDPStrategy
from mmengine.model import MMDistributedDataParallel, MMFullyShardedDataParallel

from ..registry import MODEL_WRAPPERS, STRATEGIES

__all__ = ["CoprsDistributedDataParallel", "CoprsFullyShardedDataParallel", "CoprsFSDPStrategy"]


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

    def train_step(self, data, optim_wrapper, micro_batch: int | None = None):
        from ..models.micro_batch import run_train_step

        return run_train_step(self, self.module, data, optim_wrapper, micro_batch)


@MODEL_WRAPPERS.register_module()
class CoprsFullyShardedDataParallel(MMFullyShardedDataParallel):
    """mmengine's FSDP wrapper with coprs' training step: non-finite losses skip the update on
    every rank together, and gradient clipping uses the global norm over all shards.

    mmengine's optimiser wrapper clips with ``torch.nn.utils.clip_grad_norm_`` over the
    parameters it holds; under FSDP those are this rank's shards, so each rank would clip by its
    own partial norm (and scale its shard differently). Here the wrapper's clip function is
    FSDP's own ``clip_grad_norm_``, which all-reduces the norm first. Gradient accumulation
    keeps sharded gradients (:meth:`no_sync`). Set it as ``strategy.model_wrapper.type`` (the
    8-GPU config does).
    """

    @contextlib.contextmanager
    def no_sync(self):
        """A no-op here: every backward reduce-scatters, and gradient accumulation
        (``optim_wrapper.accumulative_counts``, whose ``optim_context`` enters ``no_sync`` on
        every iteration of a window but the last) adds up the reduced, sharded gradients, as
        FSDP supports. FSDP's own ``no_sync`` would keep unsharded, unreduced gradients (the
        whole model on every rank) until a backward reduces them, which a window whose last
        step is skipped never runs."""
        yield

    def train_step(self, data, optim_wrapper, micro_batch: int | None = None):
        from ..models.micro_batch import run_train_step

        self._use_global_grad_norm(optim_wrapper)
        return run_train_step(self, self.module, data, optim_wrapper, micro_batch)

    def _use_global_grad_norm(self, optim_wrapper) -> None:
        if getattr(optim_wrapper, "grad_name", None) != "grad_norm":
            return  # no clipping, or clipping by value (elementwise, the same on every shard)
        if getattr(optim_wrapper, "_coprs_fsdp_clip", None) is self:
            return

        def clip(params, max_norm, norm_type=2.0, **_):
            return self.clip_grad_norm_(max_norm, norm_type=norm_type)

        optim_wrapper.clip_func = clip
        optim_wrapper._coprs_fsdp_clip = self


def check_scaler_and_fused(optim_wrapper) -> None:
    """Raise if ``optim_wrapper`` clips gradients with an enabled ``ShardedGradScaler``
    (mmengine's ``AmpOptimWrapper`` under FSDP) and a fused optimiser. To clip, the wrapper
    unscales first; the sharded scaler's found-inf flag then has shape ``[1]``, and torch's fused
    Adam/AdamW step subtracts it in place from each scalar step count, which fails ("output with
    shape [] doesn't match the broadcast shape [1]") at the first update."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    scaler = getattr(optim_wrapper, "loss_scaler", None)
    optimizer = getattr(optim_wrapper, "optimizer", None)
    if not isinstance(scaler, ShardedGradScaler) or not scaler.is_enabled():
        return
    if optimizer is None or not optimizer.defaults.get("fused"):
        return
    if not getattr(optim_wrapper, "clip_grad_kwargs", None):
        return
    raise ValueError(
        "optim_wrapper: under FSDP a loss scaler (torch's ShardedGradScaler) with gradient "
        f"clipping cannot step a fused optimiser ({type(optimizer).__name__} with fused=True): "
        "torch's fused step fails at the first update. For bf16 set "
        "optim_wrapper.loss_scale=dict(enabled=False) (bf16 needs no loss scaling; `coprs train "
        "--amp` and the 8-GPU config do this); for fp16 set optim_wrapper.optimizer.fused=False.")


@STRATEGIES.register_module()
class CoprsFSDPStrategy(FSDPStrategy):
    """mmengine's ``FSDPStrategy`` whose checkpoints resume with the optimiser state they saved.

    Two fixes, both measured on 2 CPU ranks (``tests/engine/test_distributed.py``):

    * mmengine 0.10.7 calls ``FSDP.optim_state_dict_to_load(state_dict, model, optimizer)``,
      the argument order of torch < 2.1; on current torch (``(model, optim, optim_state_dict)``)
      a resumed FSDP run fails with ``TypeError: unhashable type: 'dict'``.
    * On a CPU compute device (gloo), torch's full optimiser state dict with
      ``offload_to_cpu=True`` returns views of one gather buffer that every state reuses:
      ``exp_avg`` comes back equal to ``exp_avg_sq``. ``.cpu()`` copies nothing there, so the
      state is gathered without offloading (the values are cloned instead).

    It also refuses, before any compute, a combination torch cannot step: gradient clipping with
    an enabled loss scaler (under FSDP torch's ``ShardedGradScaler``) and a fused optimiser
    (:func:`check_scaler_and_fused`; found on one H200).

    Set it as ``strategy.type`` (the 8-GPU config does).
    """

    def build_optim_wrapper(self, optim_wrapper, model=None):
        wrapper = super().build_optim_wrapper(optim_wrapper, model)
        check_scaler_and_fused(wrapper)
        return wrapper

    def optim_state_dict(self) -> dict:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cfg = self.optim_state_dict_config
        if self.model.compute_device.type != "cpu" or not getattr(cfg, "offload_to_cpu", False):
            return super().optim_state_dict()
        with FSDP.state_dict_type(self.model, self.state_dict_type, self.state_dict_config,
                                  dataclasses.replace(cfg, offload_to_cpu=False)):
            return FSDP.optim_state_dict(self.model, self.optim_wrapper)

    def load_optim_state_dict(self, state_dict: dict) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        optimizer = self.optim_wrapper.optimizer
        self.optim_wrapper.load_state_dict(
            FSDP.optim_state_dict_to_load(self.model, optimizer, state_dict))
