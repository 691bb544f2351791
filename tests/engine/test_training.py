"""End-to-end training on the tiny assembly: warm-up + GRPO, checkpoints, exact resume."""

import json
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from PIL import Image

from coprs.cli import main
from coprs.engine import drop_validation
from coprs.registry import HOOKS, REWARDS
from coprs.rewards.base import BaseReward

from ..conftest import SMALL_RUN, TINY_CONFIG  # noqa: TID252


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


def test_train_writes_safe_checkpoints_and_test_reads_them(tmp_path, capsys, train,
                                                           monkeypatch):
    from coprs.rollout import HFRolloutEngine

    calls, generate = [], HFRolloutEngine.generate
    monkeypatch.setattr(HFRolloutEngine, "setup", lambda self, policy: calls.append("setup"))
    monkeypatch.setattr(HFRolloutEngine, "generate",
                        lambda self, *a: calls.append("generate") or generate(self, *a))
    assert train(tmp_path / "w") == 0
    assert calls == ["setup", "generate", "generate"]  # the engine is set up once, first
    ckpt = tmp_path / "w" / "iter_4.pth"
    full = torch.load(ckpt, map_location="cpu", weights_only=True)  # no unsafe globals
    assert {"state_dict", "optimizer", "message_hub", "rng", "meta"} <= set(full)
    from coprs.plugins import seen_plugins
    from coprs.utils import source_version

    assert full["meta"]["coprs_version"] == source_version()  # what built the run
    assert full["meta"]["coprs_plugins"] == {p.name: f"{p.dist} {p.version}"
                                             for p in seen_plugins() if p.status == "loaded"}
    assert (tmp_path / "w" / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    assert (tmp_path / "w" / "reference_policy.pth").is_file()
    assert not list((tmp_path / "w").glob("*.tmp"))
    log = capsys.readouterr().out + "".join(p.read_text() for p in (tmp_path / "w").rglob("*.log"))
    assert "reward/mask" in log and "time/rollout" in log and "pg/clip_frac" in log
    # FreshLogProcessor: a GRPO line has no warm-up loss_lm (mmengine would repeat the last one)
    # (the run's .log: mmengine keeps one visualizer, and so one scalars.json, per process)
    lines = {i: next(x for x in log.splitlines() if f"Iter(train) [{i}/4]" in x) for i in range(1, 5)}
    assert all("loss_lm:" in lines[i] and "loss_pg:" not in lines[i] for i in (1, 2))
    assert all("loss_pg:" in lines[i] and "loss_lm:" not in lines[i] for i in (3, 4))
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
    resumed_log = sorted((tmp_path / "b").glob("*/*.log"))[-1].read_text()
    assert "every trainable tensor of the model is in it" in resumed_log
    # the resumed run's first line shows the keys the uninterrupted run's did, not every
    # value of the checkpoint's message hub (FreshLogProcessor)
    first = f"Iter(train) [{crash_at + 1}/{sft + grpo}]"
    keys = [set(re.findall(r"(\S+): ", next(x for x in log.splitlines() if first in x)))
            for log in (next((tmp_path / "a").glob("*/*.log")).read_text(), resumed_log)]
    assert keys[0] == keys[1]
    a, b = _state(tmp_path / "a" / last), _state(tmp_path / "b" / last)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)



def test_load_from_a_checkpoint_that_does_not_fit_is_reported_in_the_run_log(tmp_path, train):
    # e.g. a checkpoint of another assembly: mmengine would load it in part, reporting on stdout
    torch.save({"state_dict": {"prior.old_head.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    assert train(tmp_path / "w", f"load_from={tmp_path / 'other.pth'}", sft=1, grpo=1) == 0
    log = next((tmp_path / "w").glob("*/*.log")).read_text()
    assert "other.pth does not fit the model; mmengine loads it in part" in log
    assert "trainable parameters it lacks (they keep their initial values): policy." in log
    assert "1 keys the model does not have (ignored): prior.old_head.weight" in log


@HOOKS.register_module(force=True)
class _RecordOutputs(Hook):
    """Keeps every iteration's losses and rewards, by run name."""

    records: dict = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.records[name] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.records[self.name].append({k: float(torch.as_tensor(v).detach())
                                        for k, v in outputs.items()
                                        if k.startswith(("loss", "reward/", "adv/"))})


def test_micro_batched_run_equals_the_run_without(tmp_path, small_run):
    """``train_cfg.actor_micro_batch`` / ``experience_micro_batch`` (paper B.3: 2 and 8) change
    how many sequences each forward holds, not the training."""
    runs = {"whole": [], "micro": ["train_cfg.actor_micro_batch=1",
                                   "train_cfg.experience_micro_batch=1"]}
    for name, extra in runs.items():
        cfg = Config.fromfile(str(TINY_CONFIG))
        cfg.custom_hooks.append(dict(type="_RecordOutputs", name=name))
        cfg.dump(str(tmp_path / f"{name}.py"))
        assert main(["train", str(tmp_path / f"{name}.py"), "--work-dir", str(tmp_path / name),
                     "--cfg-options", "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2",
                     *small_run, *extra]) == 0
    whole, micro = _RecordOutputs.records["whole"], _RecordOutputs.records["micro"]
    assert "reward/mask" in whole[2] and "loss_kl" in whole[3]
    for it, (a, b) in enumerate(zip(whole, micro)):
        assert a.keys() == b.keys()
        for k in a:  # the policy-gradient loss (and the sum) are left out: see below
            if k not in ("loss", "loss_pg"):
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (it, k)
    # the warm-up's weights agree to float rounding
    a, b = _state(tmp_path / "whole" / "iter_2.pth"), _state(tmp_path / "micro" / "iter_2.pth")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # GRPO's: the random tiny policy's rollouts get rewards a few 1e-6 apart, which the group
    # normalisation turns into advantages of ±0.7 whose sign float rounding can flip
    # (the loss_pg left out above); the exact equality of the step is tests/models/test_micro_batch
    a, b = _state(tmp_path / "whole" / "iter_4.pth"), _state(tmp_path / "micro" / "iter_4.pth")
    fresh = _state(tmp_path / "whole" / "iter_2.pth")
    assert sum(not torch.equal(fresh[k], a[k]) for k in a) > 10
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-3, msg=k)


def test_rollout_log_holds_every_logged_rollout_with_its_reward_and_advantage(tmp_path,
                                                                            small_run):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.custom_hooks.append(dict(type="_RecordOutputs", name="rollout_log"))
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=3",
                 "train_cfg.rollout_log_interval=2", "train_cfg.rollout_log_panels=True",
                 f"visualizer.name=vis_{tmp_path.name}", *small_run]) == 0
    lines = [json.loads(x) for x in (tmp_path / "w" / "rollouts.jsonl").read_text().splitlines()]
    # GRPO iterations 2-4 of the run; every second one from the first: 2 and 4; 2 prompts x 2
    assert [x["iter"] for x in lines] == [2] * 4 + [4] * 4
    assert {"sample_id", "instruction", "response", "tokens", "reward/mask", "reward/format",
            "advantage"} <= set(lines[0])
    records = _RecordOutputs.records["rollout_log"]
    for it in (2, 4):
        group = [x for x in lines if x["iter"] == it]
        assert sum(x["reward"] for x in group) / 4 == pytest.approx(
            records[it - 1]["reward/total"], abs=1e-6)
        for x in group:  # the reward is the configured weighted sum of its parts
            assert x["reward"] == pytest.approx(0.7 * x["reward/mask"] + 0.3 * x["reward/format"],
                                                abs=1e-6)
        for k in (0, 2):  # advantages are centred within each group
            assert group[k]["advantage"] + group[k + 1]["advantage"] == pytest.approx(0, abs=1e-5)
    assert "adv/zero_group_frac" in records[1] and 0 <= records[1]["adv/zero_group_frac"] <= 1
    # rollout_log_panels: the first prompt's best and worst rollouts at the same iterations
    first = lines[0]["sample_id"].replace("/", "_")
    panels = sorted(p.name for p in (tmp_path / "w").rglob("vis_image/rollouts_*.png"))
    assert panels == [f"rollouts_{first}_2.png", f"rollouts_{lines[4]['sample_id']}_4.png"
                      .replace("/", "_")]
    with Image.open(next((tmp_path / "w").rglob("vis_image/rollouts_*.png"))) as im:
        assert im.height > im.width / 2  # two panels stacked


class _LengthReward(BaseReward):
    """Rewards a response by its length: rollouts of a group differ (a mask reward of the random
    tiny policy barely does)."""

    name = "length"

    def __call__(self, responses, pred_probs=None, gt=None, valid=None):
        return torch.tensor([len(r) / 100 for r in responses])


REWARDS.register_module(module=_LengthReward, force=True)


class _NaNOnceReward(BaseReward):
    """The length reward, except NaN for every rollout of the first GRPO iteration (a buggy
    reward plugin). Its first call is the loop's dry run on a dummy batch, before training."""

    name = "nan_once"
    calls = 0

    def __call__(self, responses, pred_probs=None, gt=None, valid=None):
        type(self).calls += 1
        value = float("nan") if type(self).calls == 2 else 0.0
        return torch.tensor([value + len(r) / 100 for r in responses])


REWARDS.register_module(module=_NaNOnceReward, force=True)


def test_a_nonfinite_reward_skips_the_step_names_the_term_and_training_goes_on(tmp_path,
                                                                              small_run):
    _NaNOnceReward.calls = 0
    cfg = Config.fromfile(str(TINY_CONFIG))
    # a single reward, not a WeightedSumReward: it counts with weight 1 under its own name
    cfg.train_cfg.reward = dict(type="_NaNOnceReward")
    cfg.custom_hooks.append(dict(type="_RecordOutputs", name="nan_reward"))
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=2",
                 *small_run]) == 0
    # iteration 2 (the first GRPO one) changed no weight; iteration 3 learnt again
    one, two, three = (_state(tmp_path / "w" / f"iter_{i}.pth") for i in (1, 2, 3))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(two[k], three[k]) for k in two)
    log = next((tmp_path / "w").glob("*/*.log")).read_text()
    assert ("iteration 2: non-finite reward for 4 of 4 rollouts (terms: nan_once); update "
            "skipped") in log
    records = _RecordOutputs.records["nan_reward"]
    assert "reward/nan_once" not in records[1] and records[2]["reward/nan_once"] > 0


@pytest.mark.parametrize("scale", [True, False])
def test_advantages_are_centred_and_scaled_by_the_group_std_unless_switched_off(tmp_path,
                                                                                small_run, scale):
    """``train_cfg.scale_advantages=False`` (Dr. GRPO): reward minus the group's mean; True (the
    paper): divided by the group's (unbiased) std too."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.train_cfg.reward = dict(type="WeightedSumReward",
                                rewards=[dict(reward=dict(type="_LengthReward"), weight=1.0)])
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=2",
                 f"train_cfg.scale_advantages={scale}", "train_cfg.rollout_log_interval=1",
                 "train_cfg.rollout_engine.temperature=3.0", *small_run]) == 0
    lines = [json.loads(x) for x in (tmp_path / "w" / "rollouts.jsonl").read_text().splitlines()]
    assert len(lines) == 8  # 2 iterations x 2 prompts x 2 rollouts
    spread = 0
    for a, b in zip(lines[::2], lines[1::2]):
        assert (a["sample_id"], a["iter"]) == (b["sample_id"], b["iter"])
        diff = a["reward"] - b["reward"]
        if abs(diff) <= 1e-6:  # a flat group gets exactly 0
            assert a["advantage"] == b["advantage"] == 0
            continue
        spread += 1
        # two rewards: centred ±diff/2; their unbiased std is |diff|/√2
        want = diff / 2 / (abs(diff) / 2 ** 0.5 + 1e-6) if scale else diff / 2
        assert a["advantage"] == pytest.approx(want, rel=1e-4)
        assert b["advantage"] == pytest.approx(-want, rel=1e-4)
    assert spread > 0


def test_progress_bar_counts_the_iterations_and_names_the_stage(tmp_path, train, capsys):
    """``TrainProgressBarHook`` (the schedules' ``default_hooks.progress_bar``): off when stderr
    is not a terminal (as under pytest), shown with ``disable=False``."""
    assert train(tmp_path / "quiet", sft=1, grpo=1) == 0
    assert "train (grpo)" not in capsys.readouterr().err
    assert train(tmp_path / "w", "default_hooks.progress_bar.disable=False", sft=2, grpo=2) == 0
    err = capsys.readouterr().err
    assert "train (sft)" in err and "train (grpo)" in err and "4/4" in err
    assert "reward/mask=" in err  # the GRPO iterations' value after the bar


def test_a_micro_batch_that_splits_groups_unevenly_fails_before_training(tmp_path, train,
                                                                        capsys):
    assert train(tmp_path / "w", "train_cfg.actor_micro_batch=3") == 2
    assert "actor_micro_batch=3 is not a multiple of group_size=2" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # no runner was built


@pytest.mark.parametrize("config", ["lisa/lisa_tiny_shapes_cpu.py",
                                    "segzero/segzero_tiny_shapes_cpu.py"])
def test_other_paradigms_validate_with_their_own_gold_responses(tmp_path, small_run, config):
    """The LISA-style and Seg-Zero-style tiny configs inherit the synthetic world's validation;
    it teacher-forces their own gold responses (``val_cfg.gold_key``): with CoPRS's, every
    response would be malformed for their parsers and the format rate 0."""
    path = TINY_CONFIG.parents[1] / config
    assert main(["train", str(path), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=1",
                 f"visualizer.name=vis_{tmp_path.name}", *small_run]) == 0
    scalars = [json.loads(x) for x in next((tmp_path / "w").rglob("scalars.json")).open()]
    val = [x for x in scalars if "shapes/val/gIoU" in x]
    assert [x["step"] for x in val] == [2]  # at the end (val_interval is sft_iters // 2 = 1,500)
    assert val[0]["shapes/val/n"] == 2 and val[0]["shapes/val/format_rate"] == 1.0

def test_missing_weight_path_fails_before_compute(capsys):
    cfg = "configs/coprs/coprs_qwen2.5-vl-3b_sam-vit-h_refcoco.py"
    Path(cfg).is_file() or pytest.fail("config missing")
    rc = main(["train", cfg, "--cfg-options", "model.policy.model_path=/nowhere/qwen"])
    assert rc == 2
    assert "model.policy.model_path '/nowhere/qwen' does not exist" in capsys.readouterr().err


def test_weight_files_are_read_before_compute_and_errors_are_one_line(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr("mmengine.runner.Runner.from_cfg",
                        lambda cfg: pytest.fail("built a runner"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    (tmp_path / "folder").mkdir()
    cases = [
        (f"model.decoder.sam_checkpoint={tmp_path / 'garbage.pth'}",
         f"model.decoder.sam_checkpoint '{tmp_path / 'garbage.pth'}' is not a checkpoint "
         "(torch.save writes a zip archive or a pickle, and this file is neither); give the "
         "weights file (.pth) torch.save wrote"),
        (f"model.vision_backbone.checkpoint={tmp_path / 'folder'}",
         "is a folder; give the checkpoint file (.pth) in it"),
        (f"model.policy.model_path={tmp_path / 'garbage.pth'}", "is a file; give the folder"),
    ]
    for option, message in cases:
        assert main(["train", str(TINY_CONFIG), "--cfg-options", option]) == 2, option
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "weights_only=False" not in err


def test_the_backbone_names_an_unreadable_sam_checkpoint_in_one_line(tmp_path):
    from coprs.backbones.sam_vit import load_sam_state

    (tmp_path / "sam.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError) as exc:
        load_sam_state(tmp_path / "sam.pth", "image_encoder.")
    assert str(exc.value).startswith(f"cannot read SAM checkpoint '{tmp_path / 'sam.pth'}'")
    assert "\n" not in str(exc.value) and "weights_only=False" not in str(exc.value)


def test_a_tiny_policy_with_a_model_path_is_an_error_not_a_silent_choice(tmp_path):
    from coprs.policies.qwen2_5_vl import Qwen25VLPolicy

    with pytest.raises(ValueError, match="model.policy.tiny=None"):
        Qwen25VLPolicy(tiny=dict(seed=0, vocab_size=1024, corpus="shapes"),
                       model_path=str(tmp_path))


def test_a_start_checkpoint_that_cannot_be_read_safely_fails_before_compute(tmp_path, capsys,
                                                                              monkeypatch):
    from mmengine.logging import HistoryBuffer

    # mmengine's own state (what plain mmengine saves): torch's safe unpickler refuses it
    torch.save({"meta": {"iter": 1}, "state_dict": {},
                "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}}, tmp_path / "mm.pth")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 half a checkpoint")
    monkeypatch.setattr("mmengine.runner.Runner.from_cfg",
                        lambda cfg: pytest.fail("built a runner"))
    work = tmp_path / "w"
    cases = [
        (["--resume", str(tmp_path / "mm.pth")],
         f"--resume '{tmp_path / 'mm.pth'}' cannot be read with torch.load(weights_only=True) "
         "(Unsupported global: GLOBAL mmengine.logging.history_buffer.HistoryBuffer"),
        (["--cfg-options", f"load_from={tmp_path / 'absent.pth'}"],
         f"load_from '{tmp_path / 'absent.pth'}' does not exist; give a local checkpoint file"),
        (["--cfg-options", f"load_from={tmp_path / 'cut.pth'}"],
         f"load_from '{tmp_path / 'cut.pth'}' is a truncated or damaged zip archive"),
    ]
    work.mkdir()
    (work / "last_checkpoint").write_text(str(tmp_path / "cut.pth"))
    cases.append((["--resume"], f"--resume ({work / 'last_checkpoint'}) '{tmp_path / 'cut.pth'}' "
                                "is a truncated or damaged zip archive"))
    for extra, message in cases:
        assert main(["train", str(TINY_CONFIG), "--work-dir", str(work), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "weights_only=False" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_resume_finds_the_checkpoint_and_the_grpo_reference_before_compute(tmp_path, capsys,
                                                                           monkeypatch):
    """--resume takes a work dir as well as a file, follows a moved work dir's last_checkpoint,
    brings the GRPO reference snapshot along to a new work dir, and says so (or what is missing)
    before a runner is built."""
    import types

    built = []
    monkeypatch.setattr("mmengine.runner.Runner.from_cfg", lambda cfg: built.append(cfg) or
                        types.SimpleNamespace(train=lambda: None))
    stages = ["--cfg-options", "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2"]
    old = tmp_path / "old"  # a run in GRPO at iteration 3 (stages: 2 warm-up + 2 GRPO)
    old.mkdir()
    torch.save({"meta": {"iter": 3}, "state_dict": {}, "message_hub": {}}, old / "iter_3.pth")
    (old / "last_checkpoint").write_text(str(tmp_path / "moved_away" / "iter_3.pth"))

    def train(work, *extra):
        return main(["train", str(TINY_CONFIG), "--work-dir", str(work), *extra, *stages])

    # no reference snapshot anywhere: an error naming both places, no runner
    assert train(tmp_path / "new", "--resume", str(old)) == 2
    err = capsys.readouterr().err
    assert "inside the GRPO stage that started at 2" in err and "reference_policy.pth" in err
    assert str(old / "reference_policy.pth") in err and not built
    # a work dir (whose pointer names a path that moved): its checkpoint; the snapshot beside it
    # is copied into the new work dir
    torch.save({"w": torch.ones(2)}, old / "reference_policy.pth")
    assert train(tmp_path / "new", "--resume", str(old)) == 0
    assert built[-1].load_from == str(old / "iter_3.pth") and built[-1].resume
    assert torch.equal(torch.load(tmp_path / "new" / "reference_policy.pth",
                                  weights_only=True)["w"], torch.ones(2))
    assert "copied the GRPO reference policy snapshot" in capsys.readouterr().err
    # a snapshot that cannot be read: one line naming it
    (tmp_path / "new" / "reference_policy.pth").write_bytes(b"PK\x03\x04 cut")
    assert train(tmp_path / "new", "--resume", str(old / "iter_3.pth")) == 2
    err = capsys.readouterr().err.strip()
    assert "the GRPO reference policy snapshot" in err and len(err.splitlines()) == 1
    # weights without a training state (a published file, a reference snapshot): load_from
    assert train(tmp_path / "new", "--resume", str(old / "reference_policy.pth")) == 2
    err = capsys.readouterr().err
    assert "holds no training state (no state_dict, message_hub, meta)" in err
    assert f"load_from={old / 'reference_policy.pth'}" in err
    # LoRA adapters in the file but not in the config (or the other way round)
    torch.save({"meta": {"iter": 1}, "message_hub": {},
                "state_dict": {"policy.model.q_proj.lora_A.default.weight": torch.zeros(1)}},
               tmp_path / "lora.pth")
    assert train(tmp_path / "new", "--resume", str(tmp_path / "lora.pth")) == 2
    assert "was trained with LoRA adapters and the config has no model.policy.lora" in (
        capsys.readouterr().err)
    # load_from a training work dir: its newest checkpoint, as for --resume and --checkpoint
    assert train(tmp_path / "fresh", "--cfg-options", f"load_from={old}") == 0
    assert built[-1].load_from == str(old / "iter_3.pth") and not built[-1].resume
    # --resume in a work dir with nothing to resume: said, then a fresh start
    assert train(tmp_path / "empty", "--resume") == 0
    assert "no last_checkpoint in the work dir" in capsys.readouterr().err
    assert built[-1].load_from is None


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
                 "train_cfg.val_interval=2", *small_run]) == 0
    events = list((tmp_path / "w").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent)).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "loss_seg", "lr", "reward/mask", "reward/format", "kl_ref"} <= tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("reward/mask")] == [3, 4]  # the GRPO iterations
    assert [e.step for e in acc.Scalars("shapes/val/gIoU")] == [2, 4]  # every val_interval


def test_validation_during_training_logs_keeps_best_and_changes_nothing(tmp_path, train, capsys):
    """``val_cfg`` (ReasonSegValLoop, gold reasoning on `val` in the tiny config) runs every
    ``val_interval`` iterations and at the end; its gIoU is logged, ``save_best`` keeps the best
    checkpoint, and the trained weights equal those of a run without validation."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    assert cfg.val_cfg.type == "ReasonSegValLoop" and cfg.val_cfg.datasets[0].split == "val"
    # (a visualizer of its own: mmengine reuses an instance of the same name, and its folder)
    assert train(tmp_path / "v", "train_cfg.val_interval=1", f"visualizer.name=vis_{tmp_path.name}",
                 "default_hooks.checkpoint.save_best=shapes/val/gIoU",
                 "default_hooks.checkpoint.rule=greater", "val_cfg.vis_samples=1",
                 sft=2, grpo=1) == 0
    # vis_samples: the first sample's panel at every validation, through the visualizer
    panels = sorted(p.name for p in (tmp_path / "v").rglob("vis_image/shapes_*.png"))
    assert [p.rsplit("_", 1)[1] for p in panels] == ["1.png", "2.png", "3.png"]
    assert len({p.rsplit("_", 1)[0] for p in panels}) == 1 and panels[0].startswith("shapes_val_")
    with Image.open(next((tmp_path / "v").rglob("vis_image/shapes_*.png"))) as im:
        assert im.size[0] > 3 * im.size[1]  # image | heatmap | mask | response
    log = capsys.readouterr().out
    assert log.count("shapes/val (gold reasoning): gIoU=") == 3  # iterations 1, 2 and 3
    scalars = [json.loads(x) for x in next((tmp_path / "v").rglob("scalars.json")).open()]
    val = [x for x in scalars if "shapes/val/gIoU" in x]
    assert [x["step"] for x in val] == [1, 2, 3]
    assert all(0 <= x["shapes/val/gIoU"] <= 1 and x["shapes/val/n"] == 2 for x in val)
    best = list((tmp_path / "v").glob("best_shapes_val_gIoU_iter_*.pth"))
    assert len(best) == 1
    step = int(best[0].stem.rsplit("_", 1)[1])
    assert val[step - 1]["shapes/val/gIoU"] == max(x["shapes/val/gIoU"] for x in val)

    drop_validation(cfg)
    cfg.dump(str(tmp_path / "no_val.py"))
    assert main(["train", str(tmp_path / "no_val.py"), "--work-dir", str(tmp_path / "n"),
                 "--cfg-options", "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=1",
                 *[o for o in SMALL_RUN if not o.startswith("val_cfg")],
                 f"model.feature_cache.root={tmp_path / 'cache'}"]) == 0
    assert "gIoU=" not in capsys.readouterr().out
    a, b = _state(tmp_path / "v" / "iter_3.pth"), _state(tmp_path / "n" / "iter_3.pth")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@HOOKS.register_module(force=True)
class _RecordBatches(Hook):
    """Keeps, by run name, each iteration's sample ids as the loader gave them and as the step
    used them, and what the iteration logged about over-long prompts."""

    records: dict = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.records[name] = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.records[self.name].append(
            {"given": [s["sample_id"] for s in data_batch["data_samples"]]})

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.records[self.name][-1].update(
            used=[s["sample_id"] for s in data_batch["data_samples"]],
            logged={k: float(torch.as_tensor(v).detach()) for k, v in outputs.items()
                    if k in ("data/overlong_dropped", "overlong_step", "loss")})


def _first_prompt_lengths(policy, n: int) -> dict[str, int]:
    """Prompt lengths of the tiny config's first ``n`` training scenes, by sample id (the
    loader's order with ``train_dataloader.sampler.shuffle=False``)."""
    from coprs.registry import DATASETS

    dataset = DATASETS.build(Config.fromfile(str(TINY_CONFIG)).train_dataloader.dataset)
    lengths = {}
    for i in range(n):
        item = dataset[i]
        sample = item["data_samples"]
        lengths[sample["sample_id"]] = policy.prompt_length(*item["inputs"].shape[:2],
                                                            sample["instruction"])
    return lengths


def _train_capped(tmp_path, small_run, name: str, cap: int, sft: int, grpo: int) -> list[dict]:
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.custom_hooks.append(dict(type="_RecordBatches", name=name))
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", f"train_cfg.stages.0.iters={sft}",
                 f"train_cfg.stages.1.iters={grpo}", "train_dataloader.sampler.shuffle=False",
                 f"model.policy.max_prompt_tokens={cap}", f"visualizer.name=vis_{tmp_path.name}",
                 *small_run]) == 0
    return _RecordBatches.records[name]


def test_prompts_over_the_cap_are_dropped_named_and_counted_and_training_goes_on(
        tmp_path, small_run, tiny_segmentor):
    """``model.policy.max_prompt_tokens`` (paper B.3: 1300): in the warm-up and in GRPO, the
    samples whose prompt is longer leave the batch before any compute, with a warning naming
    them; the others train. A step left empty (here the first GRPO one) is skipped."""
    lengths = _first_prompt_lengths(tiny_segmentor.policy, 8)
    ids = list(lengths)
    steps = [ids[i:i + 2] for i in range(0, 8, 2)]  # batch 2: 2 warm-up, then 2 GRPO steps

    def dropped(cap):
        return [[i for i in step if lengths[i] > cap] for step in steps]

    # a cap under which a warm-up step and the second GRPO step keep one sample of two, and
    # the first GRPO step none
    cap = next((c for c in sorted(set(lengths.values()))
                if any(len(o) == 1 for o in dropped(c)[:2])
                and [len(o) for o in dropped(c)[2:]] == [2, 1]), None)
    assert cap is not None, f"the first training scenes' prompt lengths {lengths} offer no such cap"
    over = dropped(cap)
    records = _train_capped(tmp_path, small_run, "overlong", cap, sft=2, grpo=2)
    assert [r["given"] for r in records] == steps
    assert [r["used"] for r in records] == [[i for i in s if i not in o]
                                            for s, o in zip(steps, over)]
    running = [sum(len(o) for o in over[:k + 1]) for k in range(4)]
    assert [r["logged"]["data/overlong_dropped"] for r in records] == running
    assert [("loss" in r["logged"], "overlong_step" in r["logged"]) for r in records] == [
        (True, False), (True, False), (False, True), (True, False)]
    log = next((tmp_path / "w").glob("*/*.log")).read_text()
    for it, drop in enumerate(over, 1):
        named = ", ".join(f"{i} ({lengths[i]} tokens)" for i in drop)
        message = (f"iteration {it}: dropped {len(drop)} of 2 samples whose prompt is longer "
                   f"than model.policy.max_prompt_tokens={cap}: {named}. To train on them, raise "
                   "model.policy.max_prompt_tokens or lower model.policy.max_pixels")
        assert (message in log) == bool(drop), message
    assert (f"iteration 3: the batch has no sample with a prompt within model.policy."
            f"max_prompt_tokens={cap}; step skipped") in log
    scalars = [json.loads(x) for x in next((tmp_path / "w").rglob("scalars.json")).open()]
    assert [x["data/overlong_dropped"] for x in scalars if "data/overlong_dropped" in x] == running
    # the warm-up learnt, the empty step changed nothing, GRPO learnt from the sample it kept
    # (its reference: the policy at the start of GRPO, made at the skipped step)
    states = [_state(tmp_path / "w" / f"iter_{i}.pth") for i in (1, 2, 3, 4)]
    assert sum(not torch.equal(states[0][k], states[1][k]) for k in states[0]) > 10
    assert all(torch.equal(states[1][k], states[2][k]) for k in states[0])
    assert sum(not torch.equal(states[2][k], states[3][k]) for k in states[0]) > 10
    reference = torch.load(tmp_path / "w" / "reference_policy.pth", weights_only=True)
    assert all(torch.equal(v, states[1][f"policy.model.{k}"]) for k, v in reference.items())


def test_a_batch_with_every_prompt_over_the_cap_is_skipped_and_evaluation_keeps_every_sample(
        tmp_path, small_run):
    records = _train_capped(tmp_path, small_run, "all_overlong", cap=1, sft=1, grpo=1)
    assert [r["used"] for r in records] == [[], []]
    assert [r["logged"] for r in records] == [
        {"overlong_step": 1.0, "data/overlong_dropped": 2.0},
        {"overlong_step": 1.0, "data/overlong_dropped": 4.0}]
    log = next((tmp_path / "w").glob("*/*.log")).read_text()
    for it in (1, 2):
        assert (f"iteration {it}: the batch has no sample with a prompt within model.policy."
                "max_prompt_tokens=1; step skipped") in log
    assert "non-finite" not in log
    # no update: the weights are those of the start, and the optimiser never stepped
    a, b = (torch.load(tmp_path / "w" / f"iter_{i}.pth", weights_only=True) for i in (1, 2))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["optimizer"]["state"] == b["optimizer"]["state"] == {}
    # validation at the end is not filtered: it scores every sample
    scalars = [json.loads(x) for x in next((tmp_path / "w").rglob("scalars.json")).open()]
    assert [x["shapes/val/n"] for x in scalars if "shapes/val/n" in x] == [2]


def _warm_up_configs(tmp_path, iters: int, crash_at: int) -> None:
    """``tmp_path/cfg.py``: the tiny config as ``iters`` warm-up iterations without validation;
    ``tmp_path/crashing.py``: the same, killed after the checkpoint of iteration ``crash_at``."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.train_cfg.stages = [dict(kind="sft", iters=iters)]
    drop_validation(cfg)
    cfg.train_cfg.pop("val_interval", None)
    cfg.dump(str(tmp_path / "cfg.py"))
    cfg.custom_hooks.append(dict(type="_StopAt", at=crash_at))
    cfg.dump(str(tmp_path / "crashing.py"))


def test_accumulation_windows_follow_the_iterations_across_skipped_steps_and_a_resume(
        tmp_path, small_run, tiny_segmentor):
    """``optim_wrapper.accumulative_counts=2`` with a step skipped for over-long prompts: the
    skipped step counts in its window, so a run killed at a window's end and resumed ends
    with the uninterrupted run's parameters, and the last window's gradients are applied."""
    lengths = _first_prompt_lengths(tiny_segmentor.policy, 12)
    ids = list(lengths)
    steps = [ids[i:i + 2] for i in range(0, 12, 2)]  # 6 warm-up steps of 2 samples
    # a cap under which the third step (and only it) has no sample left
    cap = next((c for c in sorted(set(lengths.values()))
                if [all(lengths[i] > c for i in s) for s in steps] == [k == 2 for k in range(6)]),
               None)
    assert cap is not None, f"the first training scenes' prompt lengths {lengths} offer no such cap"
    _warm_up_configs(tmp_path, iters=6, crash_at=4)
    opts = ["--cfg-options", "train_dataloader.sampler.shuffle=False",
            "optim_wrapper.accumulative_counts=2", f"model.policy.max_prompt_tokens={cap}",
            *[o for o in small_run if not o.startswith("val_cfg")]]
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "a"),
                 *opts]) == 0
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(tmp_path / "crashing.py"), "--work-dir", str(tmp_path / "b"), *opts])
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "b"),
                 "--resume", *opts]) == 0
    a = {i: _state(tmp_path / "a" / f"iter_{i}.pth") for i in (3, 4, 5, 6)}
    b = _state(tmp_path / "b" / "iter_6.pth")
    for k in b:
        torch.testing.assert_close(a[6][k], b[k], rtol=0, atol=0, msg=k)
    changed = {i: sum(not torch.equal(a[i - 1][k], a[i][k]) for k in b) for i in (4, 5, 6)}
    assert changed[4] > 10 and changed[5] == 0 and changed[6] > 10, changed  # steps at 4 and 6


def test_run_resumed_inside_an_accumulation_window_equals_uninterrupted(tmp_path, small_run):
    """``accumulative_counts=2``, killed after the first iteration of a window (iteration 3):
    the checkpoint keeps that iteration's gradients, the resumed window steps with both
    iterations' gradients, and the run ends with the uninterrupted run's parameters."""
    _warm_up_configs(tmp_path, iters=4, crash_at=3)
    opts = ["--cfg-options", "optim_wrapper.accumulative_counts=2",
            *[o for o in small_run if not o.startswith("val_cfg")]]
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "a"),
                 *opts]) == 0
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(tmp_path / "crashing.py"), "--work-dir", str(tmp_path / "b"), *opts])
    mid = torch.load(tmp_path / "b" / "iter_3.pth", map_location="cpu", weights_only=True)
    assert mid["coprs_window_grads"] and all(
        bool(g.any()) for k, g in mid["coprs_window_grads"].items() if k.startswith("prior."))
    window_end = torch.load(tmp_path / "b" / "iter_2.pth", map_location="cpu", weights_only=True)
    assert "coprs_window_grads" not in window_end  # stepped and zeroed
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "b"),
                 "--resume", *opts]) == 0
    log = sorted((tmp_path / "b").glob("*/*.log"))[-1].read_text()
    assert "resumed inside a gradient-accumulation window" in log
    assert "gradient of some iterations is lost" not in log
    a, b = _state(tmp_path / "a" / "iter_4.pth"), _state(tmp_path / "b" / "iter_4.pth")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
