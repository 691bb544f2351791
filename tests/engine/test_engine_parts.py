import os
import re
import types

import pytest
import torch
import torch.nn as nn
from PIL import Image

from coprs.engine.hooks import AtomicLocalBackend, CheckpointMatchHook, SegLossScheduleHook
from coprs.engine.optim import GroupedOptimWrapperConstructor
from coprs.losses import SegmentationLoss
from coprs.models.segmentor import apply_update


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.prior = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)


def test_grouped_constructor_multipliers_tied_and_frozen():
    ctor = GroupedOptimWrapperConstructor(
        dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=0.1, weight_decay=0.01)),
        paramwise_cfg=dict(custom_keys={"prior": dict(lr_mult=25.0, decay_mult=0.0)}))
    wrapper = ctor(_Tied())
    groups = wrapper.optimizer.param_groups
    assert [len(g["params"]) for g in groups] == [1, 2]  # tied weight once; frozen left out
    assert groups[0]["lr"] == pytest.approx(0.1)
    assert groups[1]["lr"] == pytest.approx(2.5) and groups[1]["weight_decay"] == 0.0


def test_seg_loss_schedule_hook_switches_at_milestone():
    loss = SegmentationLoss()
    model = types.SimpleNamespace(seg_loss=loss)
    hook = SegLossScheduleHook([dict(iter=3, lambda_dice=3.0, lambda_focal=10.0)])
    for it, (d, f) in [(0, (1.5, 0.0)), (3, (3.0, 10.0)), (1, (1.5, 0.0)), (7, (3.0, 10.0))]:
        runner = types.SimpleNamespace(model=model, iter=it)
        hook.before_train_iter(runner, it)
        assert (loss.lambda_dice, loss.lambda_focal) == (d, f)


def test_atomic_backend_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    backend = AtomicLocalBackend()
    path = tmp_path / "latest.pth"
    backend.put(b"good", path)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        backend.put(b"partial", path)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


@pytest.mark.parametrize("train_cfg, message", [
    (dict(stages=[dict(kind="sft", iters=2, batchsize=2)]), "stages.0.batchsize is not a stage "
     "key (did you mean batch_size?)"),
    (dict(stages=[dict(kind="sft", iters=2), dict(kind="ppo", iters=1)]), "stages.1.kind='ppo'"),
    (dict(stages=[dict(kind="sft", iters=0)]), "stages.0.iters=0: need a whole number >= 1"),
    (dict(stages=[dict(kind="sft", iters=2.5)]), "stages.0.iters=2.5"),
    (dict(stages=[]), "train_cfg.stages is empty"),
    (dict(stages=[dict(kind="grpo", iters=2)], group_size=1), "group_size >= 2"),
    (dict(stages=[dict(kind="grpo", iters=2)], grup_size=4), "did you mean group_size?"),
    (dict(type="coprs.ReasoningSegTrainLoop", stages=[dict(kind="grpo", iters=2)],
          actor_micro_batch=3), "actor_micro_batch=3 does not divide group_size=8"),
    # 0 is no budget, not "the default" (that is None)
    (dict(stages=[dict(kind="grpo", iters=2)], rollout_engine=dict(
        type="HFRolloutEngine", max_new_tokens=0)), "rollout_engine.max_new_tokens=0"),
    (dict(stages=[dict(kind="grpo", iters=2)], rollout_engine=dict(
        max_new_tokens=8, min_new_tokens=9)), "min_new_tokens=9 exceeds max_new_tokens=8"),
    (dict(stages=[dict(kind="grpo", iters=2)], rollout_engine=dict(temperature=0.0)),
     "temperature=0.0: GRPO samples"),
])
def test_training_config_is_checked_before_anything_is_built(train_cfg, message):
    from coprs.engine.loops import check_train_cfg

    with pytest.raises(ValueError, match=re.escape(message)):
        check_train_cfg(train_cfg)
    check_train_cfg(dict(type="IterBasedTrainLoop", max_iters=3))  # another loop: its own checks


def test_a_nonfinite_loss_or_gradient_skips_the_update():
    from mmengine.optim import OptimWrapper

    w = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    wrapper = OptimWrapper(torch.optim.SGD([w], lr=0.5), clip_grad=dict(max_norm=1.0))
    out = apply_update((w * float("nan")).sum(), {}, wrapper)
    assert out["nonfinite_step"] == 1.0 and w.tolist() == [0.0, 1.0] and w.grad is None
    # a finite loss whose gradient is not (d sqrt(w)/dw at 0): clipping would spread the inf
    # into NaN weights; the step is skipped instead
    out = apply_update(torch.sqrt(w).sum(), {}, wrapper)
    assert out["nonfinite_step"] == 1.0 and w.tolist() == [0.0, 1.0]
    assert w.grad is None or not w.grad.any()
    out = apply_update((w ** 2).sum(), {}, wrapper)  # grad (0, 2), clipped to (0, 1)
    assert out["nonfinite_step"] == 0.0 and w.tolist() == pytest.approx([0.0, 0.5])
    # a disabled loss scaler (bf16 AmpOptimWrapper, loss_scale=dict(enabled=False)) leaves the
    # non-finite gradient check to coprs, as a plain wrapper does
    wrapper.loss_scaler = torch.amp.GradScaler("cpu", enabled=False)
    out = apply_update(torch.sqrt(w).sum(), {}, wrapper)  # finite loss, infinite gradient
    assert out["nonfinite_step"] == 1.0 and w.tolist() == pytest.approx([0.0, 0.5])


def test_fsdp_strategy_refuses_a_sharded_loss_scaler_with_a_fused_optimiser():
    """Under FSDP an enabled ``ShardedGradScaler`` that unscales for gradient clipping (as
    ``AmpOptimWrapper.step`` does) cannot step a fused AdamW (found on an H200, reproduced here
    on one gloo rank): refused before any compute, naming the settings that fix it. A disabled
    scaler (bf16), an unfused optimiser or no clipping pass."""
    import torch.distributed as dist
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    from coprs.engine.wrappers import check_scaler_and_fused

    w = torch.nn.Parameter(torch.ones(2))

    def wrapper(fused=True, enabled=True, clip=True):
        return types.SimpleNamespace(
            loss_scaler=ShardedGradScaler(device="cpu", enabled=enabled),
            optimizer=torch.optim.AdamW([w], fused=fused),
            clip_grad_kwargs=dict(max_norm=1.0) if clip else {})

    with pytest.raises(ValueError, match=r"loss_scale=dict\(enabled=False\).*fused=False"):
        check_scaler_and_fused(wrapper())
    for fine in (wrapper(enabled=False), wrapper(fused=False), wrapper(clip=False)):
        check_scaler_and_fused(fine)
    # outside FSDP (torch's plain GradScaler) the fused step works: nothing to refuse
    check_scaler_and_fused(types.SimpleNamespace(
        loss_scaler=torch.amp.GradScaler("cpu"), optimizer=torch.optim.AdamW([w], fused=True),
        clip_grad_kwargs=dict(max_norm=1.0)))

    # what is refused fails in torch: if torch steps it one day, the check can go
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        refused = wrapper()
        refused.loss_scaler.scale((w * 2).sum()).backward()
        refused.loss_scaler.unscale_(refused.optimizer)
        with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
            refused.loss_scaler.step(refused.optimizer)
    finally:
        dist.destroy_process_group()


def test_a_skipped_step_counts_in_gradient_accumulation_and_ends_its_window():
    """``optim_wrapper.accumulative_counts=2``: a step without a backward (over-long prompts,
    non-finite rewards or loss) counts as one, as a resumed run counts it (its iteration);
    when it ends a window, the gradients accumulated before it are applied, unless there are
    none or they are not finite."""
    from mmengine.optim import OptimWrapper

    from coprs.engine.loops import ReasoningSegTrainLoop

    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    wrapper = OptimWrapper(torch.optim.SGD([w], lr=0.5), accumulative_counts=2)
    wrapper.initialize_count_status(torch.nn.Linear(1, 1), 0, 4)
    warnings = []
    loop = ReasoningSegTrainLoop.__new__(ReasoningSegTrainLoop)
    loop._iter = 0
    loop._runner = types.SimpleNamespace(optim_wrapper=wrapper, model=torch.nn.Linear(1, 1),
                                         logger=types.SimpleNamespace(warning=warnings.append))
    loop._count_skipped_step()  # window 1 of 2, no gradient yet: counted, nothing stepped
    assert wrapper._inner_count == 1 and w.grad is None
    loop._count_skipped_step()  # ends window 1 with nothing accumulated: no step
    assert wrapper._inner_count == 2 and w.tolist() == [1.0, 1.0]
    apply_update((w * 2).sum(), {}, wrapper)  # window 2: half the gradient (2, 2), no step yet
    assert w.tolist() == [1.0, 1.0] and w.grad.tolist() == [1.0, 1.0]
    loop._iter = 3
    loop._count_skipped_step()  # the skipped last step applies it
    assert wrapper._inner_count == 4 and w.tolist() == [0.5, 0.5] and w.grad is None
    assert not warnings
    wrapper.initialize_count_status(torch.nn.Linear(1, 1), 0, 4)
    apply_update(torch.sqrt(w - 0.5).sum(), {}, wrapper)  # an infinite gradient, pending
    loop._count_skipped_step()
    assert w.tolist() == [0.5, 0.5] and w.grad is None  # dropped, not stepped on
    assert "gradients accumulated in it are dropped: they are not finite" in warnings[-1]
    assert warnings[-1].startswith("iteration 4: ")


def test_samples_dropped_on_every_rank_are_named_from_rank_0_and_counted(monkeypatch):
    """Two ranks (``mmengine.dist`` stood in for): rank 0 names the over-long samples of both
    ranks, and those cut to keep the ranks' batches equal, which ``data/equalised_dropped``
    counts; the other ranks gather but do not warn (mmengine would not print it)."""
    from mmengine.logging import MessageHub

    from coprs.engine import loops

    lengths = {"a": 90, "b": 10, "c": 95, "d": 99}
    policy = types.SimpleNamespace(max_prompt_tokens=50, overlong_prompts=lambda images, ins: {
        i: lengths[x] for i, x in enumerate(ins) if lengths[x] > 50})
    logged = _Logged()
    loop = loops.ReasoningSegTrainLoop.__new__(loops.ReasoningSegTrainLoop)
    loop._iter = 6
    loop._runner = types.SimpleNamespace(model=types.SimpleNamespace(policy=policy),
                                         message_hub=MessageHub("equalised_test"), logger=logged)
    batch = {"data_samples": [dict(sample_id="a", instruction="a"),
                              dict(sample_id="b", instruction="b")], "inputs": [None, None]}
    # rank 1 keeps none of c, d: every rank skips, rank 0's b is cut to equalise
    gathered = []
    monkeypatch.setattr(loops, "_per_rank", lambda *c: torch.tensor([c, (0, 2, 2)]))
    monkeypatch.setattr(loops, "all_gather_object",
                        lambda mine: gathered.append(mine) or [mine, ([("c", 95), ("d", 99)], [])])
    kept, extra = loop._drop_overlong(batch)
    assert kept == {"data_samples": [], "inputs": []}
    assert extra == {"data/overlong_dropped": 3.0, "data/equalised_dropped": 1.0}
    assert gathered == [([("a", 90)], ["b"])]
    assert logged.lines == [
        ("WARNING", "iteration 7: dropped 3 of 4 samples whose prompt is longer than model.policy."
                    "max_prompt_tokens=50: a (90 tokens, rank 0), c (95 tokens, rank 1), d (99 "
                    "tokens, rank 1). To train on them, raise model.policy.max_prompt_tokens or "
                    "lower model.policy.max_pixels (fewer image tokens)"),
        ("WARNING", "iteration 7: the batch of rank 1 has no sample with a prompt within model."
                    "policy.max_prompt_tokens=50; step skipped")]
    # rank 1 keeps d only: rank 0 keeps a of a, b
    lengths["a"], logged.lines[:] = 20, []
    monkeypatch.setattr(loops, "_per_rank", lambda *c: torch.tensor([c, (1, 1, 2)]))
    monkeypatch.setattr(loops, "all_gather_object", lambda mine: [mine, ([("c", 95)], [])])
    kept, extra = loop._drop_overlong(batch)
    assert [s["sample_id"] for s in kept["data_samples"]] == ["a"]
    assert extra == {"data/overlong_dropped": 4.0, "data/equalised_dropped": 2.0}
    assert [m for _, m in logged.lines] == [
        "iteration 7: dropped 1 of 4 samples whose prompt is longer than model.policy."
        "max_prompt_tokens=50: c (95 tokens, rank 1). To train on them, raise model.policy."
        "max_prompt_tokens or lower model.policy.max_pixels (fewer image tokens)",
        "iteration 7: dropped 1 more samples (prompts within the cap) to keep as many on every "
        "rank as the rank with the fewest (1): the ranks step together: b (rank 0)"]
    # another rank gathers (a collective) but leaves the warning to rank 0
    logged.lines[:] = []
    monkeypatch.setattr(loops, "is_main_process", lambda: False)
    loop._drop_overlong(batch)
    assert logged.lines == [] and loop._equalised_dropped == 3


def test_loop_names_what_was_not_finite_and_fails_after_too_many():
    from coprs.engine.loops import ReasoningSegTrainLoop

    warnings = []
    loop = ReasoningSegTrainLoop.__new__(ReasoningSegTrainLoop)
    loop.max_nonfinite_steps, loop._nonfinite_run, loop._iter = 2, 0, 4
    loop._runner = types.SimpleNamespace(logger=types.SimpleNamespace(warning=warnings.append))
    out = {"nonfinite_step": 1.0, "loss_seg": torch.tensor(float("nan")), "loss_pg": 0.5,
           "loss_kl": float("inf")}
    loop._check_nonfinite(out)
    # the NaN and inf stay out of the logger's averaging window; the finite values stay in
    assert out == {"nonfinite_step": 1.0, "loss_pg": 0.5}
    assert warnings[-1].startswith("iteration 5: non-finite loss_seg=nan, loss_kl=inf;")
    assert "train_cfg.max_nonfinite_steps=2" in warnings[-1]
    loop._check_nonfinite({"nonfinite_step": 0.0})  # a good step resets the count
    loop._check_nonfinite({"nonfinite_step": 1.0})
    assert "non-finite gradient (every loss was finite)" in warnings[-1]
    with pytest.raises(FloatingPointError, match="train_cfg.max_nonfinite_steps=2"):
        loop._check_nonfinite({"nonfinite_step": 1.0})


def test_rollouts_come_from_the_stream_of_seed_rank_and_iteration(monkeypatch):
    """A resumed run (whose ranks > 0 did not save their random state) samples the rollouts
    of the uninterrupted run; the global stream is left as it was."""
    from coprs.engine import loops

    class Engine:
        def generate(self, policy, images, instructions, g):
            return torch.rand(len(images), g)

    loop = loops.ReasoningSegTrainLoop.__new__(loops.ReasoningSegTrainLoop)
    loop._runner, loop.rollout_engine, loop._iter = types.SimpleNamespace(seed=7), Engine(), 3
    sample = lambda: loop._sample_rollouts(None, [None, None], ["a", "b"], 4)  # noqa: E731
    torch.manual_seed(0)
    first = sample()
    after = torch.rand(1)
    torch.manual_seed(0)
    torch.rand(5)  # the global stream elsewhere: the rollouts do not change
    torch.testing.assert_close(sample(), first, rtol=0, atol=0)
    torch.manual_seed(0)
    sample()
    assert torch.equal(torch.rand(1), after)  # nor does sampling move the global stream
    loop._iter = 4
    assert not torch.equal(sample(), first)
    loop._iter = 3
    monkeypatch.setattr(loops, "get_rank", lambda: 1)
    assert not torch.equal(sample(), first)
    assert len({loops.rollout_seed(s, r, i) for s in (0, 1) for r in range(8)
                for i in range(100)}) == 1600


def test_training_writes_the_last_checkpoint_pointer_atomically(tmp_path, monkeypatch):
    """The pointer goes through the atomic writer (mmengine's own hook writes it in place)."""
    import coprs.engine.hooks as hooks

    written = []
    real = hooks.atomic_write
    monkeypatch.setattr(hooks, "atomic_write", lambda p, d: (written.append(p.name), real(p, d)))
    from coprs.cli import main

    from ..conftest import TINY_CONFIG  # noqa: TID252

    assert main(["train", str(TINY_CONFIG), "--work-dir", str(tmp_path), "--cfg-options",
                 "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=1",
                 "train_cfg.stages.1.batch_size=1", "train_dataloader.batch_size=2",
                 "train_cfg.group_size=2", "train_cfg.rollout_engine.max_new_tokens=4",
                 "default_hooks.checkpoint.interval=1"]) == 0
    assert "last_checkpoint" in written and "iter_2.pth" in written
    assert (tmp_path / "last_checkpoint").read_text().endswith("iter_2.pth")


def test_fsdp_wrap_policy_wraps_trainable_named_blocks_only():
    from coprs.engine.fsdp import wrap_layers

    class Qwen2_5_VLDecoderLayer(torch.nn.Linear):  # noqa: N801 - named like the real class
        pass

    layer, other = Qwen2_5_VLDecoderLayer(2, 2), torch.nn.Linear(2, 2)
    assert wrap_layers(other, recurse=True, nonwrapped_numel=6)  # always descend
    assert wrap_layers(layer, recurse=False, nonwrapped_numel=6)
    assert not wrap_layers(other, recurse=False, nonwrapped_numel=6)
    assert wrap_layers(other, recurse=False, nonwrapped_numel=6, layer_names=["Linear"])
    layer.requires_grad_(False)  # frozen blocks stay in their parent's unit
    assert not wrap_layers(layer, recurse=False, nonwrapped_numel=6)


def test_reference_in_bfloat16_keeps_buffers_and_nearly_the_log_probs(tiny_policy):
    from coprs.engine.fsdp import plain_copy
    from coprs.structures import Rollout

    ref = plain_copy(tiny_policy.model, dtype=torch.bfloat16)
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    assert tiny_policy.model.lm_head.weight.dtype == torch.float32  # the source is untouched
    fp32_buffers = {n for n, b in tiny_policy.model.named_buffers() if b.dtype == torch.float32}
    assert fp32_buffers and all(dict(ref.named_buffers())[n].dtype == torch.float32
                                for n in fp32_buffers)  # e.g. rotary frequencies
    tok = tiny_policy.tokenizer
    text = "<think>I see a red circle.</think><REF_POS>"
    rollouts = [Rollout(text=text, token_ids=tok.encode(text, add_special_tokens=False))]
    image = [Image.new("RGB", (56, 56), (200, 40, 40))]
    with torch.no_grad():
        full, mask = tiny_policy.response_logprobs(
            tiny_policy.forward_responses(image, ["x"], rollouts))
        half, _ = tiny_policy.response_logprobs(
            tiny_policy.forward_responses(image, ["x"], rollouts, model=ref))
    assert half.dtype == torch.float32 and mask.sum() == len(rollouts[0].token_ids)
    assert not torch.equal(half, full)  # computed in bf16 ...
    torch.testing.assert_close(half, full, rtol=0, atol=0.05)  # ... and close


def test_loop_rejects_a_reference_dtype_that_is_not_a_float_dtype():
    from coprs.engine.loops import ReasoningSegTrainLoop

    for bad in ("bf16", "int8"):
        with pytest.raises(ValueError, match="train_cfg.reference_dtype"):
            ReasoningSegTrainLoop(None, None, [dict(kind="sft", iters=1)], reference_dtype=bad)


def test_plain_copy_without_fsdp_is_a_frozen_equal_copy(tiny_policy):
    from coprs.engine.fsdp import full_params, is_fsdp, plain_copy, plain_state

    model = tiny_policy.model
    assert not is_fsdp(model)
    with full_params(model):  # a no-op without FSDP units
        ref = plain_copy(model)
    assert ref is not model and not ref.training
    assert not any(p.requires_grad for p in ref.parameters())
    a, b = plain_state(model), plain_state(ref)
    assert a.keys() == b.keys() and any("rotary" in k for k in a)  # buffers included
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
        assert a[k].data_ptr() != b[k].data_ptr() or a[k].numel() == 0


class _Logged:
    def __init__(self):
        self.lines = []

    def info(self, msg):
        self.lines.append(("INFO", msg))

    def warning(self, msg):
        self.lines.append(("WARNING", msg))


def _runner(model, load_from="ckpt.pth"):
    return types.SimpleNamespace(model=model, logger=_Logged(), _load_from=load_from)


def test_checkpoint_match_hook_names_what_a_partial_load_leaves_out():
    model = _Tied()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hook = CheckpointMatchHook()
    runner = _runner(model)
    full = {"state_dict": {f"module.{k}": v for k, v in state.items()}}  # DDP-saved keys too
    hook.after_load_checkpoint(runner, full)
    assert runner.logger.lines == [("INFO", "ckpt.pth: every trainable tensor of the model is in "
                                    "it (3 trainable parameters), with its shape")]
    del state["frozen.weight"], state["frozen.bias"]  # frozen: loaded from its own weights
    hook.after_load_checkpoint(runner, {"state_dict": state})
    assert runner.logger.lines[-1][0] == "INFO"
    del state["prior.bias"]
    state["prior.weight"] = torch.zeros(5, 4)
    state["old_head.weight"] = torch.zeros(2)
    hook.after_load_checkpoint(runner, {"state_dict": state})
    level, msg = runner.logger.lines[-1]
    assert level == "WARNING" and msg.startswith("ckpt.pth does not fit the model")
    assert "1 trainable parameters it lacks (they keep their initial values): prior.bias" in msg
    assert "1 keys the model does not have (ignored): old_head.weight" in msg
    assert "1 tensors of another shape (not loaded): prior.weight (5, 4) vs (4, 4)" in msg
    assert "frozen" not in msg
    with pytest.raises(ValueError, match="prior.bias"):
        CheckpointMatchHook(strict=True).after_load_checkpoint(_runner(model), {"state_dict": state})
    # keys of a part built from elsewhere (an export's policy) are not checked
    runner = _runner(model)
    CheckpointMatchHook(loaded_elsewhere=("prior.", "old_head.")).after_load_checkpoint(
        runner, {"state_dict": {k: v for k, v in state.items() if k != "prior.weight"}})
    assert runner.logger.lines[-1][0] == "INFO"


def test_training_refuses_parameters_stored_in_low_precision():
    from coprs.engine.loops import ReasoningSegTrainLoop, check_trainable_dtypes

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    check_trainable_dtypes(model)  # float32: fine
    model[0].to(torch.bfloat16).requires_grad_(False)
    check_trainable_dtypes(model)  # a frozen bf16 part (a LoRA base, a frozen tower): fine
    model[1].to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"2 trainable parameters .*1\.weight, torch\.bfloat16.*"
                                         r"model\.policy\.torch_dtype=float32.*--amp"):
        check_trainable_dtypes(model)
    # the loop checks before its first iteration
    loop = ReasoningSegTrainLoop.__new__(ReasoningSegTrainLoop)
    loop._runner = types.SimpleNamespace(model=model)
    with pytest.raises(ValueError, match="low precision"):
        loop.run()


def test_loop_refuses_a_reward_that_is_not_a_base_reward():
    from coprs.engine.loops import ReasoningSegTrainLoop
    from coprs.registry import REWARDS

    class _NotAReward:
        pass

    REWARDS.register_module(module=_NotAReward, force=True)
    try:
        with pytest.raises(TypeError, match="train_cfg.reward built _NotAReward.*BaseReward"):
            ReasoningSegTrainLoop(types.SimpleNamespace(), dataloader=[],
                                  stages=[dict(kind="grpo", iters=1)],
                                  reward=dict(type="_NotAReward"))
    finally:  # the registry is the process's: leave it as it was
        REWARDS.module_dict.pop("_NotAReward")


def test_loop_stopped_by_nonfinite_rewards_points_at_the_reward():
    from coprs.engine.loops import ReasoningSegTrainLoop

    loop = ReasoningSegTrainLoop.__new__(ReasoningSegTrainLoop)
    loop.max_nonfinite_steps, loop._nonfinite_run, loop._iter = 1, 0, 0
    loop._runner = types.SimpleNamespace(logger=types.SimpleNamespace(warning=lambda m: None))
    loop._skip_reason = "reward for 4 of 4 rollouts (terms: area)"
    with pytest.raises(FloatingPointError, match=r"terms: area\).*make the reward terms named "
                                                 r"return finite values"):
        loop._check_nonfinite({"nonfinite_step": 1.0})


@pytest.mark.parametrize("config", ["coprs/coprs_tiny_shapes_cpu.py", "lisa/lisa_tiny_shapes_cpu.py",
                                    "segzero/segzero_tiny_shapes_cpu.py"])
def test_the_configs_rewards_pass_the_dry_run(config):
    from mmengine.config import Config

    from coprs.engine.loops import dry_run_reward
    from coprs.registry import REWARDS
    from coprs.rewards.combine import COPRS_REWARD
    from coprs.utils import register_all_modules

    from ..conftest import REPO  # noqa: TID252

    register_all_modules()
    cfg = Config.fromfile(str(REPO / "configs" / config))
    dry_run_reward(REWARDS.build(cfg.train_cfg.get("reward") or COPRS_REWARD))


def test_a_reward_that_fails_on_a_malformed_response_is_named_before_training():
    from coprs.engine.loops import dry_run_reward
    from coprs.rewards import BaseReward
    from coprs.rewards.combine import WeightedSumReward

    class NeedsThink(BaseReward):
        name = "needs_think"

        def __call__(self, responses, pred_probs=None, gt=None, valid=None):
            return torch.tensor([len(r.split("<think>")[1]) for r in responses], dtype=torch.float)

    with pytest.raises(ValueError, match=r"train_cfg.reward WeightedSumReward\(1·needs_think\) "
                                         r"failed on a dummy batch.*IndexError.*malformed ones"):
        dry_run_reward(WeightedSumReward([dict(reward=NeedsThink(), weight=1.0)]))


def test_window_gradients_are_kept_for_the_checkpoint_of_one_process_or_once_shared(
        monkeypatch):
    """A checkpoint inside an accumulation window keeps the window's gradients, without a
    parameter that no iteration reached (AdamW would decay it under a zero gradient); nothing
    at a window's end or without accumulation. In a distributed run, whose checkpoint rank 0
    saves alone (no collective there: the other ranks are not in the hook), only once every rank
    has averaged them at this iteration (``share_window_grads``, DDP)."""
    import mmengine.dist
    from mmengine.optim import OptimWrapper

    from coprs.engine.hooks import _window_grads

    model = torch.nn.ModuleDict({n: torch.nn.Linear(2, 1, bias=False) for n in "ab"})
    model["a"].weight.grad = torch.tensor([[1.0, 2.0]])
    wrapper = OptimWrapper(torch.optim.AdamW(model.parameters()), accumulative_counts=2)
    runner = types.SimpleNamespace(optim_wrapper=wrapper, model=model, iter=2)
    grads = _window_grads(runner, model)
    assert set(grads) == {"a.weight"} and grads["a.weight"].tolist() == [[1.0, 2.0]]
    grads["a.weight"] += 1
    assert model["a"].weight.grad.tolist() == [[1.0, 2.0]]  # a copy
    collectives = []
    monkeypatch.setattr(mmengine.dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(mmengine.dist, "all_reduce", lambda *a, **k: collectives.append(a))
    assert _window_grads(runner, model) is None and not collectives
    wrapper._coprs_window_shared_at = 1  # averaged at another iteration: not these gradients
    assert _window_grads(runner, model) is None
    wrapper._coprs_window_shared_at = 2  # averaged over the ranks at this one
    assert set(_window_grads(runner, model)) == {"a.weight"} and not collectives
    monkeypatch.setattr(mmengine.dist, "get_world_size", lambda *a, **k: 1)
    model.zero_grad()  # a window's end: stepped and zeroed
    assert _window_grads(runner, model) is None
    runner.optim_wrapper = OptimWrapper(torch.optim.AdamW(model.parameters()))
    model["a"].weight.grad = torch.ones(1, 2)
    assert _window_grads(runner, model) is None  # no accumulation: every step is a window's end
