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
                    "parameters of policy, vision backbone, prior and decoder, all and those "
                    "that train (frozen parts and LoRA's base weights left out).",
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
    comps, trains = counts["components"], counts["trainable"]["components"]
    added = comps["prior"] + comps["decoder"]
    print(f"{'':<18}{'parameters':>16}{'trainable':>16}")
    for name, n in comps.items():
        print(f"{name:<18}{n:>16,}{trains[name]:>16,}")
    print(f"{'added path':<18}{added:>16,}  (prior + decoder, {added / 1e6:.2f}M)")
    total, trained = counts["total"], counts["trainable"]["total"]
    share = f"{trained / 1e9:.2f}B" if trained >= 1e9 else f"{trained / 1e6:.2f}M"
    print(f"{'total':<18}{total:>16,}{trained:>16,}  ({total / 1e9:.4f}B; {share} trainable, "
          f"{100 * trained / total:.2f}%)")
    return 0
