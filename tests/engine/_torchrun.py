"""Two-rank CPU training runs for the distributed tests: ``tools/dist_train.sh`` (torchrun,
gloo) on the tiny config, with ``ddp_worker.DumpParamsHook`` saving every rank's parameters."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.config import Config

from ..conftest import TINY_CONFIG  # noqa: TID252

ROOT = Path(__file__).parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
#: a few seconds of training: 2 warm-up iterations, short rollouts, groups and batches of 2
SHORT_RUN = ["train_cfg.stages.0.iters=2", "train_dataloader.batch_size=2",
             "train_cfg.group_size=2", "train_cfg.rollout_engine.max_new_tokens=6",
             "default_hooks.checkpoint.interval=100", "val_cfg.datasets.0.num_samples=2"]


def train_on_two_ranks(tmp_path: Path, port: int, options: list[str],
                       extra_args: list[str] = ()) -> subprocess.CompletedProcess:
    """Train the tiny config on 2 gloo ranks into ``tmp_path/w`` with :data:`SHORT_RUN` and
    ``options`` (more ``--cfg-options``); returns the finished torchrun process."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.custom_imports = dict(imports=["ddp_worker"], allow_failed_imports=False)
    cfg.custom_hooks.append(dict(type="DumpParamsHook"))
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.dump(str(tmp_path / "cfg.py"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parent), PORT=str(port),
               PYTHON=sys.executable)
    cmd = ["bash", str(ROOT / "tools" / "dist_train.sh"), str(tmp_path / "cfg.py"), "2",
           "--work-dir", str(tmp_path / "w"), *extra_args, "--cfg-options", *SHORT_RUN,
           f"model.feature_cache.root={tmp_path / 'cache'}", *options]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def rank_params(work_dir: Path) -> tuple[dict, dict]:
    """The parameters ranks 0 and 1 ended with (``DumpParamsHook``)."""
    return tuple(torch.load(work_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
