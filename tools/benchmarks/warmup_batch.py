"""Seconds per warm-up step of the tiny CPU config at several batch sizes.

The tiny main job (``configs/coprs/coprs_tiny_shapes_cpu.py``) trains at batch 4 because, on a
2-core CPU, a warm-up step at batch 4 costs well under half of one at batch 16 while the prior
learns per step more than per sample (docs/benchmarks.md, calibration 18). This script measures
the first half of that: it runs the config's supervised warm-up stage through the real training
loop at each batch size, on scenes whose frozen SAM features are cached first (as they are after
the main job's first pass over its 3,000 scenes), and reports the median seconds per step, the
seconds per sample and each batch size's step time over the smallest one's.

Prints one JSON object last::

    PYTHONPATH=. python tools/benchmarks/warmup_batch.py --threads 2
    {"batch_sizes": [4, 8, 16], "step_over_smallest": {"16": 2.38, "8": 1.35, "4": 1.0}, ...}
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import base_parser, configured, emit, machine

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py"


def tiny_config(work: Path, batch: int, scenes: int, tag: str):
    """The tiny CPU config for a timing run named ``tag`` under ``work``: quiet, at ``batch``,
    on ``scenes`` scenes, with the SAM feature cache shared by every run under ``work``."""
    from mmengine.config import Config

    from coprs.engine import drop_validation

    cfg = Config.fromfile(str(TINY_CONFIG))
    drop_validation(cfg)
    cfg.work_dir = str(work / tag)
    cfg.log_level = "WARNING"
    # mmengine keeps one visualizer / logger per name: this run's own, not an earlier Runner's
    cfg.experiment_name = f"{work.name}_{tag}"
    cfg.visualizer.name = f"visualizer_{work.name}_{tag}"
    cfg.model.feature_cache = dict(root=str(work / "feature_cache"), dtype="float32")
    cfg.train_dataloader.batch_size = batch
    cfg.train_dataloader.dataset.num_samples = scenes
    return cfg


def warmup_step_seconds(work: Path, batch: int, iters: int, skip: int, scenes: int,
                        tag: str) -> list[float]:
    """Seconds of each of ``iters`` warm-up steps at ``batch`` after ``skip`` untimed ones."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    cfg = tiny_config(work, batch, scenes, tag)
    cfg.train_cfg.stages = [dict(kind="sft", iters=skip + iters)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=10 ** 9)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=10 ** 9)
    cfg.param_scheduler = []
    cfg.custom_hooks = []
    runner = Runner.from_cfg(cfg)
    marks: list[float] = []

    class Clock(Hook):
        priority = "LOWEST"

        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            marks.append(time.perf_counter())

        def after_train(self, runner) -> None:
            marks.append(time.perf_counter())

    runner.register_hook(Clock())
    runner.train()
    steps = [b - a for a, b in zip(marks[:-1], marks[1:])]
    return steps[skip:]


def parse_args(argv: list[str] | None = None):
    p = base_parser("Seconds per warm-up step of the tiny CPU config at several batch sizes.")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="batch sizes to time (default 4 8 16)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per batch size (30)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with configured(args):
        return run(args)


def run(args) -> dict:
    from coprs.utils import register_all_modules

    register_all_modules()
    sizes = args.batch_sizes or ([1, 2] if args.quick else [4, 8, 16])
    iters = args.iters or (1 if args.quick else 30)
    skip = 1 if args.quick else 3
    scenes = max(sizes) * (2 if args.quick else 4)
    result = dict(benchmark="warmup_batch", quick=args.quick, machine=machine(),
                  batch_sizes=sizes, iters=iters, scenes=scenes)
    scratch = tempfile.TemporaryDirectory(prefix="coprs_bench_batch_", ignore_cleanup_errors=True)
    with scratch as work:
        work = Path(work)
        # one untimed pass over every scene fills the feature cache
        warmup_step_seconds(work, max(sizes), scenes // max(sizes), 0, scenes, "fill")
        seconds = {}
        for b in sizes:
            steps = warmup_step_seconds(work, b, iters, skip, scenes, f"b{b}")
            seconds[b] = statistics.median(steps)
    smallest = seconds[min(sizes)]
    result.update(
        step_seconds={str(b): s for b, s in seconds.items()},
        sample_seconds={str(b): s / b for b, s in seconds.items()},
        step_over_smallest={str(b): s / smallest for b, s in seconds.items()},
    )
    return emit(result)


if __name__ == "__main__":
    main(sys.argv[1:])
