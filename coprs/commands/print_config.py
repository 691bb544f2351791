"""``coprs print-config``: the config a command would run, with its bases and overrides merged."""

from __future__ import annotations

from pathlib import Path

from .common import UsageError, add_cfg_options, load_config

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "print-config",
        help="print a config with its _base_ files and --cfg-options merged",
        description="Load CONFIG as train/test/infer do (its _base_ chain, then --cfg-options) "
                    "and print the result as one Python config; --save-path also writes it, "
                    "a file that loads without the bases (what a run saves in its work dir).",
        epilog="example: coprs print-config configs/coprs/coprs_tiny_shapes_cpu.py "
               "--cfg-options train_cfg.stages.1.iters=100 --save-path work_dirs/flat.py",
    )
    p.add_argument("config", help="config file (or PLUGIN::path.py)")
    p.add_argument("--save-path", metavar="FILE", help="also write the merged config here (.py)")
    add_cfg_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_config(args.config, args.cfg_options)
    print(cfg.pretty_text)
    if args.save_path:
        path = Path(args.save_path)
        if path.suffix != ".py":
            raise UsageError(f"--save-path '{path}' must end in .py (a Python config)")
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg.dump(str(path))
        print(f"# wrote {path}")
    return 0
