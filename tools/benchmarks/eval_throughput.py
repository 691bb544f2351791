"""Evaluation throughput of the ``tools/test.py`` path (ReasonSegTestLoop → segmentor
``predict_images``: left-padded batched greedy generation, batched readout and decode) at test
batch size 8 vs 1, in samples per second, on the tiny CoPRS assembly.

Both runs evaluate the same samples with the same model; the greedy responses and masks of the
batched run must equal the per-sample ones. Prints one JSON object last::

    PYTHONPATH=. python tools/benchmarks/eval_throughput.py
    {"speedup": 3.50, "same_predictions": true, ...}
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from _common import base_parser, configured, emit, machine, median, timed

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py"


def parse_args(argv: list[str] | None = None):
    p = base_parser("Evaluation throughput of the tools/test.py path, batch size 8 vs 1.")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.samples, args.batch_size, args.max_new_tokens = 2, 2, 2
    scratch = tempfile.TemporaryDirectory(prefix="coprs_bench_eval_", ignore_cleanup_errors=True)
    with scratch as work, configured(args):
        return run(args, Path(work))


def run(args, work: Path) -> dict:
    from mmengine.config import Config
    from mmengine.runner import Runner

    from coprs.engine import ReasonSegTestLoop
    from coprs.utils import register_all_modules

    register_all_modules()
    repeats = args.repeats or (1 if args.quick else 2)
    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = str(work)
    cfg.load_from, cfg.resume = None, False
    cfg.log_level = "WARNING"
    # mmengine keeps one visualizer / logger per name: this run's own, not an earlier Runner's
    cfg.experiment_name = work.name
    cfg.visualizer.name = f"visualizer_{work.name}"
    dataset = dict(cfg.test_cfg.datasets[0], num_samples=args.samples)
    runner = Runner.from_cfg(cfg)
    model = runner.model

    records: list = []
    predict = model.predict_images

    def recording(images, instructions, *a, **kw):
        preds = predict(images, instructions, *a, **kw)
        for ins, pr in zip(instructions, preds):
            records.append((ins, pr.response, hashlib.sha1(pr.mask.tobytes()).hexdigest()))
        return preds

    model.predict_images = recording

    def evaluate(batch_size: int):
        loop = ReasonSegTestLoop(
            runner, dataloader=dict(cfg.test_dataloader, batch_size=batch_size, num_workers=0),
            evaluator=cfg.test_evaluator, datasets=[dataset],
            out_dir=str(work / f"bs{batch_size}"), max_new_tokens=args.max_new_tokens)
        records.clear()
        seconds, metrics = timed(loop.run)
        return seconds, list(records), metrics

    bs = args.batch_size
    if not args.quick:
        evaluate(bs)  # warm-up (first calls allocate, build caches)
    times: dict[int, list[float]] = {1: [], bs: []}
    preds: dict[int, list] = {}
    for _ in range(repeats):  # interleaved so load from other processes hits both alike
        for b in (1, bs):
            seconds, preds[b], _ = evaluate(b)
            times[b].append(seconds)
    same = preds[1] == preds[bs]
    t1, tb = median(times[1]), median(times[bs])
    return emit(dict(
        benchmark="eval_throughput", quick=args.quick, machine=machine(),
        samples=args.samples, batch_size=bs, max_new_tokens=args.max_new_tokens,
        repeats=repeats, same_predictions=bool(same),
        seconds={"bs1": t1, f"bs{bs}": tb},
        samples_per_second={"bs1": args.samples / t1, f"bs{bs}": args.samples / tb},
        speedup=t1 / tb,
    ))


if __name__ == "__main__":
    main(sys.argv[1:])
