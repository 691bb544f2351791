"""The GPU paths on a CUDA machine: bf16 autocast training and evaluation, FSDP over NCCL, and
CPU/GPU agreement of the tiny assembly. Skipped, with the reason shown by ``-ra``, where torch
sees no CUDA device; run them on a GPU machine with ``python -m pytest tests/gpu -ra``
(docs/training.md, "Checking the GPU paths")."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from coprs.policies.adapters import is_adapter_weight
from coprs.registry import HOOKS

from ..conftest import SMALL_RUN as SMALL  # noqa: TID252
from ..conftest import TINY_CONFIG, kl_ref  # noqa: TID252

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: run tests/gpu on a GPU machine")

REPO = Path(__file__).resolve().parents[2]


@HOOKS.register_module(force=True)
class _ComputeProbe(Hook):
    """Records where the policy's LM head runs and in which dtype it computes while training."""

    priority = "LOWEST"

    def __init__(self, out: str) -> None:
        self.out = out
        self.seen: set[tuple[str, str]] = set()

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        head = model.policy.model.lm_head

        def record(_module, _args, output):
            self.seen.add((str(output.device.type), str(output.dtype)))

        head.register_forward_hook(record)

    def after_train(self, runner) -> None:
        Path(self.out).write_text(json.dumps(sorted(self.seen)))


def _scalars(work_dir: Path) -> list[dict]:
    files = sorted(work_dir.rglob("scalars.json"))
    assert files, f"no scalars.json under {work_dir}"
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_training_and_evaluation_on_cuda(tmp_path, amp):
    """The tiny config trains on the GPU (2 warm-up + 2 GRPO iterations), also under bf16
    autocast with ``AmpOptimWrapper`` (``coprs train --amp``); the checkpoint keeps fp32 weights, is evaluated on the
    GPU, and a run resumed from it on the GPU ends where the uninterrupted run did."""
    from coprs.cli import main

    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.custom_hooks.append(dict(type="_ComputeProbe", out=str(tmp_path / "probe.json")))
    cfg.model.feature_cache.root = str(tmp_path / "cache")
    # mmengine keeps one visualizer per name in a process: this run's own, not the last test's
    cfg.visualizer.name = f"visualizer_{tmp_path.name}"
    cfg.experiment_name = tmp_path.name
    cfg.dump(str(tmp_path / "cfg.py"))
    extra = ["--amp"] if amp else []  # AmpOptimWrapper(dtype='bfloat16')
    work = tmp_path / "w"
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(work), "--cfg-options",
                 "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2", *SMALL, *extra]) == 0

    seen = {tuple(x) for x in json.loads((tmp_path / "probe.json").read_text())}
    assert {device for device, _ in seen} == {"cuda"}
    want = "torch.bfloat16" if amp else "torch.float32"
    assert want in {dtype for _, dtype in seen}, seen

    records = _scalars(work)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    assert any("reward/mask" in r for r in records)  # the GRPO iterations ran and scored

    full = torch.load(work / "iter_4.pth", map_location="cpu", weights_only=True)
    assert full["state_dict"]["policy.model.lm_head.weight"].dtype == torch.float32  # fp32 master
    assert full["rng"]["cuda"].dtype == torch.uint8  # the GPU's random state is saved too
    out = tmp_path / "r.json"
    assert main(["test", str(tmp_path / "cfg.py"), str(work / "iter_4.pth"), "--out", str(out),
                 "--reasoning", "gold", "--work-dir", str(tmp_path / "t"), "--cfg-options",
                 "test_cfg.datasets.0.num_samples=4", "test_cfg.datasets.1.num_samples=2"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["shapes/test"]["n"] == 4 and 0.0 <= metrics["shapes/test"]["gIoU"] <= 1.0

    # resumed on the GPU after the first GRPO iteration (the checkpoint is loaded onto the GPU)
    again = tmp_path / "r"
    again.mkdir()
    for name in ("iter_3.pth", "reference_policy.pth"):
        shutil.copy(work / name, again / name)
    cfg.visualizer.name = f"visualizer_{tmp_path.name}_r"
    cfg.experiment_name = f"{tmp_path.name}_r"
    cfg.dump(str(tmp_path / "cfg_r.py"))
    assert main(["train", str(tmp_path / "cfg_r.py"), "--work-dir", str(again), "--resume",
                 str(again / "iter_3.pth"), "--cfg-options", "train_cfg.stages.0.iters=2",
                 "train_cfg.stages.1.iters=2", *SMALL, *extra]) == 0
    _assert_resumed_close(work, again)


def test_cuda_and_cpu_predictions_agree():
    """The same weights give the same teacher-forced heatmaps and masks on CPU and GPU."""
    from coprs.apis import init_segmentor
    from coprs.datasets.shapes import ShapesWorld, sample_seed

    world = ShapesWorld()
    samples = [world.sample(sample_seed("test", i)) for i in range(4)]
    images = [s.image for s in samples]
    instructions = [s.instruction for s in samples]
    responses = [s.response_coprs for s in samples]
    cpu = init_segmentor(str(TINY_CONFIG))
    gpu = init_segmentor(str(TINY_CONFIG), device="cuda")
    assert next(gpu.parameters()).device.type == "cuda"
    a = cpu.predict_images(images, instructions, responses=responses)
    b = gpu.predict_images(images, instructions, responses=responses)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.heatmap, y.heatmap, atol=2e-3)
        disagree = np.logical_xor(x.mask, y.mask).mean()
        assert disagree < 1e-3, disagree
    # greedy generation runs on the GPU and returns a scored result, whatever the tiny policy says
    gen = gpu.predict_images(images[:2], instructions[:2], max_new_tokens=8)
    assert len(gen) == 2 and all(r.mask.shape == images[0].shape[:2] for r in gen)


def _assert_resumed_close(uninterrupted: Path, resumed: Path) -> None:
    """A run resumed from ``iter_3.pth`` ends (``iter_4.pth``) where the uninterrupted run did,
    up to a small part of the last step: GPU kernels need not be bitwise deterministic."""
    def state(folder, name):
        return torch.load(folder / name, map_location="cpu", weights_only=True)["state_dict"]

    final, third = state(uninterrupted, "iter_4.pth"), state(uninterrupted, "iter_3.pth")
    again = state(resumed, "iter_4.pth")
    assert again.keys() == final.keys()
    worst = 0.0
    for k, v in final.items():
        if not v.is_floating_point():
            continue
        step = (v.float() - third[k].float()).abs().max().item()
        diff = (again[k].float() - v.float()).abs().max().item()
        assert diff <= 1e-3 + 0.05 * step, (k, diff, step)
        worst = max(worst, diff)
    print(f"largest parameter difference, resumed vs uninterrupted: {worst:.3e}")


def _torchrun(tmp_path: Path, work_dir: Path, *extra: str, port: int,
              options: tuple[str, ...] = (), succeeds: bool = True) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
           f"--master_port={port}", str(REPO / "tools" / "train.py"), str(tmp_path / "cfg.py"),
           "--work-dir", str(work_dir), "--launcher", "pytorch", *extra, "--cfg-options",
           "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2", *SMALL,
           "train_cfg.reference_dtype=bfloat16", f"model.feature_cache.root={tmp_path / 'cache'}",
           *options]
    proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True,
                          timeout=900)
    (tmp_path / f"{work_dir.name}.log").write_text(proc.stdout + proc.stderr)
    assert (proc.returncode == 0) == succeeds, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _under_the_leafs_fsdp() -> tuple[Config, Config]:
    """The tiny config under the 8-GPU leaf's runner, FSDP strategy and bf16 autocast without a
    loss scaler, on NCCL; and the leaf's config."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.env_cfg.dist_cfg = dict(backend="nccl")
    cfg.runner_type = "FlexibleRunner"
    leaf = Config.fromfile(str(
        REPO / "configs" / "coprs" / "coprs_qwen2.5-vl-7b_sam-vit-h_8xb2-31k_refcoco_fsdp-vllm.py"))
    cfg.strategy = leaf.strategy
    for key in ("type", "dtype", "loss_scale"):
        cfg.optim_wrapper[key] = leaf.optim_wrapper[key]
    return cfg, leaf


def test_fsdp_over_nccl_with_bf16_autocast_and_resume(tmp_path):
    """The 8-GPU leaf's runner, strategy and precision on one GPU: FlexibleRunner + FSDP (one
    unit per transformer block), NCCL, bf16 autocast, gradient checkpointing, float16 cached
    features, a bf16 reference policy; a run resumed
    after the first GRPO iteration ends where the uninterrupted run did."""
    cfg, leaf = _under_the_leafs_fsdp()
    # the leaf's model switches too (its flash-attention kernels are left out: an extra package)
    cfg.model.policy.gradient_checkpointing = leaf.model.policy.gradient_checkpointing
    cfg.model.feature_cache.dtype = leaf.model.feature_cache.dtype
    cfg.dump(str(tmp_path / "cfg.py"))

    log = _torchrun(tmp_path, tmp_path / "w", port=29541)
    assert "reward/mask" in log
    final = torch.load(tmp_path / "w" / "iter_4.pth", map_location="cpu", weights_only=True)
    assert not any("_fsdp_wrapped_module" in k for k in final["state_dict"])
    ref = torch.load(tmp_path / "w" / "reference_policy.pth", map_location="cpu",
                     weights_only=True)
    assert ref["lm_head.weight"].dtype == torch.bfloat16

    (tmp_path / "r").mkdir()
    for name in ("iter_3.pth", "reference_policy.pth"):
        shutil.copy(tmp_path / "w" / name, tmp_path / "r" / name)
    _torchrun(tmp_path, tmp_path / "r", "--resume", str(tmp_path / "r" / "iter_3.pth"),
              port=29543)
    resumed = torch.load(tmp_path / "r" / "iter_4.pth", map_location="cpu", weights_only=True)
    assert resumed["state_dict"].keys() == final["state_dict"].keys()
    _assert_resumed_close(tmp_path / "w", tmp_path / "r")


def _lora_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_lora_on_cuda_under_bf16_autocast_then_export(tmp_path):
    """LoRA, the route to a 7B policy on one or two GPUs, trained on the GPU under bf16
    autocast: 2 warm-up + 2 GRPO iterations; GRPO's reference is the frozen copy of the
    warmed-up adapters (KL 0 at GRPO's first iteration, above 0 after an update); checkpoints
    hold only what trains; ``export-hf`` merges the adapters, and the export predicts on the GPU
    what the checkpoint predicts."""
    from coprs.apis import init_segmentor
    from coprs.cli import main
    from coprs.datasets.shapes import ShapesWorld, sample_seed

    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.policy.lora = dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    cfg.model.feature_cache.root = str(tmp_path / "cache")
    cfg.visualizer.name = f"visualizer_{tmp_path.name}"
    cfg.experiment_name = tmp_path.name
    cfg.dump(str(tmp_path / "lora.py"))
    work = tmp_path / "w"
    # a large step, so that one GRPO update moves the policy away from its reference
    assert main(["train", str(tmp_path / "lora.py"), "--work-dir", str(work), "--cfg-options",
                 "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2", *SMALL,
                 "optim_wrapper.optimizer.lr=0.05", "--amp"]) == 0
    log = "".join(p.read_text() for p in work.glob("*/*.log"))
    assert "a copy of the adapters at the start of GRPO (trained in the 2-iteration warm-up" in log
    kl3, kl4 = kl_ref(log, 3, 4), kl_ref(log, 4, 4)
    assert abs(kl3) < 1e-3 and kl4 > kl3, (kl3, kl4)
    losses = [r["loss"] for r in _scalars(work) if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses

    warm, final = _lora_state(work / "iter_2.pth"), _lora_state(work / "iter_4.pth")
    policy = {k for k in final if k.startswith("policy.")}
    assert policy and all(is_adapter_weight(k, "default") for k in policy)  # no frozen base
    assert any("trainable_tokens_delta" in k for k in policy)  # the added tokens' rows
    assert all(final[k].dtype == torch.float32 for k in policy)  # fp32 adapters under autocast
    ref = torch.load(work / "reference_policy.pth", map_location="cpu", weights_only=True)
    assert {f"policy.model.{k}" for k in ref} == policy
    for k, v in ref.items():
        torch.testing.assert_close(v, warm[f"policy.model.{k}"], rtol=0, atol=0, msg=k)

    out = tmp_path / "ex"
    assert main(["export-hf", str(tmp_path / "lora.py"), str(work / "iter_4.pth"),
                 "--out", str(out)]) == 0
    trained = init_segmentor(str(tmp_path / "lora.py"), checkpoint=str(work / "iter_4.pth"),
                             device="cuda")
    merged = init_segmentor(str(tmp_path / "lora.py"), checkpoint=str(out), device="cuda")
    assert trained.policy.uses_adapters and not merged.policy.uses_adapters
    assert next(merged.parameters()).device.type == "cuda"
    world = ShapesWorld()
    samples = [world.sample(sample_seed("test", i)) for i in range(4)]
    args = ([s.image for s in samples], [s.instruction for s in samples])
    responses = [s.response_coprs for s in samples]
    a = trained.predict_images(*args, responses=responses)
    b = merged.predict_images(*args, responses=responses)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.heatmap, y.heatmap, atol=2e-3)
        assert np.logical_xor(x.mask, y.mask).mean() < 1e-3


def test_fsdp_lora_over_nccl_with_gradient_accumulation(tmp_path):
    """LoRA under the 8-GPU leaf's FSDP strategy on NCCL with bf16 autocast and gradients
    accumulated over 2 iterations (FSDP's ``no_sync`` is a no-op: sharded accumulation): the
    warm-up trains the adapters, GRPO's reference is their frozen copy, written back into the
    shards (KL 0 at its first iteration), and checkpoints keep only the adapters and heads."""
    cfg, _ = _under_the_leafs_fsdp()
    cfg.optim_wrapper.accumulative_counts = 2
    cfg.model.policy.lora = dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    cfg.dump(str(tmp_path / "cfg.py"))

    log = _torchrun(tmp_path, tmp_path / "w", port=29545,
                    options=("optim_wrapper.optimizer.lr=0.3",))
    assert "a copy of the adapters at the start of GRPO (trained in the 2-iteration warm-up" in log
    assert abs(kl_ref(log, 3, 4)) < 1e-3
    warm = _lora_state(tmp_path / "w" / "iter_2.pth")
    final = _lora_state(tmp_path / "w" / "iter_4.pth")
    policy = {k for k in final if k.startswith("policy.")}
    assert policy and all(is_adapter_weight(k, "default") for k in policy)
    assert any("trainable_tokens_delta" in k for k in policy)  # the added tokens' rows
    assert not any("_fsdp_wrapped_module" in k for k in final)
    # the two accumulated warm-up iterations made one step: the adapters moved
    assert any(bool(warm[k].any()) for k in policy if "lora_B" in k)
    # iteration 3 opened a window: the rank's gradient shard lies beside its checkpoint
    shard = torch.load(tmp_path / "w" / "iter_3.window_grads.rank0.pth", weights_only=True)
    assert any(".lora_" in k for k in shard) and all(v.device.type == "cpu" for v in shard.values())
    assert not any("policy" in k and not is_adapter_weight(k) for k in shard)  # none of the base
    ref = torch.load(tmp_path / "w" / "reference_policy.pth", map_location="cpu",
                     weights_only=True)
    assert {f"policy.model.{k}" for k in ref} == policy
    for k, v in ref.items():
        torch.testing.assert_close(v.float(), warm[f"policy.model.{k}"].float(), rtol=0, atol=0,
                                   msg=k)


def test_fsdp_refuses_a_loss_scaler_with_a_fused_optimiser_before_training(tmp_path):
    """An enabled loss scaler under FSDP (``AmpOptimWrapper`` without the leaf's
    ``loss_scale=dict(enabled=False)``) cannot step the tiny schedule's fused AdamW with gradient
    clipping: the strategy refuses it, naming the fix, before the first iteration."""
    cfg, _ = _under_the_leafs_fsdp()
    cfg.optim_wrapper.pop("loss_scale")  # the scaler left enabled
    assert cfg.optim_wrapper.optimizer.fused and cfg.optim_wrapper.clip_grad
    cfg.dump(str(tmp_path / "cfg.py"))
    log = _torchrun(tmp_path, tmp_path / "w", port=29547, succeeds=False)
    assert "loss_scale=dict(enabled=False)" in log and "Iter(train)" not in log
