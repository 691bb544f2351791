"""Recompute gIoU / cIoU / Pr@X from saved per-sample counts under any evaluation protocol.

Reads every ``per_sample.jsonl`` (written by ``tools/test.py``) under RESULTS_DIR and reduces its
counts with :func:`coprs.evaluation.functional.reduce_counts`; no model is loaded. ``--by KEY``
adds a breakdown by any key the records carry, e.g. the synthetic world's ``instruction_type``
or ``template_id``; ``--worst N`` lists each split's N lowest-IoU samples with the response the
mask came from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coprs.evaluation.functional import (
    PRECISION_THRESHOLDS,
    read_per_sample,
    reduce_by,
    reduce_counts,
    require_per_sample,
)

EMPTY_EMPTY = {"1": 1.0, "0": 0.0, "skip": "skip"}

EXAMPLE = """example:
  # LISA's protocol (default) vs Seg-Zero's (empty/empty samples dropped)
  python tools/analysis/recompute_metrics.py work_dirs/coprs_7b/test
  python tools/analysis/recompute_metrics.py work_dirs/coprs_7b/test --empty-empty skip \\
      --ignore exclude --json work_dirs/coprs_7b/test/metrics_segzero.json
  # the synthetic world per template (program and phrasing)
  python tools/analysis/recompute_metrics.py \\
      work_dirs/coprs_tiny_shapes_cpu/per_sample_generated --by template_id
  # the ten worst samples of each split, with the policy's reasoning
  python tools/analysis/recompute_metrics.py \\
      work_dirs/coprs_tiny_shapes_cpu/per_sample_generated --worst 10
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Recompute gIoU/cIoU from per_sample.jsonl files without rerunning the model.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "results_dir", metavar="RESULTS_DIR", help="directory searched for per_sample.jsonl"
    )
    parser.add_argument(
        "--empty-empty",
        choices=list(EMPTY_EMPTY),
        default="1",
        help="IoU of an empty prediction on an empty ground truth: 1 (LISA, default), 0, or skip",
    )
    parser.add_argument(
        "--ignore",
        choices=["exclude", "background", "foreground"],
        default="exclude",
        help="how ignore pixels are scored (default: exclude, as LISA)",
    )
    parser.add_argument(
        "--by",
        metavar="KEY",
        help="also break each split down by this per-sample key (e.g. instruction_type, "
        "template_id); JSON: under 'by' -> KEY -> value",
    )
    parser.add_argument("--worst", type=int, metavar="N",
                        help="also list each split's N lowest-IoU samples (under the protocol) "
                             "with their instruction and response")
    parser.add_argument("--json", metavar="OUT", help="also write the metrics to this JSON file")
    return parser.parse_args(argv)


def worst(records: list[dict], n: int, empty_empty, ignore_mode: str) -> list[dict]:
    """The ``n`` records with the lowest IoU under the protocol (samples the protocol skips are
    left out), lowest first; each gains ``protocol_iou``."""
    from coprs.evaluation.functional import sample_iou

    scored = []
    for r in records:
        iou = sample_iou(r, empty_empty, ignore_mode)
        if iou is not None:
            scored.append({**r, "protocol_iou": iou})
    return sorted(scored, key=lambda r: r["protocol_iou"])[:n]


def _cell(text) -> str:
    """One Markdown table cell: one line, pipes escaped."""
    return " ".join(str("" if text is None else text).split()).replace("|", "\\|")


def breakdown(records: list[dict], key: str, empty_empty, ignore_mode: str) -> dict[str, dict]:
    """:func:`~coprs.evaluation.functional.reduce_by`, or a ValueError naming the keys the
    records do have when none has ``key``."""
    groups = reduce_by(records, key, empty_empty, ignore_mode)
    if not groups:
        have = sorted({k for r in records for k, v in r.items() if v is not None})
        raise ValueError(f"no record has a value for --by {key!r}; the records have: "
                         f"{', '.join(have)}")
    return groups


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results_dir = Path(args.results_dir)
    try:
        files = require_per_sample(results_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    empty_empty = EMPTY_EMPTY[args.empty_empty]
    if args.worst is not None and args.worst < 1:
        print("error: --worst must be at least 1", file=sys.stderr)
        return 2
    metrics, lowest = {}, {}
    for name, path in files.items():
        try:
            records = read_per_sample(path)
            metrics[name] = reduce_counts(records, empty_empty, args.ignore)
            if args.worst:
                lowest[name] = worst(records, args.worst, empty_empty, args.ignore)
            if args.by:
                metrics[name]["by"] = {args.by: breakdown(records, args.by, empty_empty,
                                                          args.ignore)}
        except ValueError as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            return 2

    print(f"protocol: empty/empty={args.empty_empty}, ignore={args.ignore} (all in %)")
    print()
    keys = ("gIoU", "cIoU", *(f"Pr@{t}" for t in PRECISION_THRESHOLDS))

    def row(labels: list[str], m: dict) -> str:
        return "| " + " | ".join([*labels, *(f"{100 * m[k]:.2f}" for k in keys), str(m["n"])]) \
            + " |"

    print("| split | " + " | ".join(keys) + " | n |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for name, m in metrics.items():
        print(row([name], m))
    if args.by:
        print()
        print(f"| split | {args.by} | " + " | ".join(keys) + " | n |")
        print("|---|---|" + "---:|" * (len(keys) + 1))
        for name, m in metrics.items():
            for value, g in m["by"][args.by].items():
                print(row([name, value], g))
    for name, rows in lowest.items():
        print(f"\n{name}: the {len(rows)} lowest IoU\n")
        print("| IoU | sample | type | instruction | response |")
        print("|---:|---|---|---|---|")
        for r in rows:
            print(f"| {100 * r['protocol_iou']:.2f} | {_cell(r['sample_id'])} | "
                  f"{_cell(r.get('instruction_type'))} | {_cell(r.get('instruction'))} | "
                  f"{_cell(r.get('response', '(not recorded)'))} |")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
