"""Shared pieces of the ``coprs`` subcommands."""

from __future__ import annotations

from pathlib import Path

__all__ = ["UsageError", "add_cfg_options", "load_config", "resolve_checkpoint"]


class UsageError(Exception):
    """A mistake in what the user passed; reported as one line, exit code 2."""


def add_cfg_options(p) -> None:
    """Add mmengine's ``--cfg-options KEY=VALUE ...``."""
    from mmengine.config import DictAction

    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config keys, e.g. model.policy.model_path=/models/qwen")


def load_config(path: str, cfg_options=None):
    """``Config.fromfile`` with ``--cfg-options`` merged; a missing file is a UsageError."""
    from mmengine.config import Config

    if not Path(path).is_file():
        raise UsageError(f"config '{path}' does not exist")
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def resolve_checkpoint(path: str | None) -> str | None:
    """A checkpoint file, or a training work dir (its ``last_checkpoint``); None passes."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        pointer = p / "last_checkpoint"
        if not pointer.is_file():
            raise UsageError(f"'{path}' is a folder without a last_checkpoint file; give a "
                             "checkpoint file or a training work dir")
        p = Path(pointer.read_text().strip())
    if not p.is_file():
        raise UsageError(f"checkpoint '{p}' does not exist")
    return str(p)
