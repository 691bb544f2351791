"""``coprs test``: evaluate every split a config names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import (
    UsageError,
    add_cfg_options,
    add_launcher,
    check_checkpoint_arg,
    config_stem,
    finish_distributed,
    init_distributed,
    load_config,
    resolve_checkpoint,
)

__all__ = ["add_parser", "run", "format_results_table", "format_mode_comparison"]

#: the test loop's reasoning modes (``coprs.engine.test_loop.REASONING_MODES``), spelt here so
#: that ``--help`` needs no torch import
REASONING_MODES = ("generated", "gold", "empty")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "test",
        help="evaluate every split a config names",
        description="Evaluate a checkpoint on every split in the config's test_cfg.datasets; "
                    "print a Markdown table (dataset x split), write per-sample records and, "
                    "with --out, a JSON of the metrics. Unreadable samples are reported and "
                    "skipped; an interrupted evaluation continues with --resume.",
        epilog="example: coprs test configs/coprs/coprs_tiny_shapes_cpu.py "
               "work_dirs/coprs_tiny_shapes_cpu --out results.json --show-dir panels",
    )
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", nargs="?", help="checkpoint (.pth), a training work dir (its "
                                                 "latest checkpoint) or a coprs export-hf "
                                                 "folder; omitted: the config's load_from, else "
                                                 "the weights the config builds")
    p.add_argument("--out", help="write the metrics as JSON to this file")
    p.add_argument("--show-dir", help="write a panel PNG per sample under this folder")
    p.add_argument("--work-dir", help="folder for logs and per-sample records")
    p.add_argument("--reasoning", nargs="+", choices=[*REASONING_MODES, "all", "given"],
                   default=["generated"], metavar="MODE",
                   help="generated: greedy responses (default); gold: teacher-force the gold "
                        "response (synthetic world); empty: every instruction replaced by ''; "
                        "given: teacher-force the responses of --responses. Several modes (or "
                        "'all': generated, gold and empty) are evaluated in turn with one model, "
                        "then compared side by side with generated − empty")
    p.add_argument("--responses", metavar="PATH",
                   help="for --reasoning given: a JSON-lines file with sample_id and response "
                        "per line (e.g. a per_sample.jsonl of another run), or a per_sample_<mode>"
                        "/ folder of another run (one file per dataset/split)")
    p.add_argument("--max-new-tokens", type=int, help="response budget")
    p.add_argument("--vllm", action="store_true",
                   help="write the responses of the generated and empty modes with vLLM (GPU; "
                        "pip install -e .[vllm]) instead of transformers: "
                        f"test_cfg.generation_engine={VLLM_TEST_ENGINE}, whose keys "
                        "--cfg-options test_cfg.generation_engine.KEY=VALUE may change")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted evaluation in the same work dir: the samples "
                        "it scored (same checkpoint, mode and configs; written as it went) are "
                        "kept and only the others are predicted")
    p.add_argument("--limit", type=int, metavar="N",
                   help="evaluate only the first N samples of every split (a quick check; "
                        "the numbers are not the split's)")
    add_launcher(p, "test")
    add_cfg_options(p)
    p.set_defaults(func=run)


#: ``coprs test --vllm``: greedy vLLM generation; the weights are pushed once, the engine stays
#: awake (nothing else needs the GPU memory between batches)
VLLM_TEST_ENGINE = dict(type="VLLMRolloutEngine", weights_fixed=True, sleep_level=None,
                        gpu_memory_utilization=0.5)


def format_results_table(results: dict) -> str:
    """A Markdown table in the paper's layout: one row per dataset, one column per split;
    cells ``gIoU / cIoU`` in percent."""
    datasets, splits = [], []
    for key in results:
        name, split = key.rsplit("/", 1)
        datasets += [name] if name not in datasets else []
        splits += [split] if split not in splits else []
    lines = ["| dataset | " + " | ".join(f"{s} gIoU / cIoU" for s in splits) + " |",
             "|---|" + "---|" * len(splits)]
    for name in datasets:
        cells = []
        for split in splits:
            m = results.get(f"{name}/{split}")
            cells.append("–" if m is None else f"{100 * m['gIoU']:.2f} / {100 * m['cIoU']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for key, m in results.items():
        dropped = m.get("dropped_at_load", [])
        lines.append(f"{key}: n={m['n']}, Pr@0.5 {100 * m['Pr@0.5']:.1f}%, "
                     f"heatmap IoU {100 * m['heatmap_IoU']:.2f}, "
                     f"format rate {100 * m['format_rate']:.1f}%, "
                     f"skipped (unreadable) {m['n_unreadable']}, "
                     f"dropped at load {m.get('n_dropped_at_load', len(dropped))}")
        lines.extend(f"  skipped: {u}" for u in m.get("unreadable", []))
        lines.extend(f"  dropped at load: {d}" for d in dropped[:10])
        if len(dropped) > 10:
            lines.append(f"  dropped at load: … {len(dropped) - 10} more (--out lists them all)")
    typed = {k: m["by_type"] for k, m in results.items() if m.get("by_type")}
    if typed:
        types = sorted({t for by in typed.values() for t in by})
        lines += ["", "| instruction type | " + " | ".join(f"{k} gIoU (n)" for k in typed) + " |",
                  "|---|" + "---|" * len(typed)]
        for t in types:
            cells = [f"{100 * by[t]['gIoU']:.2f} ({by[t]['n']})" if t in by else "–"
                     for by in typed.values()]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_mode_comparison(by_mode: dict) -> str:
    """Side-by-side gIoU of several reasoning modes (``{mode: {"<dataset>/<split>": metrics}}``):
    one row per split, with ``generated − empty`` when both were run, then a per-instruction-type
    table per split whose cells are the modes' gIoU ×100 separated by ``/``."""
    modes = list(by_mode)
    keys = list(dict.fromkeys(k for res in by_mode.values() for k in res))
    gap = "generated" in by_mode and "empty" in by_mode
    lines = ["| split | " + " | ".join(f"{m} gIoU" for m in modes)
             + (" | generated − empty |" if gap else " |"),
             "|---|" + "---:|" * (len(modes) + gap)]

    def giou(mode, key):
        m = by_mode[mode].get(key)
        return None if m is None else m["gIoU"]

    for key in keys:
        cells = ["–" if giou(m, key) is None else f"{giou(m, key):.3f}" for m in modes]
        if gap:
            g, e = giou("generated", key), giou("empty", key)
            cells.append("–" if g is None or e is None else f"{g - e:+.3f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for key in keys:
        by_type = {m: (by_mode[m].get(key) or {}).get("by_type") or {} for m in modes}
        types = sorted({t for bt in by_type.values() for t in bt})
        if not types:
            continue
        lines += ["", f"{key}, gIoU ×100 ({' / '.join(modes)}):", "",
                  "| instruction type | " + " / ".join(modes) + " | n |", "|---|---|---:|"]
        for t in types:
            vals = [f"{100 * by_type[m][t]['gIoU']:.1f}" if t in by_type[m] else "–"
                    for m in modes]
            n = next(by_type[m][t]["n"] for m in modes if t in by_type[m])
            lines.append(f"| {t} | " + " / ".join(vals) + f" | {n} |")
    return "\n".join(lines)


def _modes(requested: list[str]) -> list[str]:
    """``--reasoning`` values in order, without repeats; 'all' stands for every mode."""
    expanded = [m for r in requested for m in (REASONING_MODES if r == "all" else (r,))]
    return list(dict.fromkeys(expanded))


def run(args) -> int:
    from mmengine.dist import is_main_process
    from mmengine.runner import Runner

    from coprs.apis import apply_export, export_dir, load_checkpoint
    from coprs.utils import register_all_modules

    cfg = load_config(args.config, args.cfg_options)
    if args.checkpoint is None and cfg.get("load_from"):  # as mmengine would start from it
        args.checkpoint = str(cfg.load_from)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    export = export_dir(args.checkpoint)
    if args.checkpoint is not None:  # read now (tensors mapped), not after the runner is built
        check_checkpoint_arg(args.checkpoint, "CHECKPOINT")
    if export is not None:  # its policy loads from its policy/ folder
        try:
            apply_export(cfg, export)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if cfg.get("test_cfg") is None:
        raise UsageError(f"config '{args.config}' has no test_cfg (which datasets to evaluate)")
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or str(
        Path("work_dirs") / config_stem(args.config))
    cfg.launcher = args.launcher
    modes = _modes(args.reasoning)
    several = len(modes) > 1
    if ("given" in modes) != (args.responses is not None):
        raise UsageError("--reasoning given and --responses PATH go together: PATH holds the "
                         "responses to teacher-force")
    if args.responses is not None and not Path(args.responses).exists():
        raise UsageError(f"--responses '{args.responses}' does not exist")
    if args.vllm:
        configured = dict(cfg.test_cfg.get("generation_engine") or {})
        if configured.get("type", VLLM_TEST_ENGINE["type"]) != VLLM_TEST_ENGINE["type"]:
            raise UsageError(f"--vllm, but the config's test_cfg.generation_engine is a "
                             f"{configured['type']}; drop one of the two")
        cfg.test_cfg.generation_engine = {**VLLM_TEST_ENGINE, **configured}
        from coprs.engine.test_loop import check_generation_engine
        from coprs.rollout.vllm import import_vllm

        try:  # before the model is built and any mode is evaluated
            check_generation_engine(cfg.test_cfg.generation_engine)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

        try:  # now, not after the model is built
            import_vllm()
        except ImportError as exc:
            raise UsageError(f"--vllm: {exc}") from exc
    if args.limit is not None:
        if args.limit < 1:
            raise UsageError(f"--limit {args.limit} must be at least 1")
        for ds in cfg.test_cfg.datasets:  # mmengine's BaseDataset: the first N samples
            ds["indices"] = args.limit

    def dirs(mode: str) -> dict:
        # panels of several modes go to one subfolder each, so they do not overwrite each other
        show = str(Path(args.show_dir) / mode) if several and args.show_dir else args.show_dir
        return dict(reasoning=mode, show_dir=show,
                    out_dir=str(Path(cfg.work_dir) / f"per_sample_{mode}"))

    cfg.test_cfg.update(max_new_tokens=args.max_new_tokens, resume=args.resume,
                        checkpoint=args.checkpoint, **dirs(modes[0]))
    if args.responses is not None:
        cfg.test_cfg.responses = args.responses
    cfg.load_from = None
    if args.launcher != "none":
        init_distributed(args.launcher)
    if args.checkpoint is None:
        trained = Path(cfg.work_dir) / "last_checkpoint"
        if trained.is_file() and args.work_dir is None:
            raise UsageError(
                f"no CHECKPOINT given, and the work dir {cfg.work_dir} holds a trained run "
                f"({trained}): pass {cfg.work_dir} as CHECKPOINT to evaluate it, or --work-dir "
                "elsewhere to evaluate the weights the config builds without overwriting its "
                "per-sample records")
        if is_main_process():
            print("warning: no CHECKPOINT given: evaluating the weights the config builds "
                  "(pretrained paths where it names them, random initialisation elsewhere)",
                  file=sys.stderr)
    register_all_modules()
    # mmengine's Runner writes the config into the work dir when it is built; in a training work
    # dir that would replace the training run's copy, so it is put back (the test run's config
    # stays in its own <timestamp>/vis_data/config.py)
    kept = Path(cfg.work_dir) / Path(cfg.filename or "").name
    training_copy = kept.read_bytes() if cfg.filename and kept.is_file() else None
    runner = Runner.from_cfg(cfg)
    if training_copy is not None and is_main_process():
        kept.write_bytes(training_copy)
    if args.checkpoint is not None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        load_checkpoint(model, args.checkpoint)
    if args.resume:  # every mode's splits are checked before any is evaluated or replaced
        for mode in modes:
            for attr, value in dirs(mode).items():
                setattr(runner.test_loop, attr, value)
            runner.test_loop.check_resumable()
    by_mode = {}
    for mode in modes:
        for attr, value in dirs(mode).items():
            setattr(runner.test_loop, attr, value)
        by_mode[mode] = runner.test()  # every rank gets the collected metrics
        if not is_main_process():
            continue
        if several:
            print(f"\n## reasoning: {mode}\n")
        print(format_results_table(by_mode[mode]))
        print(f"per-sample records: {runner.test_loop.out_dir}")
    main_process = is_main_process()
    finish_distributed()  # what is left is rank 0's printing
    if not main_process:
        return 0
    if several:
        print("\n## reasoning modes compared\n")
        print(format_mode_comparison(by_mode))
    failed = runner.test_loop.failed_datasets
    if args.out:
        results = by_mode if several else by_mode[modes[0]]
        if failed:
            results = dict(results, not_evaluated=failed)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    if failed:
        raise UsageError("not evaluated (the other datasets were): " + "; ".join(
            f"{key} {why}" for key, why in failed.items()) + "; fix the path or format and run "
            "again")
    return 0
