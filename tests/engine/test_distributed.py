"""Two processes with the gloo backend on CPU train a few iterations; ranks end identical."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.config import Config

from ..conftest import TINY_CONFIG  # noqa: TID252

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_gloo_ranks_end_with_identical_parameters(tmp_path):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.custom_hooks.append(dict(type="DumpParamsHook"))
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.dump(str(tmp_path / "cfg.py"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29531", str(WORKER), str(tmp_path / "cfg.py"),
           "--work-dir", str(tmp_path / "w"), "--launcher", "pytorch", "--debug", "--cfg-options",
           "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2",
           "train_dataloader.batch_size=2", "train_cfg.group_size=2",
           "train_cfg.rollout_engine.max_new_tokens=6", "default_hooks.checkpoint.interval=100"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    (tmp_path / "torchrun.log").write_text(proc.stdout + proc.stderr)
    errors = [x for x in (proc.stdout + proc.stderr).splitlines() if "rror" in x]
    assert proc.returncode == 0, "\n".join(errors[-20:])
    a = torch.load(tmp_path / "w" / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "w" / "rank1.pt", weights_only=True)
    init = Config.fromfile(str(TINY_CONFIG))  # noqa: F841 - the config still loads
    assert a.keys() == b.keys()
    changed = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    from coprs.apis import init_segmentor

    fresh = init_segmentor(str(TINY_CONFIG)).state_dict()
    changed = sum(not torch.equal(fresh[k], a[k]) for k in a if k in fresh)
    assert changed > 0  # training moved the weights, identically on both ranks
