"""Training curves and training time from the scalar logs of ``coprs train``.

mmengine writes each run's logged scalars to ``<work_dir>/<timestamp>/vis_data/scalars.json``,
one JSON record per line (training records every ``LoggerHook`` interval, validation metrics at
each validation). LOGS are work dirs or such files. A work dir's runs are read in time order
and merged by iteration, a later run's records replacing an earlier one's at the same
iteration, so a resumed run gives one curve; runs without scalars (``coprs test``) are ignored.

``plot_curve`` draws one panel per key (default: the loss, the GRPO rewards and KL, and the
validation gIoU that are present) with one line per log (``--smooth`` averages training
records, never validation ones), and marks where the warm-up ends and GRPO begins
(``stage_grpo``). ``cal_train_time`` estimates each stage's time from the logged ``time`` (the
mean seconds per iteration over each logging interval) and, for GRPO, the share of each phase.
``train_correlation`` is the paper's Figure 3 (a)–(d): one point per logged training record,
1 − BCE of the positional prior (``seg/bce``) against 1 − Dice of the mask (``seg/dice``), with
Pearson R and the OLS line and band (per batch with ``default_hooks.logger.interval=1``).
Without ``--out`` the PNG (``curves.png``, ``train_correlation.png``) goes into the (first)
LOG's work dir, or next to LOG when it is a scalars.json; the tool prints where it wrote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

EXAMPLE = """example:
  python tools/analysis/analyze_logs.py plot_curve work_dirs/coprs_tiny_shapes_cpu  # writes work_dirs/coprs_tiny_shapes_cpu/curves.png
  python tools/analysis/analyze_logs.py plot_curve work_dirs/a work_dirs/b --keys reward/mask kl_ref --legend a b --smooth 5 --out compare.png
  python tools/analysis/analyze_logs.py cal_train_time work_dirs/coprs_tiny_shapes_cpu
  python tools/analysis/analyze_logs.py train_correlation work_dirs/coprs_tiny_shapes_cpu --out work_dirs/coprs_tiny_shapes_cpu/train_correlation.png
"""

#: plotted when ``--keys`` is not given, those of them that a log has (and every */gIoU)
DEFAULT_KEYS = ("loss", "loss_lm", "loss_seg", "reward/total", "reward/mask", "reward/format",
                "kl_ref", "pg/entropy")
#: GRPO's phases, as logged by the loop (seconds per iteration)
PHASES = ("time/rollout", "time/reward", "time/reference", "time/actor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Plot training curves or estimate training time from coprs train's "
                    "scalar logs (vis_data/scalars.json).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True)
    plot = sub.add_parser("plot_curve", help="one PNG panel per key, one line per log",
                          epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    plot.add_argument("logs", nargs="+", metavar="LOG", help="a work dir or a scalars.json")
    plot.add_argument("--keys", nargs="+", metavar="KEY",
                      help="logged keys to plot (default: loss, rewards, KL, validation gIoU)")
    plot.add_argument("--legend", nargs="+", metavar="NAME", help="a name per log")
    plot.add_argument("--smooth", type=int, default=1, metavar="N",
                      help="moving average over N records (default: 1, none)")
    plot.add_argument("--title", help="figure title")
    plot.add_argument("--out", metavar="PNG",
                      help="output PNG (default: curves.png in the first LOG's work dir, or "
                           "next to it if it is a scalars.json)")
    time = sub.add_parser("cal_train_time", help="time per stage and per GRPO phase",
                          epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    time.add_argument("logs", nargs="+", metavar="LOG", help="a work dir or a scalars.json")
    corr = sub.add_parser(
        "train_correlation", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="per training record: 1 - prior BCE vs 1 - mask Dice, Pearson R, OLS (Fig. 3 a-d)")
    corr.add_argument("logs", nargs=1, metavar="LOG", help="a work dir or a scalars.json")
    corr.add_argument("--x", default="seg/bce", help="logged loss on the x axis (default: "
                                                      "seg/bce, the prior's BCE)")
    corr.add_argument("--y", default="seg/dice", help="logged loss on the y axis (default: "
                                                       "seg/dice, the mask's Dice loss)")
    corr.add_argument("--raw", action="store_true", help="plot the losses, not 1 - loss")
    corr.add_argument("--stage", choices=("all", "warm-up", "grpo"), default="all",
                      help="records of one stage only (default: all)")
    corr.add_argument("--level", type=float, default=0.95,
                      help="confidence level of the band (default: 0.95)")
    corr.add_argument("--out", metavar="PNG",
                      help="output PNG (default: train_correlation.png in LOG's work dir, or "
                           "next to it if it is a scalars.json); the fit goes to the same name "
                           "with .json")
    return parser.parse_args(argv)


def scalar_files(log: str | Path) -> list[Path]:
    """The scalars.json files of a work dir (oldest run first) or the file itself."""
    path = Path(log)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"'{log}' is neither a work dir nor a scalars.json")
    files = sorted(path.glob("*/vis_data/scalars.json"), key=lambda p: p.parts[-3])
    if not files:
        raise FileNotFoundError(f"no <timestamp>/vis_data/scalars.json under '{log}'; was it "
                                "the work dir of `coprs train`?")
    return files


def default_out(log: str | Path, name: str) -> Path:
    """``name`` in the work dir ``log``, or next to ``log`` if it is a scalars.json."""
    path = Path(log)
    return (path.parent if path.is_file() else path) / name


def read_records(log: str | Path) -> dict[int, dict]:
    """Iteration -> every scalar logged at it (training and validation), runs merged in time
    order. Lines that are not a JSON record with a ``step`` (a run killed mid-write) are
    reported on stderr and skipped."""
    merged: dict[int, dict] = {}
    for path in scalar_files(log):
        run: dict[int, dict] = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (ValueError, KeyError, TypeError):
                print(f"skipping {path}:{n}: not a JSON record with a step", file=sys.stderr)
                continue
            if "time" not in record:  # a validation record: its metrics are not smoothed
                record["_validation"] = sorted(k for k in record if k not in ("step", "iter"))
            run.setdefault(step, {}).update(record)
        for step, record in run.items():
            merged[step] = {**merged.get(step, {}), **record}
    return dict(sorted(merged.items()))


def validation_keys(records: dict[int, dict]) -> set[str]:
    return {k for r in records.values() for k in r.get("_validation", ())}


def logged_keys(logs: list[dict[int, dict]]) -> set[str]:
    return {k for records in logs for r in records.values() for k in r} - {"step", "_validation"}


def series(records: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    steps = [s for s, r in records.items() if isinstance(r.get(key), (int, float))]
    return steps, [float(records[s][key]) for s in steps]


def grpo_start(records: dict[int, dict]) -> int | None:
    """The iteration after which GRPO begins: the last training record before the first with
    ``stage_grpo`` 1 (0 if GRPO is the first stage), or None without GRPO."""
    previous = 0
    for step, r in records.items():
        if r.get("stage_grpo") == 1:
            return previous
        if "time" in r:  # a training record (validation ones have no time)
            previous = step
    return None


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first values average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def default_keys(logs: list[dict[int, dict]]) -> list[str]:
    present = logged_keys(logs)
    val = sorted(k for k in present if k.endswith("/gIoU"))
    return [k for k in DEFAULT_KEYS if k in present] + val


def plot_curves(logs: list[dict[int, dict]], names: list[str], keys: list[str], out: Path,
                window: int = 1, title: str | None = None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 2.2 * len(keys) + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    # per log, once: the validation keys (drawn as points, never smoothed) and where GRPO begins
    val_keys = [validation_keys(records) for records in logs]
    starts = [grpo_start(records) for records in logs]
    for ax, key in zip(axes, keys):
        for records, name, val, start in zip(logs, names, val_keys, starts):
            steps, values = series(records, key)
            if key in val:  # a few points, each its own evaluation
                ax.plot(steps, values, "o-", markersize=3, linewidth=1.2, label=name)
            elif steps:
                ax.plot(steps, smooth(values, window), "o-" if len(steps) < 20 else "-",
                        markersize=3, linewidth=1.2, label=name)
            if start is not None:
                ax.axvline(start, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    if any(start is not None for start in starts):
        axes[0].set_title("dashed: the warm-up ends, GRPO begins", fontsize=8, loc="right")
    axes[-1].set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")


def train_time(records: dict[int, dict]) -> dict:
    """Seconds per stage: each training record's ``time`` (mean seconds per iteration since the
    previous record) times the iterations it covers; for GRPO also each phase's share."""
    stages: dict[str, dict] = {}
    previous = 0
    for step, r in records.items():
        if not isinstance(r.get("time"), (int, float)):
            continue  # a validation record
        stage = "grpo" if r.get("stage_grpo") == 1 else "warm-up"
        s = stages.setdefault(stage, {"iters": 0, "seconds": 0.0, "times": [],
                                      "phases": dict.fromkeys(PHASES, 0.0)})
        span = step - previous
        previous = step
        s["iters"] += span
        s["seconds"] += r["time"] * span
        s["times"].append(r["time"])
        for phase in PHASES:
            s["phases"][phase] += float(r.get(phase, 0.0)) * span
    out = {}
    for stage, s in stages.items():
        out[stage] = {
            "iters": s["iters"], "seconds": s["seconds"],
            "mean_s_per_iter": s["seconds"] / s["iters"],
            "median_logged_s_per_iter": statistics.median(s["times"]),
            "slowest_logged_s_per_iter": max(s["times"]),
            "fastest_logged_s_per_iter": min(s["times"]),
        }
        if stage == "grpo":
            out[stage]["phase_share"] = {p.split("/")[1]: v / s["seconds"]
                                         for p, v in s["phases"].items()}
    return out


def train_pairs(records: dict[int, dict], x: str, y: str, stage: str = "all"
                ) -> list[tuple[float, float]]:
    """(x, y) of every training record that logged both, in one stage or all."""
    pairs = []
    for r in records.values():
        if "time" not in r or not all(isinstance(r.get(k), (int, float)) for k in (x, y)):
            continue  # validation records, and records without both keys
        if stage != "all" and (stage == "grpo") != (r.get("stage_grpo") == 1):
            continue
        pairs.append((float(r[x]), float(r[y])))
    return pairs


def train_correlation(args, records: dict[int, dict]) -> int:
    from coprs.evaluation.correlation import plot_correlation

    pairs = train_pairs(records, args.x, args.y, args.stage)
    if len(pairs) < 3:
        print(f"error: {len(pairs)} training record(s) with both {args.x} and {args.y} "
              f"(stage {args.stage}); need 3; logged keys: "
              f"{', '.join(sorted(logged_keys([records])))}", file=sys.stderr)
        return 2

    def axis(key: str) -> tuple[list[float], str]:
        values = [p[0] if key == args.x else p[1] for p in pairs]
        return (values, key) if args.raw else ([1.0 - v for v in values], f"1 - {key}")

    (xs, xlabel), (ys, ylabel) = axis(args.x), axis(args.y)
    out = Path(args.out) if args.out else default_out(args.logs[0], "train_correlation.png")
    try:
        fit = plot_correlation(xs, ys, out, title=f"training: {ylabel} vs {xlabel}",
                               xlabel=xlabel, ylabel=ylabel, level=args.level,
                               span=(min(xs), max(xs)), points="logged training records")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {**fit.summary(), "x": xlabel, "y": ylabel, "stage": args.stage}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        logs = [read_records(log) for log in args.logs]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for log, records in zip(args.logs, logs):
        if not records:
            print(f"error: '{log}' has no scalar records", file=sys.stderr)
            return 2
    if args.task == "train_correlation":
        return train_correlation(args, logs[0])
    if args.task == "cal_train_time":
        for log, records in zip(args.logs, logs):
            stages = train_time(records)
            print(f"## {log}")
            print("| stage | iterations | minutes | s/iter | median / slowest / fastest logged |")
            print("|---|---:|---:|---:|---|")
            for stage, s in stages.items():
                print(f"| {stage} | {s['iters']} | {s['seconds'] / 60:.2f} | "
                      f"{s['mean_s_per_iter']:.3f} | {s['median_logged_s_per_iter']:.3f} / "
                      f"{s['slowest_logged_s_per_iter']:.3f} / "
                      f"{s['fastest_logged_s_per_iter']:.3f} |")
            if "grpo" in stages:
                shares = ", ".join(f"{k} {v:.0%}" for k, v in
                                   stages["grpo"]["phase_share"].items())
                print(f"\nGRPO time by phase: {shares}")
            print(json.dumps(stages))
        return 0
    names = args.legend or [str(log) for log in args.logs]
    if len(names) != len(logs):
        print(f"error: --legend has {len(names)} names for {len(logs)} logs", file=sys.stderr)
        return 2
    if args.smooth < 1:
        print("error: --smooth must be at least 1", file=sys.stderr)
        return 2
    keys = args.keys or default_keys(logs)
    present = sorted(logged_keys(logs))
    missing = [k for k in keys if not any(series(r, k)[0] for r in logs)]
    if missing or not keys:
        print(f"error: no log has {', '.join(missing) or 'the default keys'}; logged keys: "
              f"{', '.join(present)}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_out(args.logs[0], "curves.png")
    plot_curves(logs, names, keys, out, args.smooth, args.title)
    print(f"wrote {out} ({', '.join(keys)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
