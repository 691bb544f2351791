"""The boundary F-score: hand-computed values, the reward contract, the plugin, a GRPO smoke run."""

from __future__ import annotations

import pytest
import torch

plugin = pytest.importorskip("coprs_example_reward", reason="coprs-example-reward is not "
                             "installed: pip install -e plugins/coprs-example-reward")
BoundaryFScoreReward, boundary_fscore, boundary_map = (
    plugin.BoundaryFScoreReward, plugin.boundary_fscore, plugin.boundary_map)


def _square(rows, cols, size=5):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_boundary_map_by_hand():
    sq = _square((1, 4), (1, 4))  # 3x3 square in a 5x5 image: a ring of 8 around one pixel
    b = boundary_map(sq[None])[0]
    assert b.sum() == 8 and not b[2, 2] and b[1, 1]
    # the image border is not background: a square in the right column has no edge there
    right = boundary_map(_square((1, 4), (2, 5))[None])[0]
    assert right.sum() == 7 and not right[2, 4] and not right[2, 3]
    # nor is padding: with only the 3 left columns valid, a 3-wide full-height block is all
    # interior except where it meets valid background
    valid = torch.zeros(5, 5, dtype=torch.bool)
    valid[:, :3] = True
    block = _square((0, 5), (0, 3))
    assert boundary_map(block[None], valid[None]).sum() == 0


def test_boundary_fscore_by_hand():
    gt = _square((1, 4), (1, 4)).float()
    assert boundary_fscore(gt, gt).item() == 1.0
    shifted = _square((1, 4), (2, 5)).float()
    # tolerance 0: Bp has 7 pixels, Bg 8, 4 in common → P = 4/7, R = 1/2, F = 8/15
    assert boundary_fscore(shifted, gt, tolerance=0).item() == pytest.approx(8 / 15)
    # tolerance 1: every boundary pixel is within one pixel of the other boundary
    assert boundary_fscore(shifted, gt, tolerance=1).item() == pytest.approx(1.0)
    empty = torch.zeros(5, 5)
    assert boundary_fscore(empty, empty).item() == 1.0  # empty/empty, as coprs' mask score
    assert boundary_fscore(empty, gt).item() == 0.0
    assert boundary_fscore(gt, empty.bool()).item() == 0.0
    # probabilities are thresholded; a batch gives one value per mask
    batch = boundary_fscore(torch.stack([gt * 0.9, shifted * 0.4]), torch.stack([gt, gt]))
    assert batch.tolist() == [1.0, 0.0]


def test_boundary_fscore_ignores_pixels_outside_valid():
    gt = _square((1, 4), (1, 4))
    pred = gt.clone().float()
    pred[:, 4] = 1.0  # differs only in the last column
    valid = torch.ones(5, 5, dtype=torch.bool)
    valid[:, 4] = False
    assert boundary_fscore(pred, gt, tolerance=0).item() < 1.0
    assert boundary_fscore(pred, gt, valid, tolerance=0).item() == 1.0


def test_boundary_fscore_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        boundary_fscore(torch.zeros(4, 4), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="tolerance"):
        boundary_fscore(torch.zeros(4, 4), torch.zeros(4, 4), tolerance=-1)


def test_reward_contract_resizes_ground_truth():
    reward = BoundaryFScoreReward(tolerance=0)
    assert reward.name == "boundary" and reward.needs_masks
    gt = torch.zeros(1, 20, 20, dtype=torch.bool)
    gt[0, 4:16, 4:16] = True  # 2x the prediction's size
    pred = torch.zeros(2, 10, 10)
    pred[0, 2:8, 2:8] = 0.9
    out = reward(["a", "b"], pred, gt.repeat(2, 1, 1), torch.ones(2, 20, 20, dtype=torch.bool))
    assert out.shape == (2,) and out.dtype == torch.float32
    assert out.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="needs pred_probs"):
        reward(["a"])


def test_registered_through_the_entry_point_and_composes():
    from coprs.plugins import config_dirs, origin_of
    from coprs.registry import REWARDS

    assert REWARDS.get("BoundaryFScoreReward") is BoundaryFScoreReward
    assert origin_of("rewards", "BoundaryFScoreReward").startswith("coprs-example-reward ")
    assert "coprs-example-reward" in config_dirs()
    total = REWARDS.build(dict(type="WeightedSumReward", rewards=[
        dict(reward=dict(type="MaskReward"), weight=0.5),
        dict(reward=dict(type="BoundaryFScoreReward"), weight=0.5)]))
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 2:6, 2:6] = True
    value, breakdown = total.score(["x"], gt.float(), gt)
    assert set(breakdown) == {"mask", "boundary"} and breakdown["boundary"].item() == 1.0
    assert value.item() == pytest.approx(0.5 * breakdown["mask"].item() + 0.5)


def test_grpo_smoke_run_with_the_plugin_config(tmp_path, capsys):
    from coprs.cli import main

    work = tmp_path / "w"
    rc = main(["train", "coprs-example-reward::coprs_tiny_boundary-reward_shapes_cpu.py",
               "--work-dir", str(work), "--cfg-options",
               "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=2",
               "train_cfg.stages.1.batch_size=2", "train_dataloader.batch_size=2",
               "train_cfg.group_size=2", "train_cfg.rollout_engine.max_new_tokens=6",
               "train_dataloader.dataset.num_samples=8", "default_hooks.logger.interval=1",
               "val_cfg.datasets.0.num_samples=2",
               f"model.feature_cache.root={tmp_path / 'feature_cache'}"])
    assert rc == 0
    log = capsys.readouterr().out + "".join(p.read_text() for p in work.rglob("*.log"))
    assert "reward/boundary" in log and "reward/mask" in log
    assert (work / "iter_3.pth").is_file()


def _flat(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, value in node.items()
                for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(node, (list, tuple)):
        return {k: v for i, value in enumerate(node)
                for k, v in _flat(value, f"{prefix}[{i}]").items()}
    return {prefix: node}


def test_plugin_config_is_the_main_job_with_another_reward():
    """The config spells out coprs' CPU main job (a plugin config cannot inherit from coprs'
    configs); everything but the reward and the work dir must stay the main job's."""
    from pathlib import Path

    from mmengine.config import Config

    from coprs.plugins import resolve_config

    repo = Path(__file__).resolve().parents[3]
    main_job = Config.fromfile(repo / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py")
    ours = Config.fromfile(resolve_config("coprs-example-reward::"
                                          "coprs_tiny_boundary-reward_shapes_cpu.py"))
    a, b = _flat(main_job.to_dict()), _flat(ours.to_dict())
    differ = {k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>")}
    allowed = ("work_dir", "reward.", "train_cfg.reward.")
    assert differ and all(k.startswith(allowed) for k in differ), sorted(
        k for k in differ if not k.startswith(allowed))
    assert b["train_cfg.reward.rewards[1].reward.type"] == "BoundaryFScoreReward"
