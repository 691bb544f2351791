"""``coprs bench-paradigms``: train and evaluate several assemblies under one budget.

Each config (by default the tiny CoPRS, LISA-style and Seg-Zero-style assemblies) is trained
from scratch with the same seed, data and budget (iterations and/or wall-clock minutes), then
evaluated on every split of its ``test_cfg`` with generated reasoning. The results go to
``DIR/paradigms.json`` and ``DIR/paradigms.md``.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
from pathlib import Path

from .common import UsageError, add_cfg_options, config_stem, load_config

__all__ = ["add_parser", "run", "DEFAULT_CONFIGS", "scale_schedule", "paradigm_name",
           "work_dir_names", "format_paradigms_table"]

#: the three paradigms of SPEC §1 at tiny scale, on the synthetic world
DEFAULT_CONFIGS = (
    "configs/coprs/coprs_tiny_shapes_cpu.py",
    "configs/lisa/lisa_tiny_shapes_cpu.py",
    "configs/segzero/segzero_tiny_shapes_cpu.py",
)

_PARADIGMS = {
    "HeatmapPrior": "CoPRS (heatmap prior)",
    "LatentTokenPrior": "LISA-style (latent token)",
    "TextCoordinatePrior": "Seg-Zero-style (text coordinates)",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench-paradigms",
        help="train + evaluate CoPRS / LISA / Seg-Zero assemblies under one budget",
        description="Train each config from scratch with the same seed, data and budget, "
                    "evaluate it on its test splits (generated reasoning), and write "
                    "paradigms.json and paradigms.md: gIoU, cIoU and Pr@0.5 per split, format-valid "
                    "rate, parameters added on top of the policy, mean train-step seconds and "
                    "inference seconds per sample.",
        epilog="example: coprs bench-paradigms --budget-minutes 3.5 --iters 2000 "
               "--out work_dirs/bench_paradigms",
    )
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar="CONFIG",
                   help="configs to compare (default: the three tiny shapes configs)")
    p.add_argument("--budget-minutes", type=float,
                   help="wall-clock training budget per config (training stops after the "
                        "iteration that crosses it)")
    p.add_argument("--iters", type=int,
                   help="training iterations per config: the config's stages, LR schedule and "
                        "loss-weight milestones are scaled to this total")
    p.add_argument("--out", default="work_dirs/bench_paradigms",
                   help="output folder (one work dir per config inside)")
    p.add_argument("--test-samples", type=int, default=100,
                   help="samples per test split (default 100)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every config")
    p.add_argument("--max-new-tokens", type=int, help="response budget at test time")
    p.add_argument("--feature-cache", metavar="DIR",
                   help="share a backbone feature cache across the configs (default: none, so "
                        "no config profits from another's cached features)")
    add_cfg_options(p)
    p.set_defaults(func=run)


def scale_schedule(cfg, total_iters: int) -> None:
    """Scale a config's training schedule to ``total_iters`` iterations, in place.

    Every stage keeps its share (at least one iteration each); iteration-based parameter
    schedulers (``begin``/``end``) and ``SegLossScheduleHook`` milestones scale by the same
    factor.
    """
    stages = cfg.train_cfg.stages
    if total_iters < len(stages):
        raise UsageError(f"--iters {total_iters} is less than the {len(stages)} stages of the "
                         "config (one iteration each at least)")
    old = sum(int(s["iters"]) for s in stages)
    factor = total_iters / old
    new = [max(1, round(int(s["iters"]) * factor)) for s in stages]
    new[int(max(range(len(new)), key=new.__getitem__))] += total_iters - sum(new)
    for s, n in zip(stages, new):
        s["iters"] = n
    for sched in cfg.get("param_scheduler") or []:
        if sched.get("by_epoch", True):
            continue
        for key in ("begin", "end"):
            if key in sched:
                sched[key] = min(total_iters, round(sched[key] * factor))
    for hook in cfg.get("custom_hooks") or []:
        if hook.get("type") == "SegLossScheduleHook":
            for m in hook["milestones"]:
                m["iter"] = round(m["iter"] * factor)


def paradigm_name(cfg) -> str:
    """A readable name of the paradigm a config assembles (by its prior)."""
    prior = cfg.model.prior.get("type")
    return _PARADIGMS.get(prior, str(prior))


def _data_signature(cfg) -> str:
    """The training and test data of a config, without pipelines (they may differ)."""
    def strip(ds):
        return {k: v for k, v in dict(ds).items() if k != "pipeline"}

    return json.dumps({"train": strip(cfg.train_dataloader.dataset),
                       "test": [strip(d) for d in cfg.test_cfg.datasets]}, sort_keys=True,
                      default=str)


def prepare_config(cfg, args, work_dir: Path) -> None:
    """Apply the shared settings of a benchmark run to one config, in place."""
    from ..engine import drop_validation

    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=args.seed)
    cfg.launcher = "none"
    cfg.resume, cfg.load_from = False, None
    if args.iters is not None:
        scale_schedule(cfg, args.iters)
    if args.budget_minutes is not None:
        cfg.custom_hooks = [*(cfg.get("custom_hooks") or []),
                            dict(type="TrainTimeBudgetHook", minutes=args.budget_minutes)]
    cfg.default_hooks.checkpoint = None  # the model is evaluated in memory
    # no validation during training: it would count against one config's budget and not another's
    drop_validation(cfg)
    if cfg.get("visualizer") is not None:  # one Runner per config in this process
        cfg.visualizer.name = f"visualizer_{work_dir.name}"
    cfg.model.feature_cache = (None if args.feature_cache is None
                               else dict(root=args.feature_cache, dtype="float32"))
    for ds in cfg.test_cfg.datasets:
        ds["num_samples"] = args.test_samples
    cfg.test_cfg.update(reasoning="generated", max_new_tokens=args.max_new_tokens,
                        out_dir=str(work_dir / "per_sample_generated"))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_config(cfg) -> dict:
    """Train and evaluate one prepared config; returns its row of the benchmark."""
    from mmengine.runner import Runner

    from coprs.models.counting import count_parameters

    runner = Runner.from_cfg(cfg)
    t0 = time.perf_counter()
    runner.train()
    train_s = time.perf_counter() - t0
    hub = runner.message_hub
    steps = [float(v) for v in hub.get_scalar("train/time").data[0]]
    grpo = [float(v) > 0.5 for v in hub.get_scalar("train/stage_grpo").data[0]]
    steps_after_first = steps[1:] or steps  # the first step also warms up caches
    grpo_after_first = grpo[1:] if len(steps) > 1 else grpo
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    t0 = time.perf_counter()
    results = runner.test()
    test_s = time.perf_counter() - t0
    n_test = sum(int(m["n"]) for m in results.values())
    n_fmt = sum(float(m["format_rate"]) * int(m["n"]) for m in results.values())
    return dict(
        config=str(cfg.filename) if cfg.filename else None,
        paradigm=paradigm_name(cfg),
        prior=cfg.model.prior.get("type"),
        decoder=cfg.model.decoder.get("type"),
        splits={k: {m: v[m] for m in ("gIoU", "cIoU", "Pr@0.5", "format_rate", "n")}
                for k, v in results.items()},
        format_rate=n_fmt / max(n_test, 1),
        added_params=count_parameters(model.prior) + count_parameters(model.decoder),
        params=dict(prior=count_parameters(model.prior), decoder=count_parameters(model.decoder),
                    vision_backbone=count_parameters(model.vision_backbone),
                    policy=count_parameters(model.policy)),
        train_iters=len(steps),
        grpo_iters=sum(grpo),
        train_seconds=train_s,
        mean_step_s=_mean(steps_after_first),
        mean_sft_step_s=_mean([t for t, g in zip(steps_after_first, grpo_after_first) if not g]),
        mean_grpo_step_s=_mean([t for t, g in zip(steps_after_first, grpo_after_first) if g]),
        test_seconds=test_s,
        infer_s_per_sample=test_s / max(n_test, 1),
    )


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def format_paradigms_table(report: dict) -> str:
    """The Markdown report: one row per config."""
    rows = report["paradigms"]
    splits = []
    for r in rows:
        splits += [s for s in r["splits"] if s not in splits]
    head = ["paradigm"] + [f"{s} gIoU / cIoU / Pr@0.5" for s in splits] + [
        "format valid", "added params", "train iters (GRPO)", "train-step s", "infer s/sample"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [r["paradigm"]]
        for s in splits:
            m = r["splits"].get(s)
            cells.append("–" if m is None else
                         f"{m['gIoU']:.3f} / {m['cIoU']:.3f} / {m['Pr@0.5']:.3f}")
        cells += [f"{100 * r['format_rate']:.1f}%", f"{r['added_params']:,}",
                  f"{r['train_iters']} ({r['grpo_iters']})", _fmt(r["mean_step_s"], ".2f"),
                  _fmt(r["infer_s_per_sample"], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    budget = report["budget"]
    lines += [
        "",
        f"Command: `{report['command']}`",
        f"Budget per config: {budget['minutes'] if budget['minutes'] is not None else '–'} min "
        f"wall-clock, {budget['iters'] if budget['iters'] is not None else 'config'} iterations; "
        f"seed {report['seed']}; {report['test_samples']} samples per test split.",
        f"Machine: {report['machine']}.",
        "",
        "Per config: " + "; ".join(
            f"{r['paradigm']}: {r['train_seconds']:.0f} s training (mean step: warm-up "
            f"{_fmt(r['mean_sft_step_s'], '.2f')} s, GRPO {_fmt(r['mean_grpo_step_s'], '.2f')} s),"
            f" {r['test_seconds']:.0f} s testing" for r in rows) + ".",
    ]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    from coprs.utils import register_all_modules

    if args.iters is None and args.budget_minutes is None:
        raise UsageError("give a budget: --iters N and/or --budget-minutes M")
    if args.iters is not None and args.iters <= 0:
        raise UsageError(f"--iters must be > 0, got {args.iters}")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise UsageError(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    files = list(args.configs)
    if files == list(DEFAULT_CONFIGS):  # the repository's, from any folder
        root = Path(__file__).resolve().parents[2]
        files = [c if Path(c).is_file() or not (root / c).is_file() else str(root / c)
                 for c in files]
    cfgs = [load_config(c, args.cfg_options) for c in files]
    for path, cfg in zip(args.configs, cfgs):
        if cfg.get("train_cfg") is None or cfg.get("test_cfg") is None:
            raise UsageError(f"config '{path}' needs train_cfg and test_cfg")
    signatures = {_data_signature(c) for c in cfgs}
    if len(signatures) > 1:
        raise UsageError("the configs train or test on different data (train_dataloader.dataset "
                         "/ test_cfg.datasets differ); a paradigm comparison needs the same data")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    register_all_modules()
    report = dict(
        command=_command(args),
        budget=dict(minutes=args.budget_minutes, iters=args.iters),
        seed=args.seed,
        test_samples=args.test_samples,
        machine=f"{platform.machine()}, {_cpu_count()} CPU cores visible, torch "
                f"{_torch_version()}, {time.strftime('%Y-%m-%d')}",
        paradigms=[],
    )
    for path, cfg, folder in zip(args.configs, cfgs, work_dir_names(args.configs)):
        prepare_config(cfg, args, out / folder)
        print(f"== {paradigm_name(cfg)}: {path}", flush=True)
        row = run_config(cfg)
        row["config"] = path
        report["paradigms"].append(row)
        (out / "paradigms.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = format_paradigms_table(report)
    (out / "paradigms.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {out / 'paradigms.json'} and {out / 'paradigms.md'}")
    return 0


def work_dir_names(configs: list[str]) -> list[str]:
    """One folder name per config: its stem, with ``_2``, ``_3`` … for a stem seen before, so
    that two configs of the same file name never share a work dir."""
    names: list[str] = []
    for path in configs:
        stem, n = config_stem(path), 1
        while (stem if n == 1 else f"{stem}_{n}") in names:
            n += 1
        names.append(stem if n == 1 else f"{stem}_{n}")
    return names


def _command(args) -> str:
    """The command line that reproduces this run."""
    parts = ["coprs", "bench-paradigms"]
    if list(args.configs) != list(DEFAULT_CONFIGS):
        parts += ["--configs", *args.configs]
    for flag, value in (("--budget-minutes", args.budget_minutes), ("--iters", args.iters),
                        ("--out", args.out), ("--test-samples", args.test_samples),
                        ("--seed", args.seed), ("--max-new-tokens", args.max_new_tokens),
                        ("--feature-cache", args.feature_cache)):
        if value is not None:
            parts += [flag, str(value)]
    if args.cfg_options:
        parts += ["--cfg-options", *(f"{k}={v}" for k, v in args.cfg_options.items())]
    return " ".join(shlex.quote(p) for p in parts)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _torch_version() -> str:
    import torch

    return torch.__version__
