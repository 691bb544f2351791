"""Under LoRA the GRPO reference is the base policy with the adapters off: a run whose adapters
are trained before GRPO (a warm-up stage, a loaded LoRA checkpoint) is told so once."""

from pathlib import Path

from mmengine.config import Config

from coprs.cli import main
from coprs.engine import drop_validation

from ..conftest import TINY_CONFIG  # noqa: TID252

WARNING = "LoRA GRPO: the KL reference is the base model with the adapters off"


def _train(tmp_path, small_run, name, stages, *extra):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.policy.lora = dict(r=2, alpha=4, target_modules=["q_proj"])
    cfg.train_cfg.stages = stages
    drop_validation(cfg)
    cfg.train_cfg.pop("val_interval", None)
    path = tmp_path / f"{name}.py"
    cfg.dump(str(path))
    work = tmp_path / name
    opts = [o for o in small_run if not o.startswith("val_cfg")]
    assert main(["train", str(path), "--work-dir", str(work), "--cfg-options", *opts,
                 "default_hooks.checkpoint.interval=2",
                 "train_cfg.rollout_engine.max_new_tokens=4", *extra]) == 0
    log = "".join(p.read_text() for p in work.glob("*/*.log"))
    assert "loss_kl" in log  # the KL term (and so its reference) was used
    return work, log


def test_lora_reference_warning_after_a_warm_up_or_trained_adapters(tmp_path, small_run):
    grpo = dict(kind="grpo", iters=1, batch_size=1)
    work, log = _train(tmp_path, small_run, "warm", [dict(kind="sft", iters=1), grpo])
    assert log.count(WARNING) == 1 and "the 1-iteration warm-up before it" in log
    assert "coprs export-hf" in log and "model.rl.kl_coef" in log
    # GRPO alone from fresh adapters: the base is the policy at its start, nothing to say
    _, log = _train(tmp_path, small_run, "fresh", [dict(grpo, iters=2)])
    assert WARNING not in log
    # GRPO alone from a LoRA checkpoint whose adapters were trained: said
    _, log = _train(tmp_path, small_run, "loaded", [grpo], f"load_from={Path(work) / 'iter_2.pth'}")
    assert log.count(WARNING) == 1 and "nonzero lora_B" in log
