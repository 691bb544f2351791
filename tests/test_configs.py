from pathlib import Path

import pytest
from mmengine.config import Config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(p for p in CONFIG_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_loads(path):
    cfg = Config.fromfile(str(path))
    if "_base_" not in path.parts:
        assert cfg.default_scope == "coprs"
        assert cfg.model.type == "ReasoningSegmentor"
    if cfg.get("train_cfg") is not None:  # micro-batches cut its GRPO groups evenly
        from coprs.engine.loops import check_train_cfg

        check_train_cfg(cfg.train_cfg)


def test_real_size_configs_point_at_local_weights():
    for path in CONFIG_DIR.glob("coprs/coprs_qwen2.5-vl-*.py"):
        cfg = Config.fromfile(str(path))
        assert not Path(cfg.model.policy.model_path).is_absolute()
        assert cfg.model.vision_backbone.checkpoint.endswith(".pth")
        assert cfg.model.policy.arch["text_config"]["hidden_size"] in (2048, 3584)


PARADIGMS = {  # prior -> (policy special token, prompt template, gold response key)
    "HeatmapPrior": ("<REF_POS>", "coprs", "response_coprs"),
    "LatentTokenPrior": ("<SEG>", "lisa", "response_lisa"),
    "TextCoordinatePrior": (None, "segzero", "response_segzero"),
}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/*_tiny_shapes_cpu.py")),
                         ids=lambda p: p.name)
def test_tiny_paradigm_configs_agree_with_their_prior(path):
    cfg = Config.fromfile(str(path))
    token, template, key = PARADIGMS[cfg.model.prior.type]
    assert cfg.model.policy.special_token == token
    assert cfg.model.policy.prompt_template == template
    assert cfg.train_cfg.response_key == key
    assert cfg.test_cfg.get("gold_key", "response_coprs") == key


def test_real_size_paradigm_configs_point_at_local_weights():
    for path in [*CONFIG_DIR.glob("lisa/*_refcoco.py"), *CONFIG_DIR.glob("segzero/*_refcoco.py")]:
        cfg = Config.fromfile(str(path))
        assert not Path(cfg.model.policy.model_path).is_absolute()
        assert cfg.model.decoder.sam_checkpoint.endswith(".pth")
        assert cfg.model.decoder.type == "SAMPromptDecoder"


@pytest.mark.parametrize("name", sorted(p.name for p in
                                         CONFIG_DIR.glob("coprs/coprs_tiny_shapes_cpu*.py")))
def test_tiny_main_job_schedules_follow_their_stages(name):
    """The scaled main jobs restate the schedule (a child config cannot re-derive it from its
    base's numbers): the cosine ends with the last stage, λ_d/λ_f change halfway through the
    warm-up and λ_SEG drops to 0 where GRPO starts."""
    cfg = Config.fromfile(str(CONFIG_DIR / "coprs" / name))
    sft, grpo = cfg.train_cfg.stages
    assert (sft.kind, grpo.kind) == ("sft", "grpo")
    (cosine,) = cfg.param_scheduler
    assert (cosine.begin, cosine.end) == (0, sft.iters + grpo.iters)
    (hook,) = [h for h in cfg.custom_hooks if h.type == "SegLossScheduleHook"]
    half, end = hook.milestones
    assert half.iter == sft.iters // 2 and (half.lambda_dice, half.lambda_focal) == (3.0, 10.0)
    assert end.iter == sft.iters and end.lambda_seg == 0.0
    assert cfg.work_dir == f"work_dirs/{name[:-3]}"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/*_reasonseg.py")),
                         ids=lambda p: p.name)
def test_reasonseg_configs_evaluate_the_refcoco_model(path):
    """Each ReasonSeg config builds the model its RefCOCO sibling trains (the loss, which has no
    weights, aside), so that run's checkpoint loads into it, and it only evaluates."""
    cfg = Config.fromfile(str(path))
    trained = Config.fromfile(str(path).replace("_reasonseg.py", "_refcoco.py"))
    assert "train_cfg" not in cfg and "optim_wrapper" not in cfg
    assert {d.type for d in cfg.test_cfg.datasets} == {"ReasonSegDataset"}
    assert sorted(d.split for d in cfg.test_cfg.datasets) == ["test", "val"]
    mine, theirs = cfg.model.to_dict(), trained.model.to_dict()
    mine.pop("seg_loss", None), theirs.pop("seg_loss", None)
    assert mine == theirs


def test_tiny_jsonl_config_trains_and_evaluates_your_own_lines(tmp_path, small_run, capsys):
    """configs/coprs/coprs_tiny_jsonl_cpu.py: the main job's model on JSON lines, pointed at a
    folder with the documented overrides."""
    import json
    import shutil

    from coprs.cli import main
    from coprs.testing.data_fixtures import make_jsonl_fixture

    root = tmp_path / "mine"
    make_jsonl_fixture(root)
    shutil.copy(root / "val.jsonl", root / "train.jsonl")
    config = str(CONFIG_DIR / "coprs" / "coprs_tiny_jsonl_cpu.py")
    where = [f"test_cfg.datasets.0.data_root={root}", f"val_cfg.datasets.0.data_root={root}",
             f"train_dataloader.dataset.data_root={root}"]
    # the training lines' bad ones (not JSON, a missing image, an empty instruction) are
    # dropped when the dataset is built; the warm-up reads the good lines' gold responses
    assert main(["train", config, "--work-dir", str(tmp_path / "w"), "--cfg-options", *where,
                 "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=1",
                 *(o for o in small_run if not o.startswith("val_cfg"))]) == 0
    assert (tmp_path / "w" / "iter_3.pth").is_file()
    assert main(["test", config, str(tmp_path / "w"), "--reasoning", "gold", "--out",
                 str(tmp_path / "r.json"), "--cfg-options", *where]) == 0
    res = json.loads((tmp_path / "r.json").read_text())["mine/val"]
    assert res["n"] == 3 and res["n_dropped_at_load"] == 3 and res["format_rate"] == 1.0


def test_lora_leaf_scales_the_paper_schedule_and_trains_only_adapters_at_their_rate():
    """The 2-GPU LoRA leaf keeps the paper's global batch through gradient accumulation, so
    every iteration count of the paper's schedule is multiplied by it; its optimiser groups put
    the adapters and the added tokens' rows (all the policy trains) at their own learning rate
    and the heads at the paper's."""
    import copy

    from coprs.models.counting import build_for_counting
    from coprs.policies.adapters import is_adapter_weight
    from coprs.registry import OPTIM_WRAPPER_CONSTRUCTORS

    lora = Config.fromfile(str(CONFIG_DIR / "coprs" /
                               "coprs_qwen2.5-vl-7b-lora_sam-vit-h_2xb2-125k_refcoco.py"))
    paper = Config.fromfile(str(CONFIG_DIR / "coprs" / "coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py"))
    n = lora.optim_wrapper.accumulative_counts
    assert n * 2 * lora.train_dataloader.batch_size == 16  # 2 GPUs: the paper's global batch
    assert lora.train_cfg.stages[0].iters == n * paper.train_cfg.stages[0].iters == 125000
    assert lora.param_scheduler[0].end == n * paper.param_scheduler[0].end
    [hook] = [h for h in lora.custom_hooks if h.type == "SegLossScheduleHook"]
    [paper_hook] = [h for h in paper.custom_hooks if h.type == "SegLossScheduleHook"]
    assert [m["iter"] for m in hook.milestones] == [n * m["iter"] for m in paper_hook.milestones]
    assert lora.default_hooks.checkpoint.interval % n == 0
    model = build_for_counting(lora.model)  # meta device: no weights
    wrapper_cfg = copy.deepcopy(lora.optim_wrapper)
    for key in ("dtype", "loss_scale"):  # AmpOptimWrapper needs a GPU; the groups do not
        wrapper_cfg.pop(key)
    wrapper_cfg.type = "OptimWrapper"
    wrapper = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type=wrapper_cfg.pop("constructor"), paramwise_cfg=wrapper_cfg.pop("paramwise_cfg"),
        optim_wrapper_cfg=wrapper_cfg))(model)
    names = {p: n for n, p in model.named_parameters()}
    lrs = {}
    for group in wrapper.optimizer.param_groups:
        for p in group["params"]:
            lrs[names[p]] = group["lr"]
    policy = {k: v for k, v in lrs.items() if k.startswith("policy.")}
    assert policy and all(is_adapter_weight(k, "default") for k in policy)
    assert any("trainable_tokens_delta" in k for k in policy)
    base = paper.optim_wrapper.optimizer.lr
    assert {round(v / base, 6) for v in policy.values()} == {12.5}
    assert {round(v / base, 6) for k, v in lrs.items() if k.startswith("prior.")} == {25.0}
