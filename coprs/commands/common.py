"""Shared pieces of the ``coprs`` subcommands."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

__all__ = [
    "LAUNCHERS", "UsageError", "add_cfg_options", "add_launcher", "config_path", "config_stem",
    "exit_on_usage_error", "init_distributed", "load_config", "resolve_checkpoint",
    "config_or_export", "read_jsonl",
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


def add_cfg_options(p) -> None:
    """Add mmengine's ``--cfg-options KEY=VALUE ...``."""
    from mmengine.config import DictAction

    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config keys, e.g. model.policy.model_path=/models/qwen")


def config_path(path: str) -> Path:
    """A config file: a path, or ``PLUGIN::relative/path.py`` for a config a plugin ships."""
    if "::" in path:
        from coprs.plugins import resolve_config

        try:
            return resolve_config(path)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
    if not Path(path).is_file():
        raise UsageError(f"config '{path}' does not exist")
    return Path(path)


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
    if not p.is_file():
        raise UsageError(f"input JSONL '{path}' does not exist")
    items = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or "image" not in item or "instruction" not in item:
                raise ValueError('expected {"image": ..., "instruction": ...}')
            if not isinstance(item.get("response", ""), str):
                raise ValueError('"response" must be a string')
            items.append((n, item, None))
        except ValueError as exc:
            items.append((n, None, f"{path}:{n}: {exc}"))
    return items


def add_launcher(parser) -> None:
    """The ``--launcher`` option of ``coprs train`` and ``coprs test``."""
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none",
                        help="distributed launcher: 'pytorch' under torchrun "
                             "(tools/dist_train.sh), 'slurm' under srun (tools/slurm_train.sh)")


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
