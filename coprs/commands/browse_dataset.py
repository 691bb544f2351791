"""``coprs browse-dataset``: dump what a dataset loader produces, one JSON line per sample."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_cfg_options, load_config

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "browse-dataset",
        help="dump a dataset's samples (image, instruction, mask RLE) as JSON lines",
        description="Run the loaders of the config's datasets for one split and write one JSON "
                    'line per sample: {"image", "instruction", "mask_rle", "ignore_rle", '
                    '"sample_id", "dataset", "split"} (RLE at the original size, counts as str); '
                    "unreadable samples get an \"error\" field.",
        epilog="example: coprs browse-dataset configs/coprs/coprs_tiny_shapes_cpu.py "
               "--split test --dump samples.jsonl --limit 20",
    )
    p.add_argument("config", help="config file")
    p.add_argument("--split", required=True, help="split name (e.g. val, testA, test)")
    p.add_argument("--dataset", nargs="+", help="only these dataset names (default: all)")
    p.add_argument("--dump", required=True, help="output JSONL file")
    p.add_argument("--limit", type=int, help="at most this many samples per dataset")
    add_cfg_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from coprs.datasets.masks import mask_to_rle

    from .datasets import build_selected

    cfg = load_config(args.config, args.cfg_options)
    datasets = build_selected(cfg, [args.split], args.dataset)
    out = Path(args.dump)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = errors = 0
    with out.open("w", encoding="utf-8") as f:
        for ds in datasets:
            meta = ds.metainfo
            for i in range(len(ds) if args.limit is None else min(args.limit, len(ds))):
                s = ds[i]["data_samples"]
                line = {"image": s.get("img_path"), "instruction": s.get("instruction"),
                        "sample_id": s.get("sample_id"), "dataset": meta.get("dataset_name"),
                        "split": meta.get("split")}
                if s.get("load_error"):
                    line.update(mask_rle=None, ignore_rle=None, error=s["load_error"])
                    errors += 1
                else:
                    ignore = s.get("ignore_mask")
                    line.update(mask_rle=mask_to_rle(s["gt_mask"]),
                                ignore_rle=None if ignore is None else mask_to_rle(ignore))
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                n += 1
    print(f"wrote {n} samples ({errors} unreadable) to {out}")
    return 0
