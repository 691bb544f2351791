"""Under LoRA the GRPO reference is the policy as GRPO began, without a second copy of the base:
the base with the adapters off while they are untrained, else the base with a snapshot of the
adapters (after a warm-up stage, or from a LoRA checkpoint), kept for a resume."""

import torch
from mmengine.config import Config

from coprs.cli import main
from coprs.engine import drop_validation
from coprs.policies.adapters import is_adapter_weight

from ..conftest import TINY_CONFIG, kl_ref  # noqa: TID252

SNAPSHOT = "copy of the adapters at the start of GRPO"


def _train(tmp_path, small_run, name, stages, *extra, resume=None):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.policy.lora = dict(r=2, alpha=4, target_modules=["q_proj"])
    cfg.train_cfg.stages = stages
    drop_validation(cfg)
    cfg.train_cfg.pop("val_interval", None)
    path = tmp_path / f"{name}.py"
    cfg.dump(str(path))
    work = tmp_path / name
    opts = [o for o in small_run if not o.startswith("val_cfg")]
    args = ["train", str(path), "--work-dir", str(work)]
    if resume is not None:
        args += ["--resume", str(resume)]
    assert main([*args, "--cfg-options", *opts,
                 "train_cfg.rollout_engine.max_new_tokens=4", *extra]) == 0
    log = "".join(p.read_text() for p in work.glob("*/*.log"))
    assert "loss_kl" in log  # the KL term (and so its reference) was used
    return work, log


def _adapters(path):
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("policy.model."): v for k, v in state.items() if is_adapter_weight(k)}


def test_lora_reference_is_the_policy_as_grpo_began(tmp_path, small_run):
    grpo = dict(kind="grpo", iters=1, batch_size=1)
    # after a warm-up: the adapters as the warm-up left them, saved for a resume
    work, log = _train(tmp_path, small_run, "warm", [dict(kind="sft", iters=2), grpo])
    snapshot = torch.load(work / "reference_policy.pth", weights_only=True)
    warmed = _adapters(work / "iter_2.pth")
    assert snapshot.keys() == warmed.keys() and any("lora_B" in k for k in snapshot)
    assert any("trainable_tokens_delta" in k for k in snapshot)  # the added tokens' rows
    for k, v in warmed.items():
        torch.testing.assert_close(snapshot[k], v, rtol=0, atol=0, msg=k)
    assert any(bool(v.any()) for k, v in snapshot.items() if "lora_B" in k)  # trained
    assert f"{SNAPSHOT} (trained in the 2-iteration warm-up before it)" in log
    assert "model.policy.lora.dropout" not in log  # the default, 0: nothing to say
    # fresh adapters: the base with the adapters off is the policy at the start; nothing kept
    # (lora_B zero: LoRA dropout thins nothing yet, but it is said before GRPO starts)
    fresh, log = _train(tmp_path, small_run, "fresh", [grpo], "model.policy.lora.dropout=0.1")
    assert torch.load(fresh / "reference_policy.pth", weights_only=True) == {}
    assert SNAPSHOT not in log
    assert ("model.policy.lora.dropout=0.1: the adapters' dropout is on in the actor forward "
            "and off in the rollouts") in log
    assert kl_ref(log, 1, 1) == 0
    # from a LoRA checkpoint with large trained adapters: the KL to the reference starts at 0,
    # where the base (adapters off) is far from the policy
    state = torch.load(work / "iter_3.pth", map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for k, v in state["state_dict"].items():
        if ".lora_B" in k:
            v.copy_(torch.randn(v.shape, generator=generator))
    torch.save({"state_dict": state["state_dict"]}, tmp_path / "large.pth")
    loaded, log = _train(tmp_path, small_run, "loaded", [grpo],
                         f"load_from={tmp_path / 'large.pth'}")
    assert f"{SNAPSHOT} (loaded trained)" in log
    assert kl_ref(log, 1, 1) == 0


def test_lora_run_resumed_inside_grpo_keeps_its_reference(tmp_path, small_run):
    stages = [dict(kind="sft", iters=1), dict(kind="grpo", iters=2, batch_size=1)]
    whole, _ = _train(tmp_path, small_run, "whole", stages)
    # resumed after the first GRPO iteration into another work dir: the snapshot beside the
    # checkpoint is copied over and used, and the run ends where the uninterrupted one did
    resumed, _ = _train(tmp_path, small_run, "resumed", stages, resume=whole / "iter_2.pth")
    assert (resumed / "reference_policy.pth").is_file()
    a, b = _adapters(whole / "iter_3.pth"), _adapters(resumed / "iter_3.pth")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # a resume without the snapshot (a run from before adapter snapshots): adapters off, said
    (resumed / "reference_policy.pth").unlink()
    (whole / "reference_policy.pth").unlink()
    again, log = _train(tmp_path, small_run, "again", stages, resume=whole / "iter_2.pth")
    assert "LoRA GRPO resumed without" in log and "adapters off" in log
    assert (again / "iter_3.pth").is_file()
