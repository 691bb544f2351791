"""Training curves and training time from the scalar logs of ``coprs train``.

mmengine writes each run's logged scalars to ``<work_dir>/<timestamp>/vis_data/scalars.json``,
one JSON record per line (training records every ``LoggerHook`` interval, validation metrics at
each validation). LOGS are work dirs or such files. A work dir's runs are read in time order
and merged by iteration, a later run's records replacing an earlier one's at the same
iteration, so a resumed run gives one curve; runs without scalars (``coprs test``) are ignored.

``plot_curve`` draws one panel per key (default: the loss, the GRPO rewards and KL, and the
validation gIoU that are present) with one line per log (``--smooth`` averages training
records, never validation ones), and marks where the warm-up ends and GRPO begins
(``stage_grpo``). ``cal_train_time`` gives each stage's time and, for GRPO, each phase's time and
share (see :func:`train_time`): mmengine logs ``time`` and the loop's ``time/<phase>`` as the
mean of each key's last ``log_processor.window_size`` updates, not over the logging interval, so
the tool recovers the seconds of every iteration from these overlapping (or, for an interval
longer than the window, gapped) means; the window is read from the run's ``config.py``.
``train_correlation`` is the paper's Figure 3 (a)–(d): one point per logged training record,
1 − BCE of the positional prior (``seg/bce``) against 1 − Dice of the mask (``seg/dice``), with
Pearson R and the OLS line and band (per batch with ``default_hooks.logger.interval=1``).
Without ``--out`` the PNG (``curves.png``, ``train_correlation.png``) goes into the (first)
LOG's work dir, or next to LOG when it is a scalars.json; the tool prints where it wrote.
"""

from __future__ import annotations

import argparse
import bisect
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
#: GRPO's phases, as the loop times them (seconds per iteration; mmengine logs their windowed mean)
PHASES = ("time/rollout", "time/reward", "time/reference", "time/actor")
#: the phases timed in GRPO iterations only (the loop times the actor's update in warm-up too)
GRPO_ONLY = ("time/rollout", "time/reward", "time/reference")
#: mmengine's ``LogProcessor(window_size=...)`` default, for a config without one
MMENGINE_WINDOW = 10


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
    time.add_argument("--window-size", type=int, metavar="N",
                      help="the run's log_processor.window_size (default: read from the "
                           "config.py next to the scalars.json)")
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


def run_settings(log: str | Path) -> tuple[int | None, list[dict] | None]:
    """``log_processor.window_size`` and ``train_cfg.stages`` of the latest run of ``log``, from
    the ``config.py`` that mmengine writes next to its scalars.json; None where unknown."""
    path = scalar_files(log)[-1].parent / "config.py"
    if not path.is_file():
        return None, None
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(str(path), import_custom_modules=False)
    except Exception as err:  # a config we cannot read is like none: --window-size says it
        print(f"cannot read {path} ({err}); pass --window-size", file=sys.stderr)
        return None, None
    window = (cfg.get("log_processor") or {}).get("window_size", MMENGINE_WINDOW)
    stages = (cfg.get("train_cfg") or {}).get("stages")
    return int(window), list(stages) if stages else None


def iteration_stages(records: dict[int, dict], stages: list[dict] | None = None) -> list[str]:
    """The stage (``'warm-up'`` or ``'grpo'``) of each iteration 1 .. the last training record
    (index 0 is iteration 1). Each record's ``stage_grpo`` is that of its own iteration, so a
    logging interval is given its record's stage, unless the config's ``stages`` agree with
    every record: they also place a stage boundary that falls inside an interval."""
    labels, previous = [], 0
    for step, r in records.items():
        labels += ["grpo" if r.get("stage_grpo") == 1 else "warm-up"] * (step - previous)
        previous = step
    if stages:
        planned = []
        for stage in stages:
            kind = "grpo" if stage.get("kind") == "grpo" else "warm-up"
            planned += [kind] * min(int(stage["iters"]), len(labels) - len(planned))
        planned += planned[-1:] * (len(labels) - len(planned))
        if all(planned[step - 1] == labels[step - 1] for step in records):
            return planned
    return labels


def _interp(x: int, xs: list[int], ys: list[float]) -> float:
    j = bisect.bisect_left(xs, x)
    if xs[j] == x:
        return ys[j]
    return ys[j - 1] + (ys[j] - ys[j - 1]) * (x - xs[j - 1]) / (xs[j] - xs[j - 1])


def per_iteration(records: dict[int, dict], key: str, window: int, labels: list[str],
                  domain: list[bool] | None = None) -> list[float]:
    """Seconds of ``key`` at each iteration (index 0 is iteration 1), from its logged means.

    mmengine logs ``key`` at a record as the mean of its last ``window`` updates, whenever
    they were (the first records: of all so far), and :class:`FreshLogProcessor` leaves it out
    of a record if nothing updated it since the previous one. The key is taken to be updated at
    every iteration of a logging interval in which it is logged (only those in ``domain``, if
    given: a GRPO phase in GRPO iterations; with an interval over 1, a step that skipped the
    phase, e.g. for non-finite rewards, is counted too), so a record gives the sum of a known
    run of updates, and the cumulative sum of the updates at each record follows from the one
    at the window's start: exact when that start is an earlier record (an interval that
    divides the window: 1, 5, 10, 20 for 20), else interpolated between the records around it.
    An interval longer than the window has iterations in no window: they are taken at the
    window's mean. An interval's seconds are spread evenly over its iterations, except that
    where a stage ends inside it the earlier stage's iterations keep the previous interval's
    rate (and the window's other iterations give the new stage's).
    """
    out = [0.0] * len(labels)
    counts, sums = [0], [0.0]  # updates so far -> their seconds, at each record with the key
    previous, rate = 0, None
    for step, r in records.items():
        span, previous = range(previous, step), step
        mean = r.get(key)
        if not isinstance(mean, (int, float)):
            continue  # not updated in this interval
        its = [i for i in span if domain is None or domain[i]] or list(span)
        n = counts[-1] + len(its)
        w = min(n, window)
        # a stage that ends inside the interval: its iterations keep the previous interval's rate
        late = [i for i in its if labels[i] == labels[its[-1]]]
        early = [i for i in its if labels[i] != labels[its[-1]]] if rate is not None else []
        if n - w >= counts[-1]:  # the window lies in this interval; the iterations before it
            in_early = len(set(its[len(its) - w:]).intersection(early))  # are in no window
            late_rate = max(w * mean - in_early * rate, 0.0) / (w - in_early) if early else mean
            total = len(early) * (rate or 0.0) + len(late) * late_rate
        else:  # the window reaches back into earlier intervals, whose sums are known
            total = max(_interp(n - w, counts, sums) + w * mean - sums[-1], 0.0)
        part = min(len(early) * (rate or 0.0), total)
        for i in early:
            out[i] = part / len(early)
        for i in late if early else its:
            out[i] = (total - part) / len(late if early else its)
        rate = out[its[-1]]
        counts.append(n)
        sums.append(sums[-1] + total)
    return out


def train_time(records: dict[int, dict], window: int, stages: list[dict] | None = None) -> dict:
    """Seconds per stage and, for GRPO, per phase, from the logged ``time`` and ``time/<phase>``.

    Both are means over each key's last ``window`` updates (``log_processor.window_size``), not
    over the logging interval, so each is first turned into seconds per iteration
    (:func:`per_iteration`) and then summed over the stage's iterations: a stage's phases and
    its ``time`` cover the same iterations, whatever the logger interval. ``other`` is the
    iteration time that no phase accounts for (data loading, hooks, checkpoints), never
    negative; the shares are of the phases plus ``other``. ``iters`` counts iterations up to
    the last training record; the median/slowest/fastest are over logging intervals (seconds
    per iteration in each).

    Args:
        records: iteration -> scalars (:func:`read_records`).
        window: the run's ``log_processor.window_size``.
        stages: the run's ``train_cfg.stages`` (``dict(kind=..., iters=...)``), to place a stage
            boundary inside a logging interval; None: each interval is its record's stage.
    """
    train = {s: r for s, r in records.items() if isinstance(r.get("time"), (int, float))}
    labels = iteration_stages(train, stages)
    grpo = [label == "grpo" for label in labels]
    time = per_iteration(train, "time", window, labels)
    out = {}
    for stage in dict.fromkeys(labels):
        idx = [i for i, label in enumerate(labels) if label == stage]
        seconds = sum(time[i] for i in idx)
        intervals, previous = [], 0
        for step in train:
            part = [time[i] for i in range(previous, step) if labels[i] == stage]
            previous = step
            if part:
                intervals.append(sum(part) / len(part))
        out[stage] = {
            "iters": len(idx), "seconds": seconds, "mean_s_per_iter": seconds / len(idx),
            "median_interval_s_per_iter": statistics.median(intervals),
            "slowest_interval_s_per_iter": max(intervals),
            "fastest_interval_s_per_iter": min(intervals),
        }
        if stage != "grpo":
            continue
        spent = {}
        for phase in PHASES:
            secs = per_iteration(train, phase, window, labels,
                                 grpo if phase in GRPO_ONLY else None)
            spent[phase.split("/")[1]] = sum(secs[i] for i in idx)
        phases = sum(spent.values())
        spent["other"] = max(seconds - phases, 0.0)
        whole = phases + spent["other"]  # the stage's time, or the phases' if they exceed it
        out[stage]["phase_seconds"] = spent
        out[stage]["phase_share"] = {k: v / whole if whole else 0.0 for k, v in spent.items()}
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
            window, stages_cfg = run_settings(log)
            window = args.window_size or window
            if args.window_size is not None and args.window_size < 1:
                print("error: --window-size must be at least 1", file=sys.stderr)
                return 2
            if window is None:
                print(f"error: no config.py next to the scalars.json of '{log}' to read "
                      "log_processor.window_size from; pass --window-size (mmengine's "
                      f"default is {MMENGINE_WINDOW}, coprs configs use 20)", file=sys.stderr)
                return 2
            stages = train_time(records, window, stages_cfg)
            print(f"## {log} (time and time/<phase> logged as means of their last {window} "
                  "updates)")
            print("| stage | iterations | minutes | s/iter | median / slowest / fastest interval |")
            print("|---|---:|---:|---:|---|")
            for stage, s in stages.items():
                print(f"| {stage} | {s['iters']} | {s['seconds'] / 60:.2f} | "
                      f"{s['mean_s_per_iter']:.3f} | {s['median_interval_s_per_iter']:.3f} / "
                      f"{s['slowest_interval_s_per_iter']:.3f} / "
                      f"{s['fastest_interval_s_per_iter']:.3f} |")
            if "grpo" in stages:
                g = stages["grpo"]
                shares = ", ".join(f"{k} {v:.0%}" for k, v in g["phase_share"].items())
                print(f"\nGRPO time by phase, of the {g['iters']} GRPO iterations' "
                      f"{sum(g['phase_seconds'].values()):.1f} s (other: the iteration time "
                      f"that no phase accounts for): {shares}")
                over = sum(v for k, v in g["phase_seconds"].items() if k != "other") - g["seconds"]
                if over > 0.01 * g["seconds"]:
                    print(f"(the phases add up to {over:.1f} s more than the logged iteration "
                          "time: is --window-size the run's log_processor.window_size?)")
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
