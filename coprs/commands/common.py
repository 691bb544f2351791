"""Shared pieces of the ``coprs`` subcommands."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

__all__ = [
    "UsageError", "add_cfg_options", "config_path", "config_stem", "exit_on_usage_error",
    "init_cpu_process_group", "load_config", "resolve_checkpoint",
]


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
    """A checkpoint file, or a training work dir (its ``last_checkpoint``); None passes."""
    if path is None:
        return None
    from ..apis import checkpoint_file

    try:
        return str(checkpoint_file(path))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc


def init_cpu_process_group() -> None:
    """For ``--launcher pytorch``: mmengine's pytorch launcher assumes CUDA (it calls
    ``torch.cuda.set_device``); on CPU, start gloo ourselves, and the Runner then skips its own
    init (SPEC §7). Needs torchrun's RANK / WORLD_SIZE."""
    import os

    import torch
    import torch.distributed as dist

    if torch.cuda.is_available() or dist.is_initialized():
        return
    if "RANK" not in os.environ:
        raise UsageError("--launcher pytorch needs torchrun (RANK/WORLD_SIZE not set)")
    dist.init_process_group(backend="gloo")
