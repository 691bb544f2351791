"""Per-sample heatmap IoU vs mask IoU: Pearson R, OLS line and its confidence band (paper Sec. 4.3).

For every ``per_sample.jsonl`` under RESULTS_DIR (written by ``coprs test``, or any JSON lines
with ``sample_id``, ``iou`` and ``heatmap_iou``), records whose ``heatmap_iou`` or ``iou`` is null
or absent are skipped; the rest give ``correlation.png`` (scatter, OLS line,
shaded mean-confidence band, R in the legend) and ``correlation.json``
(``{"n", "pearson_r", "slope", "intercept", "level"}``) in the results subdirectory, or in
``--out/<subdir>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coprs.evaluation.correlation import plot_correlation
from coprs.evaluation.functional import (
    read_json_records,
    require_per_sample,
)

EXAMPLE = """example:
  python tools/analysis/correlation.py work_dirs/coprs_7b/test
  python tools/analysis/correlation.py work_dirs/coprs_7b/test --out work_dirs/analysis
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Correlate per-sample heatmap IoU with mask IoU (Pearson R, OLS, band).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "results_dir", metavar="RESULTS_DIR", help="directory searched for per_sample.jsonl"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="write <DIR>/<subdir>/correlation.{png,json} (default: next to each per_sample.jsonl)",
    )
    parser.add_argument(
        "--level", type=float, default=0.95, help="confidence level of the band (default: 0.95)"
    )
    parser.add_argument(
        "--eta", type=float, default=None, metavar="K",
        help="draw the band as fit ± K standard errors of the mean response instead (the "
             "paper's Figures 3-4 use 10 'for visual clarity')",
    )
    args = parser.parse_args(argv)
    if args.eta is not None and not args.eta > 0:
        parser.error(f"--eta {args.eta:g}: give a positive number of standard errors")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results_dir = Path(args.results_dir)
    try:
        files = require_per_sample(results_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    rows = []
    for name, path in files.items():
        try:
            # only the two IoUs are used: files of other producers need no count keys
            records = read_json_records(path, ("sample_id",))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        pairs = [
            (r["heatmap_iou"], r["iou"])
            for r in records
            if r.get("heatmap_iou") is not None and r.get("iou") is not None
        ]
        out_dir = path.parent if args.out is None else Path(args.out) / name
        try:
            fit = plot_correlation(
                [h for h, _ in pairs],
                [m for _, m in pairs],
                out_dir / "correlation.png",
                title=f"{name}: heatmap IoU vs mask IoU",
                level=args.level,
                eta=args.eta,
            )
        except ValueError as err:
            print(
                f"skipping {name} ({len(pairs)} samples with heatmap IoU): {err}", file=sys.stderr
            )
            continue
        summary = fit.summary()
        (out_dir / "correlation.json").write_text(json.dumps(summary, indent=2) + "\n")
        rows.append((name, summary, out_dir))

    if not rows:
        print("error: no results directory had enough samples to analyse", file=sys.stderr)
        return 1
    print("| split | n | Pearson R | slope | intercept |")
    print("|---|---:|---:|---:|---:|")
    for name, s, _ in rows:
        print(
            f"| {name} | {s['n']} | {s['pearson_r']:.4f} | {s['slope']:.4f} | {s['intercept']:.4f} |"
        )
    for name, _, out_dir in rows:
        print(f"{name}: wrote {out_dir / 'correlation.png'} and {out_dir / 'correlation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
