"""``coprs count-params``: parameters per component on the meta device (no weights)."""

from __future__ import annotations

import json

from .common import add_cfg_options, load_config

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "count-params",
        help="count parameters per component (meta device, no weights)",
        description="Build a config on the meta device (no weights, no memory) and print the "
                    "parameters of policy, vision backbone, prior and decoder.",
        epilog="example: coprs count-params "
               "configs/coprs/coprs_qwen2.5-vl-7b_sam-vit-h_refcoco.py --json",
    )
    p.add_argument("config", help="config file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_cfg_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from coprs.models.counting import build_for_counting, count_model_parameters

    cfg = load_config(args.config, args.cfg_options)
    counts = count_model_parameters(build_for_counting(cfg.model))
    if args.json:
        print(json.dumps(counts))
        return 0
    comps = counts["components"]
    added = comps["prior"] + comps["decoder"]
    for name, n in comps.items():
        print(f"{name:<18}{n:>16,}")
    print(f"{'added path':<18}{added:>16,}  (prior + decoder, {added / 1e6:.2f}M)")
    print(f"{'total':<18}{counts['total']:>16,}  ({counts['total'] / 1e9:.4f}B)")
    return 0
