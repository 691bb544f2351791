"""End-to-end training on the tiny assembly: warm-up + GRPO, checkpoints, exact resume."""

import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from coprs.cli import main
from coprs.registry import HOOKS

from ..conftest import TINY_CONFIG  # noqa: TID252


@HOOKS.register_module(force=True)
class _StopAt(Hook):
    """Simulates a crash right after the checkpoint of iteration ``at`` is written."""

    priority = "LOWEST"

    def __init__(self, at: int) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 >= self.at:
            raise KeyboardInterrupt("simulated crash")


@pytest.fixture
def train(small_run):
    def run(work_dir, *extra, sft=2, grpo=2):
        return main(["train", str(TINY_CONFIG), "--work-dir", str(work_dir), "--cfg-options",
                     f"train_cfg.stages.0.iters={sft}", f"train_cfg.stages.1.iters={grpo}",
                     *small_run, *extra])

    return run


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_train_writes_safe_checkpoints_and_test_reads_them(tmp_path, capsys, train):
    assert train(tmp_path / "w") == 0
    ckpt = tmp_path / "w" / "iter_4.pth"
    full = torch.load(ckpt, map_location="cpu", weights_only=True)  # no unsafe globals
    assert {"state_dict", "optimizer", "message_hub", "rng", "meta"} <= set(full)
    assert (tmp_path / "w" / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    assert (tmp_path / "w" / "reference_policy.pth").is_file()
    assert not list((tmp_path / "w").glob("*.tmp"))
    log = capsys.readouterr().out + "".join(p.read_text() for p in (tmp_path / "w").rglob("*.log"))
    assert "reward/mask" in log and "time/rollout" in log and "pg/clip_frac" in log
    out = tmp_path / "r.json"
    assert main(["test", str(TINY_CONFIG), str(ckpt), "--out", str(out), "--max-new-tokens", "4",
                 "--work-dir", str(tmp_path / "t"), "--cfg-options",
                 "test_cfg.datasets.0.num_samples=2", "test_cfg.datasets.1.num_samples=2"]) == 0
    assert json.loads(out.read_text())["shapes/test"]["n"] == 2
    assert (tmp_path / "t" / "per_sample_generated" / "shapes_test" / "per_sample.jsonl").is_file()


#: half of the gold answers name a wrong place (PerturbAnswerPlace, the tiny config's third
#: transform): a run resumed in the warm-up must perturb the same samples
PERTURB = "train_dataloader.dataset.pipeline.2.prob=0.5"


@pytest.mark.parametrize("sft,grpo,crash_at,extra", [(2, 3, 4, ()), (4, 1, 2, (PERTURB,))],
                         ids=["mid-grpo", "mid-warm-up-perturbed"])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, sft, grpo, crash_at, extra, train,
                                                    small_run):
    assert Config.fromfile(str(TINY_CONFIG)).train_dataloader.dataset.pipeline[2].type == (
        "PerturbAnswerPlace")
    stages = [f"train_cfg.stages.0.iters={sft}", f"train_cfg.stages.1.iters={grpo}", *extra]
    last = f"iter_{sft + grpo}.pth"
    assert train(tmp_path / "a", *extra, sft=sft, grpo=grpo) == 0
    crashing = Config.fromfile(str(TINY_CONFIG))
    crashing.custom_hooks.append(dict(type="_StopAt", at=crash_at))
    crashing.dump(str(tmp_path / "crashing.py"))
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(tmp_path / "crashing.py"), "--work-dir", str(tmp_path / "b"),
              "--cfg-options", *stages, *small_run])
    assert not (tmp_path / "b" / last).exists()
    assert main(["train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "b"), "--resume",
                 "--cfg-options", *stages, *small_run]) == 0
    a, b = _state(tmp_path / "a" / last), _state(tmp_path / "b" / last)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_missing_weight_path_fails_before_compute(capsys):
    cfg = "configs/coprs/coprs_qwen2.5-vl-3b_sam-vit-h_refcoco.py"
    Path(cfg).is_file() or pytest.fail("config missing")
    rc = main(["train", cfg, "--cfg-options", "model.policy.model_path=/nowhere/qwen"])
    assert rc == 2
    assert "model.policy.model_path '/nowhere/qwen' does not exist" in capsys.readouterr().err


def test_configs_chain_warmup_then_grpo():
    cfg = Config.fromfile(str(TINY_CONFIG))
    assert [s["kind"] for s in cfg.train_cfg.stages] == ["sft", "grpo"]


def test_training_logs_to_tensorboard(tmp_path, small_run):
    """With mmengine's TensorBoard backend in ``vis_backends`` (the ``tensorboard`` extra), the
    losses of every iteration and the GRPO reward breakdown land in TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend"),
                                   dict(type="TensorboardVisBackend")]
    cfg.visualizer.name = f"visualizer_{tmp_path.name}"
    cfg.experiment_name = tmp_path.name
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2",
                 *small_run]) == 0
    events = list((tmp_path / "w").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent)).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "loss_seg", "lr", "reward/mask", "reward/format", "kl_ref"} <= tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("reward/mask")] == [3, 4]  # the GRPO iterations
