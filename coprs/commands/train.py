"""``coprs train``: train a config with mmengine's Runner (warm-up and/or GRPO + segmentation)."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import (
    UsageError,
    add_cfg_options,
    add_launcher,
    check_checkpoint_readable,
    config_stem,
    finish_distributed,
    init_distributed,
    load_config,
)

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a config (supervised warm-up and/or GRPO + segmentation)",
        description="Build the Runner from a config and train. Checkpoints are written "
                    "atomically to the work dir; --resume continues from the latest one "
                    "(loaded with weights_only=True).",
        epilog="example: coprs train configs/coprs/coprs_tiny_shapes_cpu.py "
               "--work-dir work_dirs/tiny  (distributed: tools/dist_train.sh CONFIG 8, or "
               "tools/slurm_train.sh PARTITION JOB_NAME CONFIG under slurm)",
    )
    p.add_argument("config", help="config file")
    p.add_argument("--work-dir", help="folder for logs and checkpoints")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from CKPT, or from the latest checkpoint in the work dir")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast through mmengine's AmpOptimWrapper (CUDA only), as the "
                        "8-GPU config sets it")
    add_launcher(p)
    add_cfg_options(p)
    p.set_defaults(func=run)


def enable_amp(cfg) -> None:
    """``--amp``: train under bf16 autocast (``AmpOptimWrapper(dtype='bfloat16')``, no loss
    scaling) with the config's optimiser, clipping and parameter groups; fp32 weights."""
    if cfg.optim_wrapper.get("type", "OptimWrapper") not in ("OptimWrapper", "AmpOptimWrapper"):
        raise UsageError(f"--amp replaces OptimWrapper by AmpOptimWrapper, but the config's "
                         f"optim_wrapper is {cfg.optim_wrapper.type}; set its dtype in the config")
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.setdefault("dtype", "bfloat16")
    if cfg.optim_wrapper.dtype == "bfloat16":  # bf16 has fp32's range: no scaler to keep
        cfg.optim_wrapper.setdefault("loss_scale", dict(enabled=False))


def start_from_export(cfg):
    """``load_from`` naming a ``coprs export-hf`` folder: the policy is built from its
    ``policy/`` folder (LoRA, if the config asks for it, trains new adapters on top) and
    mmengine loads the prior and decoder from its ``seg_head.pth``. Returns the folder (None
    when ``load_from`` names something else)."""
    from coprs.apis import apply_export, export_dir

    try:
        export = export_dir(cfg.get("load_from"))
        if export is not None:
            apply_export(cfg, export, clear_lora=False)
            cfg.load_from = str(export / "seg_head.pth")
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"load_from: {exc}") from exc
    return export


#: what a checkpoint needs for mmengine to resume from it (the optimiser state is optional:
#: a checkpoint hook with save_optimizer=False leaves it out)
RESUME_KEYS = ("state_dict", "message_hub", "meta")


def check_start_checkpoint(cfg, export=None) -> None:
    """Fail before any compute when the checkpoint a run starts from (``load_from``, ``--resume``
    or, for ``--resume`` without a file, the work dir's ``last_checkpoint``) is missing or cannot
    be read with ``torch.load(weights_only=True)``. A resumed run also needs the reference policy
    snapshot of a GRPO stage it resumes in (:func:`check_reference_snapshot`)."""
    from coprs.apis import checkpoint_file

    what, path = "load_from", cfg.get("load_from")
    if cfg.get("resume"):
        what = "--resume"
        pointer = Path(cfg.work_dir) / "last_checkpoint"
        if path is None and not pointer.is_file():
            print(f"warning: --resume: no last_checkpoint in the work dir {cfg.work_dir}; "
                  "training starts from iteration 0 (give --work-dir of the run to continue, or "
                  "--resume CKPT)", file=sys.stderr)
            return
        if path is None:  # the work dir's newest checkpoint (below)
            what, path = f"--resume ({pointer})", cfg.work_dir
    if path is None or (export is not None and not cfg.get("resume")):
        return  # an export's seg_head.pth is checked against the model (check_export_heads)
    if Path(path).expanduser().is_dir():  # a training work dir: the file its pointer names
        # (mmengine would follow the pointer's absolute path, even after the folder moved)
        try:
            path = checkpoint_file(path)
        except FileNotFoundError as exc:
            raise UsageError(f"{what}: {exc}") from exc
        cfg.load_from = str(path)
    if not Path(path).expanduser().is_file():
        raise UsageError(f"{what} '{path}' does not exist; give a local checkpoint file (coprs "
                         "never downloads)")
    state = check_checkpoint_readable(Path(path).expanduser(), what)
    if not cfg.get("resume"):
        check_lora_start(cfg, path, state)
    if cfg.get("resume"):
        missing = [k for k in RESUME_KEYS if not (isinstance(state, dict) and k in state)]
        if missing:
            raise UsageError(
                f"{what} '{path}' holds no training state (no {', '.join(missing)}): resume "
                "needs a checkpoint written by coprs train. To start a new run from its weights, "
                f"use --cfg-options load_from={path}")
        lora_in_file = any(".lora_" in k for k in state["state_dict"])
        lora_in_cfg = bool((cfg.model.get("policy") or {}).get("lora"))
        if lora_in_file != lora_in_cfg:
            raise UsageError(
                f"{what} '{path}' was trained {'with' if lora_in_file else 'without'} LoRA "
                f"adapters and the config {'has' if lora_in_cfg else 'has no'} "
                "model.policy.lora: resume with the options of the run that wrote it (its "
                f"config: coprs print-config {path})")
        check_token_rows(cfg, what, path, state["state_dict"])
        meta = state.get("meta")
        check_reference_snapshot(cfg, Path(path).expanduser(),
                                 int((meta or {}).get("iter", 0) or 0))


def check_lora_start(cfg, path, state) -> None:
    """A LoRA config (``model.policy.lora``) may not ``load_from`` a checkpoint file that holds
    policy weights other than adapters (a full fine-tune's): mmengine would load them into the
    frozen base and train on them, but a LoRA checkpoint keeps only the adapters, so the run's
    checkpoints could not be loaded back as trained. Its ``coprs export-hf`` folder can be the
    LoRA base instead (:func:`start_from_export`)."""
    if not (cfg.model.get("policy") or {}).get("lora") or not isinstance(state, dict):
        return
    weights = state.get("state_dict", state)
    if not isinstance(weights, dict):
        return
    from coprs.policies.adapters import is_adapter_weight

    base = [k for k in map(str, weights)  # as mmengine loads it: a DDP "module." prefix off
            if k.removeprefix("module.").startswith("policy.") and not is_adapter_weight(k)]
    if base:
        raise UsageError(
            f"load_from '{path}' holds policy weights besides LoRA adapters (e.g. {base[0]}), "
            "which a run with model.policy.lora would train on but not save (its checkpoints "
            f"keep only the adapters): export it first (coprs export-hf CONFIG {path} --out DIR, "
            "CONFIG being the config it was trained with) and set load_from=DIR, which makes the "
            "export the LoRA base")
    if any(".lora_" in str(k) for k in weights):
        check_token_rows(cfg, "load_from", path, weights)


def check_token_rows(cfg, what: str, path, weights: dict) -> None:
    """A LoRA checkpoint and a LoRA config must agree on whether the added tokens' rows train
    (``model.policy.lora.trainable_tokens``, default True): mmengine loads non-strictly, so rows
    missing from the file would silently start again from the base rows, and rows in the file
    the model lacks would be dropped."""
    lora = (cfg.model.get("policy") or {}).get("lora")
    if not lora:
        return
    from coprs.policies.adapters import is_token_row

    in_file = any(is_token_row(str(k)) for k in weights)
    in_cfg = bool(lora.get("trainable_tokens", True))  # True or a list of tokens
    if in_file != in_cfg:
        raise UsageError(
            f"{what} '{path}' holds LoRA adapters {'with' if in_file else 'without'} trained "
            f"rows for the added tokens, and the config trains {'none' if in_file else 'them'}: "
            "set --cfg-options model.policy.lora.trainable_tokens="
            f"{'True' if in_file else 'False'} (checkpoints written before coprs trained those "
            "rows have none)")


def check_reference_snapshot(cfg, checkpoint: Path, resumed_iter: int) -> None:
    """A run resumed inside a GRPO stage loads the frozen reference policy snapshotted at the
    stage's start (``<work_dir>/reference_policy.pth``; under LoRA the adapters then, or nothing
    for adapters off). When it is not in the work dir but next
    to the checkpoint (a resume into a new work dir), it is copied over; when it is nowhere, or
    cannot be read, that is an error now rather than after the model is built."""
    import shutil

    from coprs.engine.loops import grpo_start as first_grpo_iter

    lora = bool((cfg.model.get("policy") or {}).get("lora"))
    grpo_start = first_grpo_iter(cfg.train_cfg.get("stages"))
    if grpo_start is None or resumed_iter <= grpo_start:
        return  # the snapshot is taken when the GRPO stage starts
    snapshot = Path(cfg.work_dir) / "reference_policy.pth"
    beside = checkpoint.parent / "reference_policy.pth"
    if not snapshot.is_file():
        if not beside.is_file():
            if lora:  # a LoRA run from before adapter snapshots: adapters off, the loop says so
                return
            raise UsageError(
                f"--resume '{checkpoint}' is at iteration {resumed_iter}, inside the GRPO stage "
                f"that started at {grpo_start}, which needs the reference policy snapshotted then: "
                f"neither {snapshot} nor {beside} exists. Copy that run's reference_policy.pth "
                "into the work dir, or resume from a checkpoint before the GRPO stage")
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(beside, snapshot)
        print(f"--resume: copied the GRPO reference policy snapshot {beside} to {snapshot}",
              file=sys.stderr)
    check_checkpoint_readable(snapshot, "the GRPO reference policy snapshot")


def add_checkpoint_match_hook(cfg, export=None) -> None:
    """Report in the run's log how ``load_from`` / ``--resume`` fits the model
    (:class:`~coprs.engine.CheckpointMatchHook`), unless the config names the hook itself."""
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(isinstance(h, dict) and h.get("type") in ("CheckpointMatchHook",
                                                         "coprs.CheckpointMatchHook")
               for h in [*hooks, *(cfg.get("default_hooks") or {}).values()]):
        hooks.append(dict(type="CheckpointMatchHook",
                          loaded_elsewhere=("policy.",) if export is not None else ()))
        cfg.custom_hooks = hooks


def check_weight_paths(cfg) -> None:
    """Fail before any compute when a configured weight file or folder does not exist, is a
    folder where a file belongs (or the other way round), or, for a ``.pth``, cannot be read with
    ``torch.load(weights_only=True)``."""
    model = cfg.model
    checks = [("model.policy.model_path", model.get("policy", {}).get("model_path")),
              ("model.vision_backbone.checkpoint",
               model.get("vision_backbone", {}).get("checkpoint")),
              ("model.decoder.sam_checkpoint", model.get("decoder", {}).get("sam_checkpoint"))]
    for key, path in checks:
        if path is None:
            continue
        where = Path(path).expanduser()
        if not where.exists():
            raise UsageError(f"{key} '{path}' does not exist; put the weights there or pass "
                             f"--cfg-options {key}=/path/on/disk")
        if key == "model.policy.model_path":
            if not where.is_dir():
                raise UsageError(f"{key} '{path}' is a file; give the folder of a transformers "
                                 "checkpoint (config.json, weights, tokenizer)")
        elif not where.is_file():
            raise UsageError(f"{key} '{path}' is a folder; give the checkpoint file (.pth) in it")
        else:  # read now (tensors mapped, not loaded) rather than after the policy is built
            check_checkpoint_readable(where, key, "give the weights file (.pth) torch.save "
                                                  "wrote, e.g. the official SAM checkpoint")


def run(args) -> int:
    from mmengine.runner import Runner

    from coprs.apis import checkpoint_file, export_dir
    from coprs.engine.loops import check_train_cfg
    from coprs.utils import register_all_modules

    cfg = load_config(args.config, args.cfg_options)
    if cfg.get("train_cfg") is None:
        raise UsageError(f"config '{args.config}' has no train_cfg")
    export = start_from_export(cfg)
    check_weight_paths(cfg)
    try:
        check_train_cfg(cfg.train_cfg)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or str(
        Path("work_dirs") / config_stem(args.config))
    cfg.launcher = args.launcher
    if args.amp:
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--amp needs a CUDA GPU (mmengine's AmpOptimWrapper); train in "
                             "fp32 on this machine")
        enable_amp(cfg)
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if export_dir(args.resume) is not None:
            raise UsageError(f"'{args.resume}' is a coprs export: weights without a training "
                             "state. Start a new run from it with --cfg-options "
                             f"load_from={args.resume}")
        try:  # a file, or a work dir: the checkpoint its last_checkpoint names
            resume = checkpoint_file(args.resume)
        except FileNotFoundError as exc:
            raise UsageError(f"--resume: {exc}") from exc
        cfg.resume, cfg.load_from = True, str(resume)
    check_start_checkpoint(cfg, export)
    add_checkpoint_match_hook(cfg, export)
    if args.launcher != "none":
        init_distributed(args.launcher)
    register_all_modules()
    if "runner_type" in cfg:  # e.g. FlexibleRunner with an FSDP strategy (GPU configs)
        from mmengine.registry import RUNNERS

        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    if export is not None and cfg.load_from is not None:  # not when resuming
        from coprs.apis import check_export_heads

        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        try:
            check_export_heads(model, export)
        except ValueError as exc:
            raise UsageError(f"load_from: {exc}") from exc
    runner.train()
    finish_distributed()
    return 0

