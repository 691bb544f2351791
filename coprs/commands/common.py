"""Shared pieces of the ``coprs`` subcommands."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from ..utils import torch_load_reason

__all__ = [
    "LAUNCHERS", "UsageError", "add_cfg_options", "key_value_action", "add_launcher", "config_path", "config_stem",
    "exit_on_usage_error", "init_distributed", "load_config", "resolve_checkpoint",
    "config_or_export", "read_jsonl", "torch_load_reason", "check_checkpoint_readable",
    "check_checkpoint_arg",
    "finish_distributed", "read_checkpoint",
]

#: ``--launcher`` choices: ``pytorch`` under torchrun (``tools/dist_train.sh``), ``slurm`` under
#: srun (``tools/slurm_train.sh``)
LAUNCHERS = ("none", "pytorch", "slurm")


class UsageError(Exception):
    """A mistake in what the user passed; reported as one line, exit code 2."""


def exit_on_usage_error(main):
    """Decorate a standalone tool's ``main(argv)``: a :class:`UsageError` prints
    ``error: …`` to stderr and returns 2, as the ``coprs`` subcommands do."""

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapped


@functools.cache
def key_value_action():
    """mmengine's ``DictAction`` (``KEY=VALUE ...`` into a dict), except that an item without
    ``=`` is a usage error naming it rather than a traceback. A function, so that mmengine is
    imported only by commands that take such options."""
    import argparse

    from mmengine.config import DictAction

    class KeyValueAction(DictAction):
        def __call__(self, parser, namespace, values, option_string=None):
            for item in values:
                if "=" not in item or item.startswith("="):
                    raise argparse.ArgumentError(
                        self, f"'{item}' is not KEY=VALUE (e.g. train_cfg.stages.0.iters=100)")
            super().__call__(parser, namespace, values, option_string)

    return KeyValueAction


def add_cfg_options(p) -> None:
    """Add mmengine's ``--cfg-options KEY=VALUE ...`` (:func:`key_value_action`)."""
    p.add_argument("--cfg-options", nargs="+", action=key_value_action(), metavar="KEY=VALUE",
                   help="override config keys, e.g. model.policy.model_path=/models/qwen")


def config_path(path: str) -> Path:
    """A config file: a path, or ``PLUGIN::relative/path.py`` for a config a plugin ships
    (:func:`coprs.apis.inference.config_file` checks it; its errors become UsageErrors)."""
    if "::" in path:
        from coprs.plugins import resolve_config

        try:
            return resolve_config(path)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
    from coprs.apis.inference import config_file

    try:
        return config_file(path)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def config_stem(path: str) -> str:
    """The config's file name without ``.py`` (the default work dir name), ``PLUGIN::`` dropped."""
    return Path(path.rpartition("::")[2]).stem


def load_config(path: str, cfg_options=None):
    """``Config.fromfile`` with ``--cfg-options`` merged; a missing file is a UsageError.

    ``path`` may name a plugin's config as ``PLUGIN::relative/path.py`` (see :func:`config_path`).
    """
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path(path)))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def resolve_checkpoint(path: str | None) -> str | None:
    """A checkpoint file, a training work dir (its ``last_checkpoint``) or a ``coprs export-hf``
    folder (kept as the folder); None passes."""
    if path is None:
        return None
    from ..apis import checkpoint_file, export_dir

    try:
        if export_dir(path) is not None:
            return str(path)
        return str(checkpoint_file(path))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc


def read_checkpoint(checkpoint, mmap: bool = False) -> tuple[Path, object]:
    """(the file, what it holds) for a checkpoint file or a training work dir (its
    ``last_checkpoint``), read with ``torch.load(weights_only=True)``; ``mmap`` maps the tensors
    instead of reading them. A missing or unreadable file is a :class:`UsageError` naming it,
    and a file that is no checkpoint at all (a config, a ``last_checkpoint`` pointer, a cut-short
    zip) is named for what it is."""

    from coprs.apis.inference import check_checkpoint_file, checkpoint_file, load_torch_file

    advice = "give a .pth written by coprs train"
    try:
        path = checkpoint_file(checkpoint)
        check_checkpoint_file(path, advice=advice)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        return path, load_torch_file(path, mmap=mmap, advice=advice)
    except ValueError as exc:  # names the file and torch's reason
        raise UsageError(str(exc)) from exc.__cause__


def check_checkpoint_readable(path: str | Path, what: str, advice: str | None = None):
    """Fail before any compute unless ``torch.load(path, weights_only=True)`` reads the file, as
    mmengine will when it loads it (torch >= 2.6). Tensors are memory-mapped, not read, so a
    checkpoint of many GB costs little here. Returns what the file holds (tensors mapped).

    Args:
        path: the checkpoint file.
        what: how the user named it, for the message (``"--resume"``, ``"load_from"``).
        advice: what to give instead of a file that is no checkpoint at all (default: a coprs
            checkpoint, work dir or export).
    """
    import pickle

    from coprs.apis.inference import CHECKPOINT_ADVICE, check_checkpoint_file, load_torch_file

    try:  # a config, a last_checkpoint pointer, a cut-short zip: named for what it is
        check_checkpoint_file(path, what, advice or CHECKPOINT_ADVICE)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        return load_torch_file(path, what, mmap=True)
    except ValueError as error:  # worded here for the command line, by what torch said
        exc = error.__cause__ or error
    if isinstance(exc, pickle.UnpicklingError):
        raise UsageError(
            f"{what} '{path}' cannot be read with torch.load(weights_only=True) "
            f"({torch_load_reason(exc)}). coprs loads checkpoints only that way, so that a file "
            "cannot run code; checkpoints of coprs train load so (PlainCheckpointStateHook "
            "saves plain state). For another file, save its state_dict alone, as a dict of "
            "tensors, and give that file instead") from exc
    raise UsageError(f"{what} '{path}' is not a readable checkpoint ({torch_load_reason(exc)})"
                     ) from exc


def check_checkpoint_arg(checkpoint: str, what: str = "--checkpoint") -> None:
    """:func:`check_checkpoint_readable` for a checkpoint argument as :func:`resolve_checkpoint`
    gives it: the file, or for a ``coprs export-hf`` folder its ``seg_head.pth`` (``coprs
    infer``, ``demo`` and ``test``, before the model is built)."""
    from coprs.apis import export_dir

    export = export_dir(checkpoint)
    check_checkpoint_readable(export / "seg_head.pth" if export is not None else Path(checkpoint),
                              what)


def check_device(device: str) -> str:
    """``--device`` checked before a model is built: a torch device string, and a CUDA device
    only where one is visible."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): "
                         f"{exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible")
    return device


def config_or_export(config: str | None, checkpoint: str | None) -> str:
    """``--config``, or when it is left out and ``--checkpoint`` is a ``coprs export-hf`` folder,
    that folder's ``config.py``."""
    if config is not None:
        return config
    from ..apis import export_dir

    try:
        export = export_dir(checkpoint)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if export is not None and (export / "config.py").is_file():
        return str(export / "config.py")
    raise UsageError("give --config (only a coprs export-hf folder as --checkpoint brings its "
                     "own config.py)")


def read_jsonl(path: str) -> list[tuple[int, dict | None, str | None]]:
    """(line number, item or None, error or None) for each non-blank line of a JSON-lines file
    of ``{"image": ..., "instruction": ...}`` objects (``"response"``, if present, a string)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"input JSONL '{path}' is a folder; give a JSON-lines file")
    if not p.is_file():
        raise UsageError(f"input JSONL '{path}' does not exist")
    items = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise ValueError('expected a JSON object {"image": ..., "instruction": ...}')
            missing = [k for k in ("image", "instruction") if k not in item]
            if missing:
                raise ValueError(f'missing {missing}; expected {{"image": ..., '
                                 '"instruction": ...}')
            if not isinstance(item.get("response", ""), str):
                raise ValueError('"response" must be a string')
            items.append((n, item, None))
        except ValueError as exc:
            items.append((n, None, f"{path}:{n}: {exc}"))
    return items


def add_launcher(parser, job: str = "train") -> None:
    """The ``--launcher`` option of ``coprs train`` and ``coprs test`` (``job``: which of the
    two, for the launch scripts the help names)."""
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none",
                        help=f"distributed launcher: 'pytorch' under torchrun "
                             f"(tools/dist_{job}.sh), 'slurm' under srun (tools/slurm_{job}.sh)")


def slurm_env(environ=None) -> None:
    """Set torch's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the task
    variables srun gives, as mmengine's slurm launcher does on GPUs: the master is the first
    host of ``SLURM_NODELIST`` (``scontrol show hostname``) unless ``MASTER_ADDR`` is set, and
    the port ``MASTER_PORT`` or 29500."""
    import os
    import subprocess

    env = os.environ if environ is None else environ
    missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST") if k not in env]
    if missing:
        raise UsageError(f"--launcher slurm needs srun ({', '.join(missing)} not set); run "
                         "tools/slurm_train.sh PARTITION JOB_NAME CONFIG, or use --launcher "
                         "pytorch under torchrun")
    if "MASTER_ADDR" not in env:
        try:
            hosts = subprocess.run(["scontrol", "show", "hostname", env["SLURM_NODELIST"]],
                                   capture_output=True, text=True, check=True).stdout.split()
        except (OSError, subprocess.CalledProcessError) as exc:
            raise UsageError(f"cannot find the master host of SLURM_NODELIST="
                             f"'{env['SLURM_NODELIST']}' with scontrol ({exc}); set MASTER_ADDR "
                             "to the first node's address") from exc
        if not hosts:
            raise UsageError(f"scontrol lists no host for SLURM_NODELIST="
                             f"'{env['SLURM_NODELIST']}'; set MASTER_ADDR")
        env["MASTER_ADDR"] = hosts[0]
    env.setdefault("MASTER_PORT", "29500")
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", env["SLURM_PROCID"])


def init_distributed(launcher: str = "pytorch") -> None:
    """For ``--launcher pytorch|slurm``: check the launcher's variables are there (torchrun's
    RANK / WORLD_SIZE; srun's task variables, mapped by :func:`slurm_env`) before any compute.
    With CUDA, mmengine's launcher then starts NCCL, one GPU per process. On CPU it cannot (it
    calls ``torch.cuda.set_device``): start gloo here, and the Runner skips its own init
    (SPEC §7)."""
    import os

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if launcher == "slurm":
        slurm_env()
    if "RANK" not in os.environ:
        raise UsageError("--launcher pytorch needs torchrun (RANK/WORLD_SIZE not set); run "
                         "tools/dist_train.sh CONFIG GPUS")
    if not torch.cuda.is_available():
        dist.init_process_group(backend="gloo")


def finish_distributed() -> None:
    """The end of a distributed command: wait for every rank, then leave the process group.
    torch asks for ``destroy_process_group`` before exit; left to the interpreter's teardown,
    the communication threads can abort a rank that has finished its work."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":  # this rank's GPU, not one NCCL would guess
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
        dist.destroy_process_group()
