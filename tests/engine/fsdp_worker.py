"""Run by tests/engine/test_distributed.py under torchrun (2 CPU ranks, gloo): one FSDP training
step of a toy model through CoprsFullyShardedDataParallel, with gradient clipping, then a step
whose loss is NaN on rank 1 only; then, on a fresh toy, a gradient-accumulation window of two
whose second step is skipped (no backward), which steps with the first one's gradients. Rank 0
saves the gathered parameters after each scenario."""

import functools
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper


class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, inputs, data_samples=None, mode="loss"):
        return {"loss": (self.b(self.a(inputs)) ** 2).mean() * data_samples}


def batch(scale: float) -> dict:
    torch.manual_seed(1)
    return dict(inputs=torch.randn(6, 4), data_samples=torch.tensor(scale))


def step(model, scale: float, clip: float | None) -> dict:
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1.0),
                           clip_grad=None if clip is None else dict(max_norm=clip))
    return model.train_step(batch(scale), optim_wrapper=wrapper)


if __name__ == "__main__":
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from coprs.engine.fsdp import plain_state, wrap_layers
    from coprs.engine.wrappers import CoprsFullyShardedDataParallel

    out, clip = sys.argv[1], float(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = CoprsFullyShardedDataParallel(
        Toy(), device_id=torch.device("cpu"),
        auto_wrap_policy=functools.partial(wrap_layers, layer_names=["Linear"]))
    logs = [step(model, 1.0, clip), step(model, float("nan") if rank == 1 else 1.0, clip)]
    with FSDP.summon_full_params(model):
        state = {k: v.detach().clone() for k, v in plain_state(model.module).items()}

    from types import SimpleNamespace

    from coprs.engine.loops import _apply_pending_grads

    # a second root, the first kept alive: nothing FSDP holds is collected before the teardown
    acc = CoprsFullyShardedDataParallel(
        Toy(), device_id=torch.device("cpu"),
        auto_wrap_policy=functools.partial(wrap_layers, layer_names=["Linear"]))
    wrapper = OptimWrapper(torch.optim.SGD(acc.parameters(), lr=1.0), accumulative_counts=2)
    wrapper.initialize_count_status(acc, 0, 2)
    acc.train_step(batch(1.0), optim_wrapper=wrapper)  # the window's first step: no update
    warnings = []
    _apply_pending_grads(wrapper, acc, SimpleNamespace(warning=warnings.append), "iteration 2")
    with FSDP.summon_full_params(acc):
        pending = {k: v.detach().clone() for k, v in plain_state(acc.module).items()}
    if rank == 0:
        torch.save(dict(state=state, nonfinite=[float(x["nonfinite_step"]) for x in logs],
                        pending=pending, pending_warnings=warnings),
                   os.path.join(out, "fsdp_toy.pt"))
    dist.barrier()  # both ranks leave together (gloo may abort a rank that tears down early)
    dist.destroy_process_group()
