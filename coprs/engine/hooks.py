"""Hooks and the checkpoint file backend used by coprs training (HOOKS registry)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from mmengine.dist import get_rank, is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper

from ..registry import HOOKS
from ..utils import atomic_write, state_dict_mismatch

__all__ = ["SegLossScheduleHook", "PlainCheckpointStateHook", "AtomicLocalBackend",
           "AtomicCheckpointHook", "TrainTimeBudgetHook", "TrainProgressBarHook",
           "to_plain", "history_to_plain", "history_from_plain"]


@HOOKS.register_module()
class SegLossScheduleHook(Hook):
    """Change the segmentation-loss weights at given iterations (paper: λ_d = 1.5, λ_f = 0 until
    step 1500, then λ_d = 3.0, λ_f = 10.0).

    Args:
        milestones: list of ``dict(iter=N, lambda_dice=…, lambda_focal=…)``; from iteration N
            on, the named attributes of the model's ``seg_loss`` take those values. Applied
            from the current iteration, so a resumed run gets the right weights.
    """

    priority = "NORMAL"

    def __init__(self, milestones: list[dict]) -> None:
        self.milestones = sorted((dict(m) for m in milestones), key=lambda m: m["iter"])
        self._initial: dict | None = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        loss = model.seg_loss
        keys = {k for m in self.milestones for k in m if k != "iter"}
        if self._initial is None:
            self._initial = {k: getattr(loss, k) for k in keys}
        values = dict(self._initial)
        for m in self.milestones:
            if runner.iter >= m["iter"]:
                values.update({k: v for k, v in m.items() if k != "iter"})
        for k, v in values.items():
            setattr(loss, k, float(v))


def to_plain(obj):
    """numpy scalars/arrays → Python numbers/lists, recursively (tensors and builtins kept)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def history_to_plain(buf: HistoryBuffer) -> dict:
    log, count = buf.data
    return {"__history_buffer__": True, "log": log.tolist(), "count": count.tolist(),
            "max_length": int(buf.max_length)}


def history_from_plain(d: dict) -> HistoryBuffer:
    return HistoryBuffer(d["log"], d["count"], d["max_length"])


@HOOKS.register_module()
class PlainCheckpointStateHook(Hook):
    """Make checkpoints loadable with ``torch.load(weights_only=True)`` and resumable exactly.

    mmengine saves its message hub as ``HistoryBuffer`` objects and numpy scalars, which the
    safe unpickler of torch ≥ 2.6 rejects (allow-listing them would need ``builtins.getattr``,
    which reopens code execution). Before saving, this hook converts that state to plain lists
    and numbers and adds the random states (torch, numpy, python, and the current CUDA
    device's when CUDA is in use); after loading, it restores both, whatever device the
    strategy loaded the checkpoint onto. Loading therefore stays ``weights_only=True``.
    ``meta`` also records the coprs version (``coprs_version``), the plugins loaded
    (``coprs_plugins``: entry-point name → distribution and version) and, for LoRA, what the
    adapters were trained with (``coprs_lora``: ``model.policy.lora``, and the base's
    ``model_path`` or ``tiny``), which :func:`coprs.apis.inference.load_checkpoint` checks.
    A checkpoint inside a gradient-accumulation window keeps the window's gradients so far
    (``coprs_window_grads``; under DDP averaged over the ranks, under FSDP as per-rank shard
    files it names in ``coprs_window_shards``: :class:`AtomicCheckpointHook`), which a resumed
    run puts back.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        policy = getattr(model, "policy", None)
        if getattr(policy, "uses_adapters", False):
            # LoRA: keep the adapters and every trainable head; the frozen base policy weights
            # come from model.policy.model_path again when the checkpoint is loaded, and the
            # frozen vision backbone's from its own weights (a SAM .pth) or seed, so a checkpoint
            # holds only what was trained (ViT-H alone is 2.5 GB)
            # every name of a frozen tensor, tied aliases too (a tied lm_head is the embedding)
            # (under FSDP without its wrapper prefixes, as the saved state dict has them)
            from .fsdp import plain_state

            parts = {"policy": policy, "vision_backbone": getattr(model, "vision_backbone", None)}
            frozen = {f"{prefix}.{n}" for prefix, part in parts.items() if part is not None
                      for n, p in plain_state(part, buffers=False).items()
                      if not p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                        if k not in frozen}
        hub = checkpoint.get("message_hub", {})
        hub["log_scalars"] = {k: history_to_plain(v) if isinstance(v, HistoryBuffer) else v
                              for k, v in hub.get("log_scalars", {}).items()}
        hub["runtime_info"] = to_plain(hub.get("runtime_info", {}))
        checkpoint["meta"] = to_plain(checkpoint.get("meta", {}))
        # what built the run: a checkpoint whose components come from a plugin says which
        from ..plugins import seen_plugins
        from ..utils import source_version

        checkpoint["meta"]["coprs_version"] = source_version()
        if getattr(policy, "uses_adapters", False):
            # the adapters only fit the base they were trained on, at their own scale
            cfg = runner.cfg.get("model", {}).get("policy", {})
            lora = dict(cfg.get("lora") or {})
            lora["trainable_tokens"] = list(policy.trainable_tokens)  # as resolved
            checkpoint["meta"]["coprs_lora"] = to_plain(dict(
                lora=lora, tiny=cfg.get("tiny"), model_path=policy.model_path))
        checkpoint["meta"]["coprs_plugins"] = {
            p.name: f"{p.dist} {p.version}" for p in seen_plugins() if p.status == "loaded"}
        window = _window_grads(runner, model)
        if window is not None:
            checkpoint["coprs_window_grads"] = window
        shards = getattr(getattr(runner, "optim_wrapper", None), "_coprs_window_shards", None)
        if shards is not None and shards["iter"] == runner.iter:
            checkpoint["coprs_window_shards"] = dict(world_size=shards["world_size"],
                                                     file=shards["file"])
        np_state = np.random.get_state()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": to_plain(list(_tuple_to_list(random.getstate()))),
        }
        if torch.cuda.is_initialized():
            # this process's device only: reading every device would open a context on each
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        window = checkpoint.get("coprs_window_grads")
        if window and getattr(runner, "_resume", False):
            _restore_window_grads(runner, window)
        shards = checkpoint.get("coprs_window_shards")
        if shards and getattr(runner, "_resume", False):
            _restore_window_shards(runner, shards)
        hub = checkpoint.get("message_hub")
        if hub is not None:
            hub["log_scalars"] = {
                k: history_from_plain(v) if isinstance(v, dict) and v.get("__history_buffer__")
                else v for k, v in hub.get("log_scalars", {}).items()}
        rng = checkpoint.get("rng")
        if rng is not None:
            # a strategy may load the checkpoint onto the GPU; the setters take CPU bytes
            torch.set_rng_state(rng["torch"].cpu())
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"].cpu())
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss,
                                 cached))
            random.setstate(_list_to_tuple(rng["python"]))


#: mmengine's warning on a resume inside an accumulation window, void once its gradients are back
_WINDOW_LOST = "Resumed iteration number is not divisible by `_accumulative_counts`"


def _window_grads(runner, model) -> dict[str, torch.Tensor] | None:
    """The gradients accumulated so far in an unfinished gradient-accumulation window
    (``optim_wrapper.accumulative_counts`` > 1, a checkpoint inside a window), on the CPU; None
    at a window's end (stepped and zeroed), without accumulation, under FSDP (each rank writes
    its shard to a file of its own: :func:`share_window_grads`) and in other distributed runs
    than the one below.

    mmengine saves a checkpoint on rank 0 alone (``Runner.save_checkpoint`` is ``master_only``),
    so this hook cannot gather the other ranks' gradients. Under DDP each rank holds its own
    until the window's last backward all-reduces them; :class:`AtomicCheckpointHook` averages
    them over the ranks first, on every rank (:func:`share_window_grads`), and then rank 0's are
    what every rank resumes with. Without that (another checkpoint hook) the window's gradients
    stay lost on a resume, as mmengine warns."""
    from mmengine.dist import get_world_size

    from .fsdp import is_fsdp

    wrapper = getattr(runner, "optim_wrapper", None)
    if getattr(wrapper, "_accumulative_counts", 1) <= 1 or is_fsdp(runner.model):
        return None
    if get_world_size() > 1 and getattr(wrapper, "_coprs_window_shared_at", None) != runner.iter:
        return None
    # a parameter no iteration of the window reached (an unused head) keeps no gradient:
    # AdamW would decay it under a zero one
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None}
    return grads or None


def _restore_window_grads(runner, grads: dict[str, torch.Tensor]) -> None:
    """Put a checkpoint's :func:`_window_grads` back, so the resumed window steps with the
    gradients of all its iterations, as the uninterrupted run did."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    own = dict(model.named_parameters())
    missing = sorted(set(grads) - set(own))
    if missing:
        runner.logger.warning(
            f"the checkpoint's accumulation-window gradients name {len(missing)} parameters the "
            f"model lacks (e.g. {missing[0]}); they are not restored, and the window's "
            "gradients so far are lost")
        return
    _set_window_grads(runner, own, grads)


def _tuple_to_list(x):
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x):
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, list) else x


@register_backend("atomic_local")
class AtomicLocalBackend(LocalBackend):
    """Local files written to a temporary name and renamed into place, so a crash mid-write
    never leaves a truncated checkpoint or ``last_checkpoint`` pointer."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(Path(filepath), obj)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        atomic_write(Path(filepath), obj.encode(encoding))


#: an FSDP rank's window-gradient shard beside checkpoint ``{stem}.pth`` (then ``.format(rank)``)
_WINDOW_SHARD = "{stem}.window_grads.rank{{}}.pth"


def share_window_grads(runner, checkpoint: Path) -> None:
    """Before the checkpoint ``checkpoint`` inside a gradient-accumulation window of a
    distributed run, on every rank: make the window's gradients so far something a resumed run
    can get back, though rank 0 saves the checkpoint alone.

    * DDP: replace every rank's gradients by their mean over the ranks (a collective), so rank
      0's, which the checkpoint keeps, are what every rank resumes with. The uninterrupted run
      is unchanged (up to rounding): the window's last backward averages each rank's sum
      ``G_r + g_r``, and ``mean(G) + g_r`` averages to the same.
    * FSDP: each rank holds a shard of the (already reduced) gradients; each writes its shard
      beside the checkpoint (``iter_N.window_grads.rankR.pth``, atomically), which the
      checkpoint names and a resumed run with as many ranks reads back.
    """
    from mmengine.dist import get_rank, get_world_size
    from torch.nn.parallel import DistributedDataParallel

    from .fsdp import is_fsdp
    from .loops import average_grads_over_ranks

    wrapper = getattr(runner, "optim_wrapper", None)
    if getattr(wrapper, "_accumulative_counts", 1) <= 1 or wrapper.should_update():
        return  # no accumulation, or the window ends here (stepped and zeroed)
    if isinstance(runner.model, DistributedDataParallel):
        average_grads_over_ranks([p for group in wrapper.optimizer.param_groups
                                  for p in group["params"]])
        wrapper._coprs_window_shared_at = runner.iter
    elif is_fsdp(runner.model):
        import io

        name = _WINDOW_SHARD.format(stem=checkpoint.stem)
        grads = {n: p.grad.detach().cpu().clone() for n, p in runner.model.named_parameters()
                 if p.requires_grad and p.grad is not None}
        buffer = io.BytesIO()
        torch.save(grads, buffer)
        atomic_write(checkpoint.with_name(name.format(get_rank())), buffer.getvalue())
        wrapper._coprs_window_shards = dict(iter=runner.iter, world_size=get_world_size(),
                                            file=name)


def _restore_window_shards(runner, shards: dict) -> None:
    """Put back this rank's shard of an FSDP run's window gradients (:func:`share_window_grads`)
    from beside the resumed checkpoint (or in the work dir). Every rank does, or none: a shard
    that is missing, unreadable or made with another number of ranks or parameters, on any rank,
    is warned about, and the window's gradients so far are lost, as mmengine warns."""
    from mmengine.dist import get_rank, get_world_size

    from ..utils import on_any_rank

    name = shards["file"].format(get_rank())
    resumed = getattr(runner, "_load_from", None)
    places = [Path(resumed).parent] if resumed else []
    places.append(Path(runner.work_dir))
    path = next((d / name for d in places if (d / name).is_file()), places[0] / name)
    own = dict(runner.model.named_parameters())
    grads, why = None, None
    if shards["world_size"] != get_world_size():
        why = (f"its FSDP gradient shards come from {shards['world_size']} ranks, this run has "
               f"{get_world_size()}")
    else:
        try:
            grads = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - missing or truncated: the run goes on without
            why = f"cannot read this rank's gradient shard {path} ({type(exc).__name__})"
        else:
            if any(n not in own or own[n].shape != g.shape for n, g in grads.items()):
                why = f"the gradient shard {path} does not fit this run's sharded parameters"
    if on_any_rank(why is not None):  # one rank without its shard: none restores
        runner.logger.warning(
            f"resumed inside a gradient-accumulation window: "
            f"{why or 'another rank cannot restore its gradient shard'}; the gradients of its "
            "earlier iterations are lost")
        return
    _set_window_grads(runner, own, grads)


def _set_window_grads(runner, own: dict, grads: dict) -> None:
    """Give the parameters ``own`` the gradients ``grads`` and say so; mmengine's warning that
    they are lost, which comes when the loop starts, is dropped."""
    import logging

    from mmengine.logging import MMLogger

    for name, g in grads.items():
        own[name].grad = g.to(device=own[name].device, dtype=own[name].dtype)
    logger = MMLogger.get_current_instance()

    class _Restored(logging.Filter):  # mmengine says they are lost, once, when the loop starts
        def filter(self, record):
            if _WINDOW_LOST not in record.getMessage():
                return True
            logger.removeFilter(self)
            return False

    logger.addFilter(_Restored())
    runner.logger.info(f"resumed inside a gradient-accumulation window: the gradients of its "
                       f"earlier iterations ({len(grads)} tensors) are restored from the "
                       "checkpoint")


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` whose ``last_checkpoint`` pointer is written atomically too
    (mmengine 0.10.7 writes it in place with ``open``); with
    ``backend_args=dict(backend='atomic_local')`` the checkpoint files are atomic as well, so a
    crash at any moment leaves the previous complete checkpoint and a pointer to a complete one.

    ``_save_checkpoint_with_step`` follows mmengine's, except for that last write. Before a
    checkpoint inside a gradient-accumulation window of a distributed run, every rank prepares
    its window gradients (:func:`share_window_grads`: averaged under DDP, a shard file of its
    own under FSDP), so that a resumed run gets them back.
    """

    def _save_checkpoint(self, runner) -> None:
        # on every rank; the save itself is rank 0's alone
        step = runner.epoch + 1 if self.by_epoch else runner.iter + 1
        share_window_grads(runner, Path(self.out_dir) / self.filename_tmpl.format(step))
        super()._save_checkpoint(runner)

    def _save_checkpoint_with_step(self, runner, step, meta):
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                old = self.keep_ckpt_ids.popleft()
                path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
                if is_main_process() and self.file_backend.isfile(path):
                    self.file_backend.remove(path)
                # each rank its own FSDP gradient shard of that checkpoint, if it wrote one
                old_path = Path(path)
                shard = _WINDOW_SHARD.format(stem=old_path.stem).format(get_rank())
                old_path.with_name(shard).unlink(missing_ok=True)
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args,
                               save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta,
                               by_epoch=self.by_epoch, backend_args=self.backend_args,
                               **self.args)
        if is_main_process():
            atomic_write(Path(runner.work_dir) / "last_checkpoint", str(self.last_ckpt).encode())


@HOOKS.register_module()
class TrainTimeBudgetHook(Hook):
    """End training once a wall-clock budget is spent (checked after every iteration).

    Training stops after the iteration that crosses the budget (the loop's ``stop_training``
    flag; ``after_train`` hooks still run). Used to compare assemblies under one time budget
    (``coprs bench-paradigms --budget-minutes``).

    Args:
        minutes: the budget, from the first training iteration on (model building and data
            setup excluded).
    """

    priority = "LOWEST"

    def __init__(self, minutes: float) -> None:
        if minutes <= 0:
            raise ValueError(f"TrainTimeBudgetHook needs minutes > 0, got {minutes}")
        self.seconds = 60.0 * float(minutes)
        self._start: float | None = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._start is not None and time.perf_counter() - self._start >= self.seconds:
            runner.train_loop.stop_training = True


@HOOKS.register_module()
class TrainProgressBarHook(Hook):
    """A progress bar over the training iterations (tqdm, on stderr, rank 0).

    The bar shows the stage of the current iteration (``train (sft)`` / ``train (grpo)``), the
    iterations done of ``max_iters`` (from the resumed iteration after ``--resume``), the rate,
    the time left and the latest values of ``keys`` that the iteration logged. The logger's
    lines still carry every value.

    Args:
        keys: logged values shown after the bar, when the iteration has them.
        disable: None (default) shows the bar only when stderr is a terminal, so log files and
            CI output stay clean; False always shows it; True never.
    """

    priority = "VERY_LOW"

    def __init__(self, keys: tuple[str, ...] = ("loss", "reward/mask"),
                 disable: bool | None = None) -> None:
        self.keys = tuple(keys)
        self.disable = disable
        self.bar = None

    def before_train(self, runner) -> None:
        if not is_main_process():
            return
        from tqdm import tqdm

        self.bar = tqdm(total=runner.max_iters, initial=runner.iter, desc="train",
                        unit="it", dynamic_ncols=True, disable=self.disable)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.bar is None:
            return
        if self.bar.disable:  # not a terminal: nothing to draw
            self.bar.update(1)
            return
        outputs = outputs or {}

        def value(v) -> float:
            return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)

        stage = "grpo" if value(outputs.get("stage_grpo", 0.0)) > 0 else "sft"
        self.bar.set_description(f"train ({stage})", refresh=False)
        shown = {k: f"{value(outputs[k]):.4g}" for k in self.keys if k in outputs}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def after_train(self, runner) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@HOOKS.register_module()
class CheckpointMatchHook(Hook):
    """Say in the run's log how a loaded checkpoint fits the model (``load_from``, ``--resume``).

    mmengine loads ``load_from`` non-strictly: tensors the checkpoint lacks keep their initial
    values, tensors of another shape are skipped, and its own report goes to stdout only. This
    hook compares the checkpoint with the model before it is loaded and writes the result to the
    run's logger (its log file): one INFO line when every trainable tensor is there, else a
    WARNING with the trainable parameters the checkpoint lacks, the keys the model does not
    have and the shape mismatches (:func:`coprs.utils.state_dict_mismatch`; frozen parameters
    and buffers may be absent, as they load from their own weights). ``coprs train`` adds it to
    every run whose config does not name it.

    Args:
        strict: make a mismatch an error, raised before anything is loaded.
        loaded_elsewhere: key prefixes that come from elsewhere and are not checked
            (``coprs train`` sets ``("policy.",)`` when ``load_from`` is an export folder, whose
            policy is built from its ``policy/`` folder).
    """

    priority = "VERY_LOW"

    def __init__(self, strict: bool = False, loaded_elsewhere: tuple[str, ...] = ()) -> None:
        self.strict = strict
        self.loaded_elsewhere = tuple(loaded_elsewhere)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, "strategy", None) is not None:  # FlexibleRunner: sharded names
            runner.logger.info("CheckpointMatchHook: checkpoint keys are not compared under "
                               "FlexibleRunner (its strategy loads and reports them)")
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = checkpoint.get("state_dict", checkpoint)
        state = {k[len("module."):] if k.startswith("module.") else k: v
                 for k, v in state.items()}  # mmengine's revise_keys
        bad = state_dict_mismatch(model, state, self.loaded_elsewhere)
        source = getattr(runner, "_load_from", None) or "the checkpoint"
        if not any(bad.values()):
            trainable = sum(1 for p in model.parameters() if p.requires_grad)
            runner.logger.info(f"{source}: every trainable tensor of the model is in it "
                               f"({trainable} trainable parameters), with its shape")
            return
        lines = [f"{source} does not fit the model; mmengine loads it in part:"]
        for name, what in (("missing", "trainable parameters it lacks (they keep their initial "
                                        "values)"),
                           ("unexpected", "keys the model does not have (ignored)"),
                           ("shapes", "tensors of another shape (not loaded)")):
            if bad[name]:
                shown = ", ".join(bad[name][:8]) + (", ..." if len(bad[name]) > 8 else "")
                lines.append(f"  {len(bad[name])} {what}: {shown}")
        lines.append("  If this is not meant, use the config the checkpoint was trained with; "
                     "CheckpointMatchHook(strict=True) makes this an error.")
        message = "\n".join(lines)
        if self.strict:
            raise ValueError(message)
        runner.logger.warning(message)
