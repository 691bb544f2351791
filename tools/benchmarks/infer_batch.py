"""``coprs infer --input-jsonl --batch-size N`` against one line at a time: ``segment_batch`` on N
images in one pass vs ``segment`` on each, in images per second, on the tiny CoPRS assembly and
images of the synthetic world's ``test`` split.

Both sides segment the same images with the same model. Padding changes the order of float sums,
so ``differing_mask_pixels`` counts the mask pixels whose logit crossed 0 between the two (a few
at most; 0 with the main job's checkpoint) and ``same_responses`` says whether greedy decoding
wrote the same text. Prints one JSON object last::

    PYTHONPATH=. python tools/benchmarks/infer_batch.py [--checkpoint work_dirs/coprs_tiny_shapes_cpu]
    {"speedup": 2.9, "same_predictions": true, ...}
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import base_parser, configured, emit, interleaved, machine, median

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py"


def parse_args(argv: list[str] | None = None):
    p = base_parser("coprs infer batches: segment_batch on N images vs segment on each.")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--checkpoint", help="a trained checkpoint or work dir (default: the "
                                        "random-initialised tiny model)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.images, args.batch_size, args.max_new_tokens = 2, 2, 2
    with configured(args):
        return run(args)


def run(args) -> dict:
    from coprs.apis import init_segmentor, segment, segment_batch
    from coprs.datasets.shapes import ShapesWorld, sample_seed

    model = init_segmentor(str(CONFIG), checkpoint=args.checkpoint)
    world = ShapesWorld()
    scenes = [world.sample(sample_seed("test", i)) for i in range(args.images)]
    images = [s.image for s in scenes]
    instructions = [s.instruction for s in scenes]
    n, bs, tokens = args.images, args.batch_size, args.max_new_tokens
    out: dict[str, list] = {}

    def one_by_one():
        out["single"] = [segment(model, im, ins, max_new_tokens=tokens)
                         for im, ins in zip(images, instructions)]

    def batched():
        out["batched"] = [r for i in range(0, n, bs) for r in segment_batch(
            model, images[i:i + bs], instructions[i:i + bs], max_new_tokens=tokens)]

    repeats = args.repeats or (1 if args.quick else 2)
    if not args.quick:
        one_by_one(), batched()  # warm-up: first calls allocate and build caches
    times = interleaved({"single": one_by_one, "batched": batched}, repeats)
    pairs = list(zip(out["single"], out["batched"]))
    same_responses = all(a.response == b.response for a, b in pairs)
    pixels = int(sum((a.mask != b.mask).sum() for a, b in pairs))  # masks at threshold 0
    t1, tb = median(times["single"]), median(times["batched"])
    return emit(dict(
        benchmark="infer_batch", quick=args.quick, machine=machine(), images=n, batch_size=bs,
        max_new_tokens=tokens, checkpoint=args.checkpoint, repeats=repeats,
        same_predictions=same_responses and pixels == 0, same_responses=same_responses,
        differing_mask_pixels=pixels, seconds={"single": t1, f"bs{bs}": tb},
        images_per_second={"single": n / t1, f"bs{bs}": n / tb}, speedup=t1 / tb,
    ))


if __name__ == "__main__":
    main(sys.argv[1:])
