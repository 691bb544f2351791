"""`coprs bench-paradigms`: schedule scaling, the time budget, and a short end-to-end run of the
LISA-style and Seg-Zero-style tiny assemblies (train a few iterations, then evaluate)."""

import json
import types
from pathlib import Path

import pytest
from mmengine.config import Config

from coprs.cli import main
from coprs.commands.bench_paradigms import (
    DEFAULT_CONFIGS,
    paradigm_name,
    prepare_config,
    scale_schedule,
    work_dir_names,
)
from coprs.engine.hooks import TrainTimeBudgetHook

REPO = Path(__file__).resolve().parents[2]
SMALL = ["train_dataloader.batch_size=2", "train_cfg.group_size=2",
         "train_cfg.rollout_engine.max_new_tokens=6"]


def test_scale_schedule_keeps_stage_shares_and_milestones():
    cfg = Config.fromfile(str(REPO / DEFAULT_CONFIGS[1]))
    old = [s["iters"] for s in cfg.train_cfg.stages]
    scale_schedule(cfg, 94)
    new = [s["iters"] for s in cfg.train_cfg.stages]
    assert sum(new) == 94 and new == [round(n * 94 / sum(old)) for n in old]
    assert cfg.param_scheduler[0]["end"] == 94
    hook = next(h for h in cfg.custom_hooks if h["type"] == "SegLossScheduleHook")
    assert hook["milestones"][0]["iter"] == round(old[0] // 2 * 94 / sum(old))
    scale_schedule(cfg, 2)
    assert [s["iters"] for s in cfg.train_cfg.stages] == [1, 1]
    assert [paradigm_name(Config.fromfile(str(REPO / c))) for c in DEFAULT_CONFIGS] == [
        "CoPRS (heatmap prior)", "LISA-style (latent token)", "Seg-Zero-style (text coordinates)"]


def test_time_budget_hook_stops_the_loop(monkeypatch):
    clock = iter([0.0, 30.0, 61.0])
    monkeypatch.setattr("coprs.engine.hooks.time.perf_counter", lambda: next(clock))
    runner = types.SimpleNamespace(train_loop=types.SimpleNamespace(stop_training=False))
    hook = TrainTimeBudgetHook(minutes=1)
    hook.before_train_iter(runner, 0)
    hook.after_train_iter(runner, 0)
    assert not runner.train_loop.stop_training
    hook.before_train_iter(runner, 1)  # the clock starts once
    hook.after_train_iter(runner, 1)
    assert runner.train_loop.stop_training
    with pytest.raises(ValueError, match="minutes"):
        TrainTimeBudgetHook(minutes=0)


def test_usage_errors(tmp_path, capsys):
    assert main(["bench-paradigms", "--out", str(tmp_path)]) == 2
    assert "budget" in capsys.readouterr().err
    assert main(["bench-paradigms", "--iters", "2", "--out", str(tmp_path), "--configs",
                 DEFAULT_CONFIGS[0], "configs/coprs/coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py"]) == 2
    assert "same data" in capsys.readouterr().err


def test_configs_of_one_file_name_get_their_own_work_dirs():
    assert work_dir_names(["a/tiny.py", "b/tiny.py", "c/other.py", "d/tiny.py"]) == [
        "tiny", "tiny_2", "other", "tiny_3"]


def test_the_default_configs_are_found_from_any_folder(tmp_path, capsys, monkeypatch):
    from coprs.commands import bench_paradigms
    from coprs.commands.common import UsageError

    def stop(cfg):
        raise UsageError(f"reached {cfg.filename}")

    monkeypatch.setattr(bench_paradigms, "run_config", stop)
    monkeypatch.chdir(tmp_path)  # the configs are the repository's, not the folder's
    assert main(["bench-paradigms", "--iters", "2", "--out", str(tmp_path / "o")]) == 2
    assert f"reached {REPO / DEFAULT_CONFIGS[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("config, prior", [(DEFAULT_CONFIGS[1], "LatentTokenPrior"),
                                           (DEFAULT_CONFIGS[2], "TextCoordinatePrior")])
def test_train_and_evaluate_each_paradigm(tmp_path, config, prior):
    out = tmp_path / "bench"
    assert main(["bench-paradigms", "--configs", config, "--iters", "2", "--test-samples", "1",
                 "--max-new-tokens", "4", "--out", str(out), "--cfg-options", *SMALL]) == 0
    report = json.loads((out / "paradigms.json").read_text())
    (row,) = report["paradigms"]
    assert row["prior"] == prior and row["decoder"] == "SAMPromptDecoder"
    assert row["train_iters"] == 2 and row["grpo_iters"] == 1
    assert set(row["splits"]) == {"shapes/test", "shapes/test_novel"}
    assert all(m["n"] == 1 and 0 <= m["gIoU"] <= 1 for m in row["splits"].values())
    assert row["added_params"] == row["params"]["prior"] + row["params"]["decoder"] > 0
    assert row["mean_step_s"] > 0 and row["infer_s_per_sample"] > 0
    assert report["budget"] == {"minutes": None, "iters": 2}
    table = (out / "paradigms.md").read_text()
    assert row["paradigm"] in table and "coprs bench-paradigms --configs" in table


def test_prepare_config_drops_validation_and_sets_the_shared_settings(tmp_path):
    """A config that validates during training (the CoPRS main job) is benchmarked without it:
    validation would count against its time budget and not against the others'."""
    cfg = Config.fromfile(DEFAULT_CONFIGS[0])
    assert cfg.get("val_cfg") is not None
    args = types.SimpleNamespace(seed=3, iters=None, budget_minutes=2.0, feature_cache=None, test_samples=5,
                     max_new_tokens=8)
    prepare_config(cfg, args, tmp_path / "coprs")
    assert all(cfg.get(k) is None for k in ("val_cfg", "val_dataloader", "val_evaluator"))
    assert cfg.randomness.seed == 3 and cfg.default_hooks.checkpoint is None
    assert cfg.custom_hooks[-1] == dict(type="TrainTimeBudgetHook", minutes=2.0)
    assert [d.num_samples for d in cfg.test_cfg.datasets] == [5, 5]
