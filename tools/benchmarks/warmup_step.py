"""Seconds per warm-up step of the tiny CPU config with its two speed settings on and off.

The tiny main job (``configs/coprs/coprs_tiny_shapes_cpu.py``) must train within 10 minutes on
2 cores. Two settings make its warm-up step cheaper without changing what is computed:

* ``fused``: AdamW's fused implementation (``optim_wrapper.optimizer.fused=True``), one kernel
  over every parameter instead of a loop of small tensor ops per parameter;
* ``tower_cache``: the frozen policy vision tower's output and the tokenised prompt of each
  (image, instruction) pair kept in memory (``model.policy.tower_cache``), so that a sample seen
  before skips the image processor and the tower.

All variants time the same model's training step (``model.train_step``, as the training loop
calls it) on the same warm-up batches of scenes seen before: the frozen SAM features are cached
first, as they are after the main job's first pass, and one untimed pass over the batches fills
the tower cache. A variant switches the policy's ``tower_cache`` off or steps a second optimiser
wrapper built without ``fused``. Variants alternate every few steps (``--chunk``) so that the
machine's drift falls on all alike; the script reports the median seconds per step of each and
its ratio to the config as committed (both settings on).

Prints one JSON object last::

    PYTHONPATH=. python tools/benchmarks/warmup_step.py --threads 2
    {"step_over_committed": {"committed": 1.0, "neither": 1.2, ...}, ...}
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from _common import base_parser, configured, emit, machine
from warmup_batch import TINY_CONFIG, tiny_config, warmup_step_seconds

VARIANTS = {
    "committed": dict(fused=True, tower_cache=True),
    "no_fused": dict(fused=False, tower_cache=True),
    "no_tower_cache": dict(fused=True, tower_cache=False),
    "neither": dict(fused=False, tower_cache=False),
}


def parse_args(argv: list[str] | None = None):
    p = base_parser("Seconds per warm-up step of the tiny CPU config with its speed settings on "
                    "and off.")
    p.add_argument("--iters", type=int, default=None,
                   help="timed steps per variant (default 120)")
    p.add_argument("--chunk", type=int, default=None,
                   help="consecutive steps of one variant before the next (default 5)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with configured(args):
        return run(args)


def run(args) -> dict:
    import copy
    import time

    from mmengine.runner import Runner

    from coprs.utils import register_all_modules

    register_all_modules()
    batch = 2 if args.quick else 4
    iters = args.iters or (2 if args.quick else 120)
    chunk = args.chunk or (1 if args.quick else 5)
    scenes = 4 if args.quick else 64
    result = dict(benchmark="warmup_step", quick=args.quick, machine=machine(), batch=batch,
                  iters=iters, chunk=chunk, scenes=scenes, variants=VARIANTS)
    steps: dict[str, list[float]] = {name: [] for name in VARIANTS}
    scratch = tempfile.TemporaryDirectory(prefix="coprs_bench_step_", ignore_cleanup_errors=True)
    with scratch as work:
        work = Path(work)
        warmup_step_seconds(work, batch, scenes // batch, 0, scenes, "fill")  # SAM features
        cfg = tiny_config(work, batch, scenes, "steps")
        runner = Runner.from_cfg(cfg)
        model = runner.model
        if not (cfg.optim_wrapper.optimizer.get("fused") and model.policy.tower_cache > 0):
            raise RuntimeError(f"{TINY_CONFIG} should set optim_wrapper.optimizer.fused=True and "
                               "model.policy.tower_cache > 0: this benchmark switches them off")
        wrappers = {True: runner.build_optim_wrapper(copy.deepcopy(cfg.optim_wrapper))}
        plain = copy.deepcopy(cfg.optim_wrapper)
        plain.optimizer.fused = False
        wrappers[False] = runner.build_optim_wrapper(plain)
        loader = iter(runner.build_dataloader(cfg.train_dataloader))
        batches = []
        for _ in range(scenes // batch):
            data = next(loader)
            for sample in data["data_samples"]:  # what the loop's supervised stage does
                sample["response"] = sample[cfg.train_cfg.response_key]
            batches.append(data)
        cache_size = model.policy.tower_cache
        for data in batches:  # untimed: fills the tower cache, allocates optimiser state
            for fused in (True, False):
                model.train_step(data, wrappers[fused])
        done = 0
        while done < iters:
            for name, v in VARIANTS.items():
                model.policy.tower_cache = cache_size if v["tower_cache"] else 0
                for i in range(chunk):
                    data = batches[(done + i) % len(batches)]
                    t0 = time.perf_counter()
                    model.train_step(data, wrappers[v["fused"]])
                    steps[name].append(time.perf_counter() - t0)
            done += chunk
    seconds = {name: statistics.median(s) for name, s in steps.items()}
    result.update(
        step_seconds=seconds,
        step_over_committed={name: s / seconds["committed"] for name, s in seconds.items()},
    )
    return emit(result)


if __name__ == "__main__":
    main(sys.argv[1:])
