"""``coprs browse-dataset``: what a dataset loader produces, as JSON lines and/or one PNG panel
per sample."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .common import UsageError, add_cfg_options, load_config

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "browse-dataset",
        help="dump a dataset's samples (image, instruction, mask RLE) as JSON lines and/or "
             "PNG panels",
        description="Run the loaders of the config's datasets for one split. --dump writes one "
                    'JSON line per sample: {"image", "instruction", "mask_rle", "ignore_rle", '
                    '"sample_id", "dataset", "split"} (RLE at the original size, counts as str); '
                    "unreadable samples get an \"error\" field. --show-dir writes one PNG per "
                    "readable sample: the image, its target mask (ignored region grey, box and "
                    "points if any) and the instruction with the gold reasoning if any.",
        epilog="example: coprs browse-dataset configs/coprs/coprs_tiny_shapes_cpu.py "
               "--split test --dump samples.jsonl --show-dir work_dirs/browse --limit 20",
    )
    p.add_argument("config", help="config file")
    p.add_argument("--split", required=True, help="split name (e.g. val, testA, test)")
    p.add_argument("--dataset", nargs="+", help="only these dataset names (default: all)")
    p.add_argument("--dump", help="output JSONL file")
    p.add_argument("--show-dir", help="write a PNG panel per sample under DIR/<dataset>_<split>/")
    p.add_argument("--limit", type=int, help="at most this many samples per dataset")
    add_cfg_options(p)
    p.set_defaults(func=run)


def _show(sample: dict, image, path: Path) -> None:
    """``image``: the H x W x 3 uint8 array the pipeline packed (``PackReasonSegInputs``)."""
    import numpy as np

    from coprs.visualization.overlay import make_sample_panel

    text = sample.get("gold_cot") or ""
    if sample.get("instruction_type"):
        text = f"[{sample['instruction_type']}]\n{text}"
    if sample.get("gold_answer_region"):
        text += f"\nanswer: {sample['gold_answer_region']}"
    ignore = sample.get("ignore_mask")
    make_sample_panel(image, np.asarray(sample["gt_mask"], bool), sample.get("instruction", ""),
                      path, ignore=None if ignore is None else np.asarray(ignore, bool),
                      text=text, bbox=sample.get("bbox"), points=sample.get("points"))


def run(args) -> int:
    import re

    from tqdm import tqdm

    from coprs.datasets.masks import mask_to_rle

    from .datasets import build_selected

    if not args.dump and not args.show_dir:
        raise UsageError("say where to write the samples: --dump FILE.jsonl and/or --show-dir DIR")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit} must be at least 1")
    cfg = load_config(args.config, args.cfg_options)
    datasets = build_selected(cfg, [args.split], args.dataset)
    out = Path(args.dump) if args.dump else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    n = errors = shown = 0
    with out.open("w", encoding="utf-8") if out else contextlib.nullcontext() as f:
        for ds in datasets:
            meta = ds.metainfo
            show_dir = None
            if args.show_dir:
                show_dir = Path(args.show_dir) / f"{meta.get('dataset_name')}_{meta.get('split')}"
                show_dir.mkdir(parents=True, exist_ok=True)
            total = len(ds) if args.limit is None else min(args.limit, len(ds))
            for i in tqdm(range(total), desc=f"{meta.get('dataset_name')}/{meta.get('split')}",
                          unit="sample"):
                item = ds[i]
                s = item["data_samples"]
                line = {"image": s.get("img_path"), "instruction": s.get("instruction"),
                        "sample_id": s.get("sample_id"), "dataset": meta.get("dataset_name"),
                        "split": meta.get("split")}
                if s.get("instruction_type") is not None:
                    line["type"] = s["instruction_type"]
                if s.get("load_error"):
                    line.update(mask_rle=None, ignore_rle=None, error=s["load_error"])
                    errors += 1
                else:
                    ignore = s.get("ignore_mask")
                    line.update(mask_rle=mask_to_rle(s["gt_mask"]),
                                ignore_rle=None if ignore is None else mask_to_rle(ignore))
                    if show_dir is not None:
                        name = re.sub(r"[^\w.-]+", "_", str(s.get("sample_id", "")))
                        _show(s, item["inputs"], show_dir / f"{i:05d}_{name}.png")
                        shown += 1
                if f is not None:
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
                n += 1
    where = [str(out)] if out else []
    if args.show_dir:
        where.append(f"{shown} panels under {args.show_dir}")
    print(f"read {n} samples ({errors} unreadable); wrote {' and '.join(where)}")
    return 0
