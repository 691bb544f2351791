"""Chain-of-thought consistency vs heatmap and mask IoU (paper Sec. 4.3, Table 3 and Figure 4).

For every ``per_sample.jsonl`` under RESULTS_DIR (written by ``coprs test``; each record keeps the
policy's ``response``), a judge of the ``COT_JUDGES`` registry scores each response's chain of
thought in [0, 1] (the paper's weighted average of logical correctness, task relevance, visual
consistency and localization accuracy; ``coprs.evaluation.consistency``). Then, per results
subdirectory (``--out/<subdir>``, or next to the per-sample file):

* ``consistency.jsonl``: each sample's score, dimension scores, mask and heatmap IoU, and why it
  could not be judged (``error``) if so;
* ``consistency.json``: the table (per score range: samples, heatmap mIoU, mask mIoU), Pearson R
  of the score with each IoU, the mean score and the mean of each dimension, and the failures;
* ``consistency_heatmap.png`` / ``consistency_mask.png``: score against heatmap / mask IoU with
  the OLS line and its confidence band.

It prints the tables. Judges (``--judge``):

* ``shapes`` (default): exact, for the synthetic world (needs ``--config`` to regenerate scenes);
* ``scores:FILE``: scores made elsewhere, JSON lines of ``sample_id`` + the four dimensions or a
  ``consistency`` score (e.g. from an API model, as the paper used Gemini-2.5-Flash);
* ``vlm:DIR``: a multimodal LLM from a local folder, asked for the four scores (needs
  ``--config`` for the images; ``--judge-cfg device=cuda torch_dtype=bfloat16``);
* any other registered judge by its type name, configured with ``--judge-cfg KEY=VALUE``.

Responses that cannot be judged are counted and listed, not fatal. Exit status 0, or 1 when no
results subdirectory had a judged sample, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmengine.config import DictAction

from coprs.commands.common import UsageError, exit_on_usage_error

EXAMPLE = """example:
  python tools/analysis/cot_consistency.py work_dirs/coprs_tiny_shapes_cpu/per_sample_generated \\
      --config configs/coprs/coprs_tiny_shapes_cpu.py
  python tools/analysis/cot_consistency.py work_dirs/coprs_7b/test --judge scores:judged.jsonl
"""
MAX_LISTED_FAILURES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Score each response's chain of thought and relate the score to heatmap and "
                    "mask IoU (paper Table 3 / Figure 4).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="directory searched for per_sample.jsonl (from coprs test)")
    parser.add_argument("--config", help="the config the results were evaluated with (judges "
                                         "that need the samples: shapes, vlm)")
    parser.add_argument("--judge", default="shapes",
                        help="shapes | scores:FILE | vlm:DIR | a COT_JUDGES type name "
                             "(default: shapes)")
    parser.add_argument("--judge-cfg", nargs="+", action=DictAction, default={},
                        metavar="KEY=VALUE", help="more keyword arguments of the judge")
    parser.add_argument("--edges", nargs="+", type=float, default=None, metavar="X",
                        help="score range edges (default: the paper's 0 0.25 0.5 0.75 1)")
    parser.add_argument("--out", metavar="DIR",
                        help="write <DIR>/<subdir>/consistency.* (default: next to each "
                             "per_sample.jsonl)")
    parser.add_argument("--level", type=float, default=0.95,
                        help="confidence level of the plotted band (default: 0.95)")
    return parser.parse_args(argv)


def judge_config(spec: str, extra: dict) -> dict:
    """The COT_JUDGES config of a ``--judge`` value."""
    kind, sep, arg = spec.partition(":")
    if kind == "shapes" and not sep:
        cfg = dict(type="ShapesCoTJudge")
    elif kind == "scores" and sep:
        cfg = dict(type="ScoresFileJudge", path=arg)
    elif kind == "vlm" and sep:
        cfg = dict(type="VLMJudge", model_path=arg)
    elif kind in ("shapes", "scores", "vlm") or sep:
        raise UsageError(f"--judge {spec!r}: use shapes, scores:FILE, vlm:DIR or a registered "
                         "judge's type name")
    else:
        cfg = dict(type=spec)
    return {**cfg, **extra}


def build_judge(spec: str, extra: dict):
    from coprs.registry import COT_JUDGES
    from coprs.utils import register_all_modules

    register_all_modules()
    cfg = judge_config(spec, extra)
    try:
        return COT_JUDGES.build(cfg)
    except KeyError as exc:
        raise UsageError(f"--judge {spec!r}: {exc.args[0] if exc.args else exc}") from exc
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise UsageError(f"--judge {spec!r}: {exc}") from exc


def sample_lookup(config: str):
    """``subdir name -> (dataset, {sample_id: index})`` for every dataset the config evaluates."""
    from mmengine.config import Config
    from mmengine.dataset import BaseDataset

    from coprs.commands.datasets import build_selected
    from coprs.evaluation.functional import results_subdir

    if not Path(config).is_file():
        raise UsageError(f"config '{config}' does not exist")
    cfg = Config.fromfile(config)
    found = {}
    for ds in build_selected(cfg, pipeline=[]):
        name = results_subdir(ds.metainfo.get("dataset_name"), ds.metainfo.get("split"))
        # the stored light entries (the subclass's get_data_info may load or generate images)
        ids = {str(BaseDataset.get_data_info(ds, i).get("sample_id")): i for i in range(len(ds))}
        found[name] = (ds, ids)
    return found


def judge_records(judge, records: list[dict], lookup, name: str) -> list[dict]:
    """Score every record (with a progress bar); one output row per record."""
    from tqdm import tqdm

    ds, ids = (None, {}) if lookup is None else lookup
    rows = []
    for r in tqdm(records, desc=f"{name} ({type(judge).__name__})", unit="sample",
                  file=sys.stderr, disable=len(records) < 50):
        row = {"sample_id": r.get("sample_id"), "score": None, "dims": None, "iou": r.get("iou"),
               "heatmap_iou": r.get("heatmap_iou"), "error": None}
        sample = None
        if judge.needs_sample:
            if r.get("sample_id") not in ids:
                rows.append({**row, "error": f"the config's {name} dataset has no sample "
                                             f"{r.get('sample_id')!r}"})
                continue
            sample = ds.get_data_info(ids[r["sample_id"]])
        j = judge(r, sample)
        row.update(score=j.score, dims=j.dims, error=j.error)
        if "output" in j.detail:
            row["judge_output"] = j.detail["output"]
        rows.append(row)
    return rows


def summarise(rows: list[dict], edges, level: float, out_dir: Path, name: str) -> dict | None:
    """Write the table, the plots and the per-sample scores of one subdirectory."""
    from coprs.evaluation.consistency import PAPER_EDGES, consistency_table
    from coprs.evaluation.correlation import plot_correlation

    judged = [r for r in rows if r["score"] is not None and r["iou"] is not None]
    failed = [r for r in rows if r["score"] is None]
    with_dims = [r for r in judged if r["dims"] is not None]
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "consistency.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if not judged:
        return None
    summary = {
        "n": len(rows), "n_judged": len(judged), "n_failed": len(failed),
        "failures": [f"{r['sample_id']}: {r['error']}" for r in failed[:MAX_LISTED_FAILURES]],
        "mean_score": sum(r["score"] for r in judged) / len(judged),
        "mean_dims": {k: sum(r["dims"][k] for r in with_dims) / len(with_dims)
                      for k in (with_dims[0]["dims"] if with_dims else ())},
        "table": consistency_table([r["score"] for r in judged],
                                   [r["heatmap_iou"] for r in judged],
                                   [r["iou"] for r in judged], edges or PAPER_EDGES),
    }
    for key, label, png in (("heatmap_iou", "heatmap IoU", "consistency_heatmap.png"),
                            ("iou", "mask IoU", "consistency_mask.png")):
        pairs = [(r["score"], r[key]) for r in judged if r[key] is not None]
        try:
            fit = plot_correlation([s for s, _ in pairs], [v for _, v in pairs], out_dir / png,
                                   title=f"{name}: CoT consistency vs {label}",
                                   xlabel="CoT consistency score", ylabel=label, level=level)
            summary[f"pearson_r_{key}"] = fit.r
        except ValueError as exc:  # too few samples, or a constant score
            summary[f"pearson_r_{key}"] = None
            print(f"{name}: no {label} plot: {exc}", file=sys.stderr)
    (out_dir / "consistency.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    from coprs.evaluation.functional import read_per_sample, require_per_sample

    args = parse_args(argv)
    try:
        files = require_per_sample(args.results_dir)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    judge = build_judge(args.judge, dict(args.judge_cfg))
    lookup = None
    if judge.needs_sample:
        if args.config is None:
            raise UsageError(f"{type(judge).__name__} needs the samples: give --config, the "
                             "config the results were evaluated with")
        lookup = sample_lookup(args.config)

    done = 0
    for name, path in files.items():
        try:
            records = read_per_sample(path)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        records = [r for r in records if not r.get("skipped")]
        leaf = Path(name).name
        if judge.needs_sample and leaf not in lookup:
            print(f"skipping {name}: the config evaluates no dataset named {leaf!r} (it has "
                  f"{', '.join(lookup) or 'none'})", file=sys.stderr)
            continue
        out_dir = path.parent if args.out is None else Path(args.out) / name
        rows = judge_records(judge, records, None if lookup is None else lookup[leaf], name)
        summary = summarise(rows, args.edges, args.level, out_dir, name)
        if summary is None:
            reasons = sorted({r["error"] for r in rows if r["error"]})[:3]
            print(f"skipping {name}: no sample could be judged ({'; '.join(reasons)})",
                  file=sys.stderr)
            continue
        done += 1
        print(f"\n## {name}: {summary['n_judged']} of {summary['n']} judged, mean score "
              f"{summary['mean_score']:.3f}, R with heatmap IoU "
              f"{_fmt(summary['pearson_r_heatmap_iou'])}, with mask IoU "
              f"{_fmt(summary['pearson_r_iou'])}\n")
        if summary["mean_dims"]:
            print("mean per dimension: " + ", ".join(
                f"{k} {v:.3f}" for k, v in summary["mean_dims"].items()) + "\n")
        print("| consistency score | samples | heatmap mIoU | mask mIoU |")
        print("|---|---:|---:|---:|")
        for row in summary["table"]:
            print(f"| {row['range']} | {row['n']} | {_fmt(row['heatmap_miou'])} | "
                  f"{_fmt(row['mask_miou'])} |")
        for failure in summary["failures"]:
            print(f"not judged: {failure}", file=sys.stderr)
        print(f"\nwrote {out_dir}/consistency.{{json,jsonl}} and consistency_{{heatmap,mask}}.png")
    if not done:
        print("error: no results subdirectory had a judged sample", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
