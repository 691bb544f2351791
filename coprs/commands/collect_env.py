"""``coprs collect-env``: the facts a bug report needs (versions, devices, plugins)."""

from __future__ import annotations

import json
from importlib import metadata

__all__ = ["add_parser", "run", "collect"]

#: distributions whose version a report names ('-' when not installed)
PACKAGES = ("transformers", "tokenizers", "peft", "segment-anything", "timm", "pycocotools",
            "pluggy", "numpy", "pillow", "matplotlib", "vllm", "tensorboard", "gradio", "mmsegmentation",
            "mmcv")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "collect-env",
        help="print versions, devices and plugins for a bug report",
        description="mmengine's collect_env (platform, Python, CUDA, GPUs, compilers, PyTorch, "
                    "TorchVision, MMEngine) plus coprs, the libraries it builds on and the "
                    "installed coprs plugins with their status.",
        epilog="example: coprs collect-env   (or: coprs collect-env --json > env.json)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def collect() -> dict:
    """Ordered facts: mmengine's environment, then coprs's packages and plugins."""
    from mmengine.utils.dl_utils import collect_env

    from coprs import plugins
    from coprs.utils import source_version

    env = {k: str(v) for k, v in collect_env().items()}
    env["coprs"] = source_version()  # with the commit, from a git checkout
    for dist in PACKAGES:
        env[dist] = _version(dist)
    infos = plugins.load_plugins()
    for p in infos:  # a conflicting plugin is left out: the report says why
        if p.status == "conflict":
            env[f"coprs plugin conflict ({p.name})"] = p.error
    env["coprs plugins"] = ", ".join(f"{p.dist} {p.version} ({p.status})" for p in infos) or "-"
    if plugins.plugins_disabled():
        env["coprs plugins"] += " [COPRS_DISABLE_PLUGINS is set]"
    return env


def run(args) -> int:
    env = collect()
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        for key, value in env.items():
            print(f"{key}: {value}")
    return 0
