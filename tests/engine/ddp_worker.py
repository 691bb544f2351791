"""Imported by the ranks of tests/engine/test_distributed.py through the config's
``custom_imports``: a hook that dumps every rank's parameters at the end of training."""

import os

import torch
from mmengine.hooks import Hook

from coprs.registry import HOOKS


@HOOKS.register_module(force=True)
class DumpParamsHook(Hook):
    def after_run(self, runner):
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        rank = int(os.environ["RANK"])
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(runner.work_dir, f"rank{rank}.pt"))
