"""Run by tests/engine/test_distributed.py under torchrun: trains a few iterations with DDP on
CPU (gloo) and dumps every rank's parameters."""

import os
import sys

import torch
from mmengine.hooks import Hook

from coprs.cli import main
from coprs.registry import HOOKS


@HOOKS.register_module(force=True)
class DumpParamsHook(Hook):
    def after_run(self, runner):
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        rank = int(os.environ["RANK"])
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(runner.work_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
