"""Two processes with the gloo backend on CPU train a few iterations; ranks end identical."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from coprs.policies.adapters import is_adapter_weight

from ..conftest import TINY_CONFIG  # noqa: TID252
from ._torchrun import rank_params, train_on_two_ranks

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("micro", [
    [], ["train_cfg.actor_micro_batch=1"],
    # windows of 2 iterations and a checkpoint inside one (iteration 1 and 3), which rank 0
    # saves alone: nothing there may wait for the other rank
    ["optim_wrapper.accumulative_counts=2", "train_cfg.stages.0.iters=3",
     "default_hooks.checkpoint.interval=1", "default_hooks.checkpoint.max_keep_ckpts=5"]], ids=["whole-batch", "micro-batches", "accumulation"])
def test_two_gloo_ranks_end_with_identical_parameters(tmp_path, micro):
    """``tools/dist_train.sh CONFIG 2`` (torchrun, --launcher pytorch) on CPU; with micro-batches
    the gradients are all-reduced once, at the last part (DDP's ``no_sync`` before it); with
    gradient accumulation across iterations, once per window."""
    proc = train_on_two_ranks(tmp_path, 29531, ["train_cfg.stages.1.iters=2", *micro],
                              extra_args=["--debug"])
    (tmp_path / "torchrun.log").write_text(proc.stdout + proc.stderr)
    errors = [x for x in (proc.stdout + proc.stderr).splitlines() if "rror" in x]
    assert proc.returncode == 0, "\n".join(errors[-20:])
    a, b = rank_params(tmp_path / "w")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    from coprs.apis import init_segmentor

    fresh = init_segmentor(str(TINY_CONFIG)).state_dict()
    changed = sum(not torch.equal(fresh[k], a[k]) for k in a if k in fresh)
    assert changed > 0  # training moved the weights, identically on both ranks
    if "optim_wrapper.accumulative_counts=2" not in micro:
        return
    # iteration 3 opened a window: its checkpoint holds the gradients so far, averaged over the
    # ranks before rank 0 saved it, and a run resumed from it on 2 ranks ends where this one did
    mid = torch.load(tmp_path / "w" / "iter_3.pth", map_location="cpu", weights_only=True)
    assert mid["coprs_window_grads"]
    assert "coprs_window_grads" not in torch.load(tmp_path / "w" / "iter_2.pth",
                                                  map_location="cpu", weights_only=True)
    again = tmp_path / "again"
    again.mkdir()
    proc = train_on_two_ranks(again, 29549, ["train_cfg.stages.1.iters=2", *micro],
                              extra_args=["--resume", str(tmp_path / "w" / "iter_3.pth")])
    (again / "torchrun.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "resumed inside a gradient-accumulation window" in proc.stdout + proc.stderr
    for resumed in rank_params(again / "w"):
        for k in a:  # the same sums, added in another order
            torch.testing.assert_close(resumed[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


def _fsdp_config(path: Path, lora: dict | None = None) -> None:
    """Write the tiny config under FlexibleRunner + FSDP on gloo CPU ranks (each transformer
    block its own unit, full state dicts gathered on rank 0) to ``path``; with ``lora``, as
    ``model.policy.lora``."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.runner_type = "FlexibleRunner"
    if lora is not None:
        cfg.model.policy.lora = lora
    cfg.strategy = dict(
        type="coprs.CoprsFSDPStrategy",
        model_wrapper=dict(type="coprs.CoprsFullyShardedDataParallel",
                           auto_wrap_policy=dict(type="coprs.engine.fsdp.wrap_layers"),
                           device_id="cpu"),
        state_dict_cfg=dict(
            state_dict_type="FULL_STATE_DICT",
            state_dict_config=dict(type="FullStateDictConfig", offload_to_cpu=True,
                                   rank0_only=True),
            optim_state_dict_config=dict(type="FullOptimStateDictConfig",
                                         offload_to_cpu=True, rank0_only=True)))
    cfg.dump(str(path))


@pytest.mark.parametrize("accumulate", [False, True], ids=["steps", "accumulation"])
def test_fsdp_two_gloo_ranks_warm_up_then_grpo_and_resume(tmp_path, accumulate):
    """FlexibleRunner + FSDP (each transformer block its own unit, 2 CPU ranks): warm-up, then
    GRPO with rollouts, mask rewards and a bf16 reference policy made from the gathered
    weights, forwarded in micro-batches as in the 8-GPU config; the checkpoint is one full state
    dict with plain names, and a run resumed from it mid-GRPO ends with the uninterrupted run's
    parameters. With gradient accumulation over 2 iterations that checkpoint lies inside a
    window: each rank keeps its shard of the window's gradients beside it, and the resumed run
    puts them back."""
    _fsdp_config(tmp_path / "cfg.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    train = Path(__file__).parents[2] / "tools" / "train.py"

    def torchrun(work_dir, *extra, port):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={port}", str(train), str(tmp_path / "cfg.py"),
               "--work-dir", str(work_dir), "--launcher", "pytorch", *extra, "--cfg-options",
               "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2",
               "train_dataloader.batch_size=2", "train_cfg.group_size=2",
               "train_cfg.rollout_engine.max_new_tokens=6", "default_hooks.checkpoint.interval=1",
               "default_hooks.checkpoint.max_keep_ckpts=3", "default_hooks.logger.interval=1",
               "train_cfg.reference_dtype=bfloat16", "train_cfg.actor_micro_batch=1",
               "train_cfg.experience_micro_batch=1", "val_cfg.datasets.0.num_samples=2",
               f"model.feature_cache.root={tmp_path / 'cache'}",
               f"optim_wrapper.accumulative_counts={2 if accumulate else 1}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        (work_dir.parent / f"{work_dir.name}.log").write_text(proc.stdout + proc.stderr)
        errors = [x for x in (proc.stdout + proc.stderr).splitlines() if "rror" in x]
        assert proc.returncode == 0, "\n".join(errors[-20:])
        return proc

    proc = torchrun(tmp_path / "w", port=29533)
    assert "reward/mask" in proc.stdout  # GRPO iterations ran and logged their rewards

    from coprs.apis import init_segmentor, load_checkpoint

    warm = torch.load(tmp_path / "w" / "iter_2.pth", map_location="cpu", weights_only=True)
    final = torch.load(tmp_path / "w" / "iter_4.pth", map_location="cpu", weights_only=True)
    assert not any("_fsdp_wrapped_module" in k for k in final["state_dict"])
    # the reference policy is the policy as the warm-up left it (gathered, not a shard), its
    # weights in train_cfg.reference_dtype
    ref = torch.load(tmp_path / "w" / "reference_policy.pth", map_location="cpu",
                     weights_only=True)
    assert ref["lm_head.weight"].dtype == torch.bfloat16
    for k, v in ref.items():
        torch.testing.assert_close(v, warm["state_dict"][f"policy.model.{k}"].to(v.dtype),
                                   rtol=0, atol=0, msg=k)
    model = init_segmentor(str(TINY_CONFIG))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_checkpoint(model, str(tmp_path / "w" / "iter_4.pth"))
    loaded = model.state_dict()
    assert sum(not torch.equal(fresh[k], loaded[k]) for k in fresh) > 0
    trained = [k for k in final["state_dict"] if k.startswith("policy.model.model.language")]
    assert any(not torch.equal(warm["state_dict"][k], final["state_dict"][k]) for k in trained)

    # resumed after the first GRPO iteration (optimiser state, scheduler, random state and the
    # reference snapshot from the checkpoint's run), it ends where the uninterrupted run did
    (tmp_path / "r").mkdir()
    names = ["iter_3.pth", "reference_policy.pth"]
    shards = [f"iter_3.window_grads.rank{r}.pth" for r in (0, 1)]
    mid = torch.load(tmp_path / "w" / "iter_3.pth", map_location="cpu", weights_only=True)
    if accumulate:  # iteration 3 opened a window: each rank's gradient shard beside it
        assert mid["coprs_window_shards"]["world_size"] == 2
        assert all((tmp_path / "w" / s).is_file() for s in shards)
        # the shards of the checkpoint max_keep_ckpts removed (iteration 1) went with it
        assert not list((tmp_path / "w").glob("iter_1*"))
        names += shards
    else:
        assert "coprs_window_shards" not in mid and not list((tmp_path / "w").glob("*window*"))
    for name in names:
        shutil.copy(tmp_path / "w" / name, tmp_path / "r" / name)
    proc = torchrun(tmp_path / "r", "--resume", str(tmp_path / "r" / "iter_3.pth"), port=29535)
    restored = "gradients of its earlier iterations (" in proc.stdout + proc.stderr
    assert restored == accumulate
    resumed = torch.load(tmp_path / "r" / "iter_4.pth", map_location="cpu", weights_only=True)
    assert resumed["state_dict"].keys() == final["state_dict"].keys()
    for k, v in final["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, rtol=0, atol=0, msg=k)
    if accumulate:  # rank 1's shard lost: rank 0 does not restore its own either, and says why
        (tmp_path / "r" / shards[1]).unlink()
        shutil.rmtree(tmp_path / "r" / "w", ignore_errors=True)
        again = tmp_path / "r" / "again"
        proc = torchrun(again, "--resume", str(tmp_path / "r" / "iter_3.pth"), port=29539)
        out = proc.stdout + proc.stderr
        assert "gradients of its earlier iterations (" not in out
        assert "another rank cannot restore its gradient shard; the gradients of its earlier " \
            "iterations are lost" in out, out[-3000:]
        assert (again / "iter_4.pth").is_file()


def test_fsdp_lora_warm_up_then_grpo_against_the_warmed_up_adapters(tmp_path):
    """LoRA under FSDP (2 CPU ranks): the warm-up trains the adapters, GRPO's reference is the
    frozen reference adapter they are copied into (written back into the shards), so the KL is
    0 at GRPO's first iteration and not after an update; checkpoints keep only what trains."""
    import re

    _fsdp_config(tmp_path / "cfg.py", lora=dict(r=2, alpha=4, target_modules=["q_proj"]))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29537", str(ROOT / "tools" / "train.py"), str(tmp_path / "cfg.py"),
           "--work-dir", str(tmp_path / "w"), "--launcher", "pytorch", "--cfg-options",
           "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=2",
           "train_dataloader.batch_size=2", "train_cfg.group_size=2",
           "train_cfg.rollout_engine.max_new_tokens=6", "default_hooks.checkpoint.interval=1",
           "default_hooks.checkpoint.max_keep_ckpts=4", "default_hooks.logger.interval=1",
           "val_cfg.datasets.0.num_samples=2",
           # a large step, so that one GRPO update moves the policy away from the reference
           "optim_wrapper.optimizer.lr=0.05", f"model.feature_cache.root={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    (tmp_path / "torchrun.log").write_text(out)
    assert proc.returncode == 0, "\n".join([x for x in out.splitlines() if "rror" in x][-20:])
    assert "a copy of the adapters at the start of GRPO (trained in the 2-iteration warm-up" in out
    kl = {i: float(re.search(r"kl_ref: (\S+)", next(
        x for x in out.splitlines() if f"Iter(train) [{i}/4]" in x)).group(1)) for i in (3, 4)}
    assert kl[3] == 0 and kl[4] > 0, kl
    warm = torch.load(tmp_path / "w" / "iter_2.pth", map_location="cpu", weights_only=True)
    ref = torch.load(tmp_path / "w" / "reference_policy.pth", map_location="cpu",
                     weights_only=True)
    policy = {k for k in warm["state_dict"] if k.startswith("policy.")}
    assert policy and all(is_adapter_weight(k, "default") for k in policy)  # no frozen base
    assert any("trainable_tokens_delta" in k for k in policy)  # the added tokens' rows
    assert not any(k.startswith("vision_backbone.") for k in warm["state_dict"])
    assert {f"policy.model.{k}" for k in ref} == policy
    for k, v in ref.items():
        torch.testing.assert_close(v, warm["state_dict"][f"policy.model.{k}"], rtol=0, atol=0)


def test_fsdp_wrapper_clips_by_the_global_norm_and_skips_nonfinite_steps_together(tmp_path):
    """Two ranks with the same data and sharded parameters must take the step a single process
    takes: the gradient clipped by the norm over all shards (mmengine's default clips each
    rank's shards by their own norm). A NaN loss on one rank skips the step on both. A gradient
    accumulation window whose last step has no backward steps with the reduced, sharded
    gradients of its first (the wrapper's no_sync keeps them sharded)."""
    import importlib.util

    worker = Path(__file__).with_name("fsdp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29535", str(worker), str(tmp_path), "0.05"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    got = torch.load(tmp_path / "fsdp_toy.pt", weights_only=True)
    assert got["nonfinite"] == [0.0, 1.0]  # rank 1's NaN: both ranks logged a skipped step

    spec = importlib.util.spec_from_file_location("fsdp_worker", worker)
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    single = toy.Toy()
    before = {k: v.clone() for k, v in single.state_dict().items()}
    single.train_step(toy.batch(1.0), optim_wrapper=toy.OptimWrapper(
        torch.optim.SGD(single.parameters(), lr=1.0), clip_grad=dict(max_norm=0.05)))
    for k, v in single.state_dict().items():
        assert not torch.equal(v, before[k])  # the clipped step moved every tensor
        torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # the accumulation window: one backward of half the loss, then the step
    single = toy.Toy()
    optimizer = torch.optim.SGD(single.parameters(), lr=1.0)
    (single(**toy.batch(1.0))["loss"] / 2).backward()
    optimizer.step()
    assert got["pending_warnings"] == []
    for k, v in single.state_dict().items():
        assert not torch.equal(v, before[k])
        torch.testing.assert_close(got["pending"][k], v, rtol=1e-5, atol=1e-6, msg=k)


FAKE_SRUN = """#!{python}
# stands in for slurm's srun on one machine: runs --ntasks copies of the command with the task
# variables srun sets, and fails if one of them fails
import os, subprocess, sys
args, ntasks = sys.argv[1:], 1
while args and args[0].startswith("-"):
    opt = args.pop(0)
    if opt == "-p":
        args.pop(0)
    elif opt.startswith("--ntasks="):
        ntasks = int(opt.split("=")[1])
procs = [subprocess.Popen(args, env=dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
                                         SLURM_NTASKS=str(ntasks), SLURM_NODELIST="node-[1]"))
         for i in range(ntasks)]
sys.exit(max(p.wait() for p in procs))
"""


def test_two_gloo_ranks_evaluate_every_sample_once_in_each_mode(tmp_path):
    """``tools/dist_test.sh`` (torchrun) and ``tools/slurm_test.sh`` (srun, here a stand-in)
    with several reasoning modes: 5 samples on 2 ranks (the sampler pads one), each counted
    once, with the metrics of a single-process run of the same checkpoint."""
    from coprs.apis import init_segmentor
    from coprs.cli import main

    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.test_cfg.datasets = [dict(cfg.test_cfg.datasets[0], num_samples=5)]
    cfg.test_dataloader.batch_size = 2
    cfg.model.feature_cache.root = str(tmp_path / "cache")
    cfg.dump(str(tmp_path / "cfg.py"))
    state = init_segmentor(str(TINY_CONFIG)).state_dict()
    for k in state:
        if k.startswith("decoder."):  # a checkpoint that masks differently from the config's init
            state[k] = state[k] * 3
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    args = ["--reasoning", "gold", "empty", "--max-new-tokens", "4"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, PORT="29537",
               MASTER_PORT="29539", GPUS="2", GPUS_PER_NODE="2", CPUS_PER_TASK="1",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    tools = ROOT / "tools"
    launches = {
        "torchrun": ["bash", str(tools / "dist_test.sh"), str(tmp_path / "cfg.py"),
                     str(tmp_path / "ckpt.pth"), "2"],
        "slurm": ["bash", str(tools / "slurm_test.sh"), "debug", "coprs-test",
                  str(tmp_path / "cfg.py"), str(tmp_path / "ckpt.pth")]}
    for name, launch in launches.items():
        cmd = [*launch, *args, "--work-dir", str(tmp_path / name),
               "--out", str(tmp_path / f"{name}.json")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        (tmp_path / f"{name}.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, (name, (proc.stdout + proc.stderr)[-4000:])
        assert proc.stdout.count("## reasoning modes compared") == 1  # printed by rank 0 only
    assert main(["test", str(tmp_path / "cfg.py"), str(tmp_path / "ckpt.pth"), *args,
                 "--work-dir", str(tmp_path / "one"), "--out", str(tmp_path / "one.json")]) == 0
    assert main(["test", str(tmp_path / "cfg.py"), "--reasoning", "gold",
                 "--work-dir", str(tmp_path / "init"), "--out", str(tmp_path / "init.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    init = json.loads((tmp_path / "init.json").read_text())
    # the checkpoint is what was evaluated: the config's own initialisation masks otherwise
    assert one["gold"]["shapes/test"]["gIoU"] != init["shapes/test"]["gIoU"]
    for name in launches:
        ddp = json.loads((tmp_path / f"{name}.json").read_text())
        assert list(ddp) == ["gold", "empty"]
        for mode in ddp:
            a, b = ddp[mode]["shapes/test"], one[mode]["shapes/test"]
            assert a["n"] == b["n"] == 5
            for key in ("gIoU", "cIoU", "heatmap_IoU", "format_rate"):
                assert abs(a[key] - b[key]) < 1e-5, (name, mode, key, a[key], b[key])
            path = tmp_path / name / f"per_sample_{mode}" / "shapes_test" / "per_sample.jsonl"
            ids = [json.loads(x)["sample_id"] for x in path.read_text().splitlines()]
            assert len(ids) == len(set(ids)) == 5
    # the single-process run, as if killed after two gold samples, resumed on two ranks:
    # they predict the other three and end with the same metrics (coprs test --resume)
    split = tmp_path / "one" / "per_sample_gold" / "shapes_test"
    lines = (split / "per_sample.jsonl").read_text().splitlines()
    (split / "per_sample.jsonl").unlink()
    (split / "progress").mkdir(exist_ok=True)  # it holds all 5 records: cut to 2
    (split / "progress" / "rank0.jsonl").write_text("\n".join(lines[:2]) + "\n")
    run = json.loads((split / "run.json").read_text())
    (split / "run.json").write_text(json.dumps(dict(run, complete=False)))
    proc = subprocess.run([*launches["torchrun"], "--reasoning", "gold", "--max-new-tokens", "4",
                           "--work-dir", str(tmp_path / "one"), "--resume",
                           "--out", str(tmp_path / "resumed.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "2 records of the earlier run are kept" in proc.stdout + proc.stderr
    resumed = json.loads((tmp_path / "resumed.json").read_text())["shapes/test"]
    for key in ("gIoU", "cIoU", "heatmap_IoU", "n"):
        assert abs(resumed[key] - one["gold"]["shapes/test"][key]) < 1e-5, key
    # the same records, up to a mask pixel whose logit is almost 0: the samples are batched
    # (and so padded) differently from the uninterrupted run's
    got = {r["sample_id"]: r for r in map(json.loads, (split / "per_sample.jsonl").read_text()
                                          .splitlines())}
    want = {r["sample_id"]: r for r in map(json.loads, lines)}
    assert sorted(got) == sorted(want)
    for sid, record in want.items():
        assert got[sid]["response"] == record["response"]
        assert abs(got[sid]["iou"] - record["iou"]) < 1e-3, sid
        assert abs(got[sid]["pred_area"] - record["pred_area"]) <= 2, sid


def test_a_finished_command_leaves_the_process_group(tmp_path):
    import torch.distributed as dist

    from coprs.commands.common import finish_distributed

    finish_distributed()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    try:
        assert dist.is_initialized()
        finish_distributed()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
