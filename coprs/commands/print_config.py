"""``coprs print-config``: the config a command would run, with its bases and overrides merged,
or the config a checkpoint was trained with, or the one stored with an export."""

from __future__ import annotations

from pathlib import Path

from .common import UsageError, add_cfg_options, load_config, read_checkpoint

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "print-config",
        help="print a config with its _base_ files and --cfg-options merged",
        description="Load CONFIG as train/test/infer do (its _base_ chain, then --cfg-options) "
                    "and print the result as one Python config; --save-path also writes it, "
                    "a file that loads without the bases (what a run saves in its work dir). "
                    "Given a checkpoint (.pth, e.g. from coprs train or coprs publish-model) or "
                    "a training work dir instead, print the config it was trained with (the "
                    "checkpoint's meta); given a coprs export-hf folder, the config stored with "
                    "it (its config.py).",
        epilog="example: coprs print-config configs/coprs/coprs_tiny_shapes_cpu.py "
               "--cfg-options train_cfg.stages.1.iters=100 --save-path work_dirs/flat.py",
    )
    p.add_argument("config", help="config file (or PLUGIN::path.py), or a checkpoint / training "
                                  "work dir / coprs export-hf folder whose config to print")
    p.add_argument("--save-path", metavar="FILE", help="also write the merged config here (.py)")
    add_cfg_options(p)
    p.set_defaults(func=run)


def config_of_checkpoint(checkpoint: str, cfg_options=None):
    """The config a ``coprs train`` checkpoint (or a work dir's last one) was trained with: the
    merged config text mmengine keeps in its ``meta``, read with ``weights_only=True`` and the
    tensors memory-mapped."""
    from mmengine.config import Config

    path, ckpt = read_checkpoint(checkpoint, mmap=True)
    text = ckpt.get("meta", {}).get("cfg") if isinstance(ckpt, dict) else None
    if not isinstance(text, str):
        raise UsageError(f"checkpoint '{path}' carries no config (meta['cfg']); only checkpoints "
                         "written by coprs train (or published from one) do")
    cfg = Config.fromstring(text, file_format=".py")
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def config_of_export(export: Path, cfg_options=None):
    """The config stored with a ``coprs export-hf`` folder (its ``config.py``)."""
    path = export / "config.py"
    if not path.is_file():
        raise UsageError(f"coprs export '{export}' holds no config.py; print the config it was "
                         "exported from instead (its coprs_export.json names it), or export "
                         "the checkpoint again (coprs export-hf writes config.py)")
    return load_config(str(path), cfg_options)


def run(args) -> int:
    from coprs.apis import export_dir

    if args.save_path and Path(args.save_path).suffix != ".py":
        raise UsageError(f"--save-path '{args.save_path}' must end in .py (a Python config)")
    given = Path(args.config)
    try:
        export = export_dir(given)
    except FileNotFoundError as exc:  # a manifest, but not a complete export
        raise UsageError(str(exc)) from exc
    if export is not None:
        cfg = config_of_export(export, args.cfg_options)
    elif given.suffix == ".pth" or given.is_dir():
        cfg = config_of_checkpoint(args.config, args.cfg_options)
    else:
        cfg = load_config(args.config, args.cfg_options)
    print(cfg.pretty_text)
    if args.save_path:
        path = Path(args.save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg.dump(str(path))
        print(f"# wrote {path}")
    return 0
