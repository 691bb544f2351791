"""Chain-of-thought consistency vs heatmap and mask IoU (paper Sec. 4.3, Table 3 and Figure 4).

For every ``per_sample.jsonl`` under RESULTS_DIR (written by ``coprs test``; each record keeps the
policy's ``response``), a judge of the ``COT_JUDGES`` registry scores each response's chain of
thought in [0, 1] (the paper's weighted average of logical correctness, task relevance, visual
consistency and localization accuracy; ``coprs.evaluation.consistency``). Then, per results
subdirectory (``--out/<subdir>``, or next to the per-sample file):

* ``consistency.jsonl``: each sample's id, score, dimension scores, mask and heatmap IoU, why it
  could not be judged (``error``, null when it was) and what else the judge reports (``detail``:
  ``{}`` from the shapes and scores-file judges, a VLM judge's raw ``output``); files of an
  earlier run in the same folder are replaced;
* ``consistency.json``: the table (per score range: samples, heatmap mIoU, mask mIoU), Pearson R
  of the score with each IoU, the mean score and the mean of each dimension, and the failures;
* ``consistency_heatmap.png`` / ``consistency_mask.png``: score against heatmap / mask IoU with
  the OLS line and its confidence band.

It prints the tables. Judges (``--judge``):

* ``shapes`` (default): exact, for the synthetic world (needs ``--config`` to regenerate scenes);
* ``scores:FILE``: scores made elsewhere, JSON lines of ``sample_id`` + the four dimensions or a
  ``consistency`` score (e.g. from an API model, as the paper used Gemini-2.5-Flash);
* ``vlm:DIR``: a multimodal LLM from a local folder, asked for the four scores (needs
  ``--config`` for the images; ``--judge-cfg device=cuda torch_dtype=bfloat16 batch_size=8``);
* any other registered judge by its type name, configured with ``--judge-cfg KEY=VALUE``.

RESULTS_DIR may also be one ``per_sample.jsonl``; its records need ``sample_id``, ``response``
and, to enter the table, ``iou`` (and ``heatmap_iou`` for the heatmap column). Responses that
cannot be judged, or on which a judge raises, are counted and listed, not fatal. Exit status 0,
or 1 when no results subdirectory had a judged sample, 2 on bad arguments (checked before any
judging, and before a judge model is loaded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coprs.commands.common import UsageError, exit_on_usage_error, key_value_action, load_config

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
    parser.add_argument("--judge-cfg", nargs="+", action=judge_cfg_action(), default={},
                        metavar="KEY=VALUE", help="more keyword arguments of the judge; a "
                                                  "value that starts with { is a JSON object")
    parser.add_argument("--edges", nargs="+", type=float, default=None, metavar="X",
                        help="score range edges (default: the paper's 0 0.25 0.5 0.75 1)")
    parser.add_argument("--out", metavar="DIR",
                        help="write <DIR>/<subdir>/consistency.* (default: next to each "
                             "per_sample.jsonl)")
    parser.add_argument("--level", type=float, default=0.95,
                        help="confidence level of the plotted band (default: 0.95)")
    return parser.parse_args(argv)


SHORTCUTS = "shapes, scores:FILE, vlm:DIR"


def judge_cfg_action():
    """:func:`key_value_action`, except that a value starting with ``{`` is kept as it is, for
    :func:`judge_config` to read as JSON (mmengine would split it at its commas and drop its
    spaces and quotes)."""
    base = key_value_action()

    class JudgeCfgAction(base):
        @staticmethod
        def _parse_iterable(val: str):
            return val if val.lstrip().startswith("{") else base._parse_iterable(val)

    return JudgeCfgAction


def judge_config(spec: str, extra: dict) -> dict:
    """The COT_JUDGES config of a ``--judge`` value and its ``--judge-cfg`` (a ``weights``
    string, and any value that starts with ``{``, is parsed as a JSON object)."""
    kind, sep, arg = spec.partition(":")
    if kind == "shapes" and not sep:
        cfg = dict(type="ShapesCoTJudge")
    elif kind == "scores" and sep and arg:
        cfg = dict(type="ScoresFileJudge", path=arg)
    elif kind == "vlm" and sep and arg:
        cfg = dict(type="VLMJudge", model_path=arg)
    elif kind in ("shapes", "scores", "vlm") or sep:
        raise UsageError(f"--judge {spec!r}: use {SHORTCUTS} or a registered judge's type name")
    else:
        cfg = dict(type=spec)
    extra = dict(extra)
    for key, value in extra.items():
        if isinstance(value, str) and (key == "weights" or value.lstrip().startswith("{")):
            try:
                extra[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise UsageError(f"--judge-cfg {key}={value} is not a JSON object, e.g. "
                                 'weights=\'{"visual_consistency": 1, "logical_correctness": '
                                 "1}'") from exc
    return {**cfg, **extra}


def judge_class(cfg: dict):
    """The registered judge class ``cfg`` names (plugins included)."""
    from coprs.registry import COT_JUDGES
    from coprs.utils import register_all_modules

    register_all_modules()
    cls = COT_JUDGES.get(cfg["type"])
    if cls is None:
        names = ", ".join(sorted(COT_JUDGES.module_dict))
        raise UsageError(f"--judge {cfg['type']!r}: no such judge; use {SHORTCUTS} or a "
                         f"registered one ({names}; `coprs list cot_judges`)")
    return cls


def build_judge(spec: str, cfg: dict):
    from coprs.registry import COT_JUDGES

    try:
        return COT_JUDGES.build(cfg)
    except (KeyError, FileNotFoundError, ValueError, TypeError, RuntimeError, OSError) as exc:
        raise UsageError(f"--judge {spec!r}: {exc}") from exc


def sample_lookup(config: str) -> tuple[dict, list[str]]:
    """``(subdir name -> (dataset, {sample_id: index}), failures)`` for the datasets the config
    evaluates (``test_cfg.datasets``); one that cannot be built is a failure, not an error."""
    import copy

    from mmengine.dataset import BaseDataset

    from coprs.evaluation.functional import results_subdir
    from coprs.registry import DATASETS
    from coprs.utils import register_all_modules

    cfg = load_config(config)  # a path, or PLUGIN::path for a config a plugin ships
    if not (cfg.get("test_cfg") or {}).get("datasets"):
        raise UsageError(f"config '{config}' has no test_cfg.datasets (the datasets coprs test "
                         "evaluates)")
    register_all_modules()
    found, failures = {}, []
    for ds_cfg in cfg.test_cfg.datasets:
        ds_cfg = {**copy.deepcopy(dict(ds_cfg)), "pipeline": []}
        try:
            ds = DATASETS.build(ds_cfg)
        except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
            failures.append(f"{ds_cfg.get('type')} split={ds_cfg.get('split')!r}: {exc}")
            continue
        name = results_subdir(ds.metainfo.get("dataset_name"), ds.metainfo.get("split"))
        # the stored light entries (the subclass's get_data_info may load or generate images)
        ids = {str(BaseDataset.get_data_info(ds, i).get("sample_id")): i for i in range(len(ds))}
        found[name] = (ds, ids)
    return found, failures


def judge_records(judge, records: list[dict], lookup, name: str) -> list[dict]:
    """Score every record (with a progress bar), ``judge.batch_size`` at a time if the judge
    has one; one output row per record. A judge that raises on a batch is asked again sample by
    sample, so a raise loses that sample only."""
    from tqdm import tqdm

    ds, ids = (None, {}) if lookup is None else lookup
    needs_sample = getattr(judge, "needs_sample", False)
    size = max(1, int(getattr(judge, "batch_size", 1)))
    many = getattr(judge, "judge_many", None)  # a judge not built on BaseCoTJudge may lack it
    rows, pending = [], []  # pending: (row, record, sample) waiting for the judge

    def flush() -> None:
        results = None
        if many is not None:
            try:
                results = many([p[1] for p in pending], [p[2] for p in pending])
            except Exception:  # asked again one at a time below, to find the sample
                results = None
        if results is None:
            results = []
            for _, r, sample in pending:
                try:
                    results.append(judge(r, sample))
                except Exception as exc:
                    results.append(exc)
        for (row, _, _), j in zip(pending, results, strict=True):
            if isinstance(j, Exception):
                row["error"] = f"the judge raised {type(j).__name__}: {j}"
                continue
            row.update(score=j.score, dims=j.dims, error=j.error, detail=j.detail)
        pending.clear()

    for r in tqdm(records, desc=f"{name} ({type(judge).__name__})", unit="sample",
                  file=sys.stderr, disable=len(records) < 50):
        row = {"sample_id": r.get("sample_id"), "score": None, "dims": None, "iou": r.get("iou"),
               "heatmap_iou": r.get("heatmap_iou"), "error": None, "detail": {}}
        rows.append(row)
        sample = None
        if needs_sample:
            if str(r.get("sample_id")) not in ids:
                row["error"] = (f"the config's {name} dataset has no sample "
                                f"{r.get('sample_id')!r}")
                continue
            try:
                sample = ds.get_data_info(ids[str(r["sample_id"])])
            except Exception as exc:  # an unreadable annotation: this sample only
                row["error"] = f"cannot load the sample: {type(exc).__name__}: {exc}"
                continue
        pending.append((row, r, sample))
        if len(pending) >= size:
            flush()
    if pending:
        flush()
    return rows


OUTPUTS = ("consistency.json", "consistency.jsonl", "consistency_heatmap.png",
           "consistency_mask.png")


def summarise(rows: list[dict], edges, level: float, out_dir: Path, name: str
              ) -> tuple[dict | None, list[str]]:
    """Write the per-sample scores, and the table and plots when a sample was judged; files of
    an earlier run in ``out_dir`` are removed first. Returns the summary and the written files."""
    from coprs.evaluation.consistency import consistency_table
    from coprs.evaluation.correlation import plot_correlation

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in OUTPUTS:
        (out_dir / stale).unlink(missing_ok=True)
    with (out_dir / "consistency.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    written = ["consistency.jsonl"]
    judged, failed = [], []
    for r in rows:
        (judged if r["score"] is not None and r["iou"] is not None else failed).append(r)
    if not judged:
        return None, written
    with_dims = [r for r in judged if r["dims"] is not None]
    summary = {
        "n": len(rows), "n_judged": len(judged), "n_failed": len(failed),
        "failures": [f"{r['sample_id']}: {r['error'] or 'no mask IoU in the record'}"
                     for r in failed[:MAX_LISTED_FAILURES]],
        "mean_score": sum(r["score"] for r in judged) / len(judged),
        "n_with_dims": len(with_dims),
        "mean_dims": {k: sum(r["dims"][k] for r in with_dims) / len(with_dims)
                      for k in (with_dims[0]["dims"] if with_dims else ())},
        "table": consistency_table([r["score"] for r in judged],
                                   [r["heatmap_iou"] for r in judged],
                                   [r["iou"] for r in judged], edges),
    }
    for key, label, png in (("heatmap_iou", "heatmap IoU", "consistency_heatmap.png"),
                            ("iou", "mask IoU", "consistency_mask.png")):
        pairs = [(r["score"], r[key]) for r in judged if r[key] is not None]
        try:
            fit = plot_correlation([s for s, _ in pairs], [v for _, v in pairs], out_dir / png,
                                   title=f"{name}: CoT consistency vs {label}",
                                   xlabel="CoT consistency score", ylabel=label, level=level)
            summary[f"pearson_r_{key}"] = fit.r
            written.append(png)
        except ValueError as exc:  # too few samples, or a constant score or IoU
            summary[f"pearson_r_{key}"] = None
            print(f"{name}: no {label} plot: {exc}", file=sys.stderr)
    (out_dir / "consistency.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, ["consistency.json", *written]


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def check_args(args) -> tuple[float, ...]:
    from coprs.evaluation.consistency import PAPER_EDGES

    edges = tuple(args.edges) if args.edges else PAPER_EDGES
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] > 0 \
            or edges[-1] < 1:
        raise UsageError(f"--edges {' '.join(f'{e:g}' for e in edges)}: give at least two "
                         "increasing numbers from at most 0 to at least 1 (scores lie in [0, 1])")
    if not 0 < args.level < 1:
        raise UsageError(f"--level {args.level} must be strictly between 0 and 1")
    return edges


def per_sample_files(results: str) -> dict[str, Path]:
    """RESULTS_DIR's per-sample files by subdirectory, or RESULTS_DIR itself if it is one."""
    from coprs.evaluation.functional import require_per_sample

    path = Path(results)
    if path.is_file():
        return {path.parent.name: path}
    try:
        return require_per_sample(path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    from coprs.evaluation.functional import read_json_records

    args = parse_args(argv)
    edges = check_args(args)
    files = per_sample_files(args.results_dir)
    records = {}
    for name, path in files.items():
        try:
            records[name] = [r for r in read_json_records(path, ("sample_id",))
                             if not r.get("skipped")]
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    cfg = judge_config(args.judge, dict(args.judge_cfg))
    needs_sample = getattr(judge_class(cfg), "needs_sample", False)
    lookup, failures = None, []
    if needs_sample:  # checked before a judge model is loaded
        if args.config is None:
            raise UsageError(f"{cfg['type']} needs the samples: give --config, the config the "
                             "results were evaluated with")
        lookup, failures = sample_lookup(args.config)
    judge = build_judge(args.judge, cfg)

    done = 0
    for name, path in files.items():
        leaf = Path(name).name
        if needs_sample and leaf not in lookup:
            why = "; ".join(failures) if failures else f"it has {', '.join(lookup) or 'none'}"
            print(f"skipping {name}: no dataset of the config is {leaf!r} ({why})",
                  file=sys.stderr)
            continue
        out_dir = path.parent if args.out is None else Path(args.out) / name
        rows = judge_records(judge, records[name], None if lookup is None else lookup[leaf],
                             name)
        summary, written = summarise(rows, edges, args.level, out_dir, name)
        if summary is None:
            reasons = sorted({r["error"] or "no mask IoU in the record" for r in rows})
            print(f"skipping {name}: none of its {len(rows)} samples could be judged "
                  f"({'; '.join(reasons[:3])}{'; …' if len(reasons) > 3 else ''})",
                  file=sys.stderr)
            continue
        done += 1
        print(f"\n## {name}: {summary['n_judged']} of {summary['n']} judged, mean score "
              f"{summary['mean_score']:.3f}, R with heatmap IoU "
              f"{_fmt(summary['pearson_r_heatmap_iou'])}, with mask IoU "
              f"{_fmt(summary['pearson_r_iou'])}\n")
        if summary["mean_dims"]:
            print(f"mean per dimension ({summary['n_with_dims']} samples): " + ", ".join(
                f"{k} {v:.3f}" for k, v in summary["mean_dims"].items()) + "\n")
        print("| consistency score | samples | heatmap mIoU | mask mIoU |")
        print("|---|---:|---:|---:|")
        for row in summary["table"]:
            print(f"| {row['range']} | {row['n']} | {_fmt(row['heatmap_miou'])} | "
                  f"{_fmt(row['mask_miou'])} |")
        for failure in summary["failures"]:
            print(f"not judged: {failure}", file=sys.stderr)
        more = summary["n_failed"] - len(summary["failures"])
        if more > 0:
            print(f"not judged: {more} more, see {out_dir / 'consistency.jsonl'}",
                  file=sys.stderr)
        print(f"\nwrote {', '.join(str(out_dir / f) for f in written)}")
    if not done:
        print("error: no results subdirectory had a judged sample", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
