"""Which object did the mask land on? A failure breakdown for the synthetic world.

For ``--num-samples`` samples of a synthetic split, segment with the model's own (greedy)
reasoning or with the gold reasoning teacher-forced, and classify each predicted mask by the
object holding most of its pixels (inside the objects' boxes): the **target**, an object of the
target's **colour** but another shape, of its **shape** but another colour, an **other** object,
or **none** (no mask pixel inside any object's box). With generated reasoning it also counts
the responses by their final answer ("So the target is the red circle …"), in ``answers``:
``right``, those naming the target's colour and shape (whatever place they name);
``right_colour``, those naming the target's colour (the ``right`` ones among them); ``absent``,
those naming a colour and shape that no object of the image has; ``unparsed``, those without a
readable answer. The counts overlap (``right_colour`` holds every ``right`` answer and may hold
``absent`` ones) and an answer naming another object of the image in another colour is in none,
so they need not add up to ``n``. ``by_answer`` (:data:`ANSWER_CLASSES`) sorts the samples into
exclusive kinds of answer, with each kind's number and gIoU: the target in its place, the target
in another place, another object of the image, an object that is not there, or no parsable
answer. ``absent_by_match`` (:data:`ABSENT_CLASSES`) splits the ``absent`` answers by what they
share with the target: its shape in another colour, its colour with another shape, or neither.

This tells "the decoder cannot separate shapes" (many ``same_colour``) from "the policy names
the wrong object" (generated answers wrong while the gold reasoning works) — docs/benchmarks.md.
``--gold-prefix`` tells where the policy's own reasoning goes wrong: the gold response is forced
up to a point (``inventory``: its first sentence, the objects in the image; ``reasoning``: all
but the answer's object and place) and the policy writes the rest. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from coprs.commands.common import (
    UsageError,
    exit_on_usage_error,
    key_value_action,
    resolve_checkpoint,
)

EXAMPLE = """example:
  python tools/analysis/picked_objects.py configs/coprs/coprs_tiny_shapes_cpu.py \\
      work_dirs/coprs_tiny_shapes_cpu --reasoning gold --num-samples 96
"""

CLASSES = ("target", "same_colour", "same_shape", "other", "none")
#: what a generated final answer names: the target and its region ("in the lower left"), the
#: target with another region, another object of the image, an object not in it, or nothing
ANSWER_CLASSES = ("in_place", "elsewhere", "other_present", "absent", "unparsed")
#: what an ``absent`` answer (an object the image lacks) shares with the target
ABSENT_CLASSES = ("target_shape", "target_colour", "neither")
#: how much of the gold response ``--gold-prefix`` forces: its first sentence ("<think>I see a
#: red square and a blue star."), or everything up to the answer's object ("… So the target is
#: the")
PREFIX_CUTS = ("inventory", "reasoning")
_ANSWER_LEAD = "So the target is the"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Classify each predicted mask by the object it lands on (synthetic world).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a config with a tiny/synthetic-world model")
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="checkpoint or training work dir (omitted: the parts' own weights)")
    parser.add_argument("--reasoning", choices=("generated", "gold"), default="generated",
                        help="the policy's own greedy responses, which also gives 'answers' "
                             "(overlapping counts: right, right_colour with every right one, "
                             "absent, unparsed) and 'by_answer' (exclusive kinds), or the gold "
                             "responses teacher-forced (default: generated)")
    parser.add_argument("--gold-prefix", choices=PREFIX_CUTS, default=None,
                        help="with --reasoning generated: force the gold response up to the end "
                             "of its inventory sentence or up to its answer, and let the policy "
                             "write the rest")
    parser.add_argument("--split", default="test",
                        help="synthetic split: train, val, test or test_novel (default: test)")
    parser.add_argument("--num-samples", type=int, default=96,
                        help="the split's first N samples (default: 96)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cfg-options", nargs="+", action=key_value_action(), default=None,
                        metavar="KEY=VALUE", help="override config entries (as for training), "
                                                  "e.g. model.prior.position_grid=8")
    return parser.parse_args(argv)


def check_split_and_count(split: str, num_samples: int) -> None:
    """``--split`` is a synthetic split and ``--num-samples`` a size it can have: a
    :class:`UsageError` naming the option otherwise (checked before a model is built)."""
    from coprs.datasets.shapes import SEED_STRIDE, SPLITS

    if split not in SPLITS:
        raise UsageError(f"--split {split!r} is not a synthetic split; use one of "
                         f"{', '.join(SPLITS)}")
    if not 1 <= num_samples <= SEED_STRIDE:
        raise UsageError(f"--num-samples {num_samples} must be between 1 and {SEED_STRIDE}")


def classify(mask: np.ndarray, objects: list[dict], target: tuple[str, str]) -> str:
    """The class (one of :data:`CLASSES`) of the object whose box holds most mask pixels."""
    best, best_n = None, 0
    for obj in objects:
        x0, y0, x1, y1 = (int(round(v)) for v in obj["bbox"])
        n = int(mask[y0:y1 + 1, x0:x1 + 1].sum())
        if n > best_n:
            best, best_n = obj, n
    if best is None:
        return "none"
    colour, shape = best["colour"] == target[0], best["shape"] == target[1]
    return ("target" if colour and shape else "same_colour" if colour
            else "same_shape" if shape else "other")


def answer_class(response: str | tuple | None, target: tuple[str, str], region: str,
                 objects: list[dict]) -> str:
    """The class (one of :data:`ANSWER_CLASSES`) of a response's final answer (the response, or
    what :func:`~coprs.datasets.shapes.parse_final_answer` made of it)."""
    from coprs.datasets.shapes import parse_final_answer

    parsed = parse_final_answer(response) if isinstance(response, str) else response
    if parsed is None:
        return "unparsed"
    if parsed[:2] == target:
        return "in_place" if parsed[2] == region else "elsewhere"
    present = parsed[:2] in {(o["colour"], o["shape"]) for o in objects}
    return "other_present" if present else "absent"


def absent_class(parsed: tuple, target: tuple[str, str]) -> str:
    """What an ``absent`` answer's (colour, shape, place) shares with the target (one of
    :data:`ABSENT_CLASSES`): the policy asked for "the star" often copies the shape and guesses
    the colour."""
    return ("target_shape" if parsed[1] == target[1] else
            "target_colour" if parsed[0] == target[0] else "neither")


def gold_prefix(response: str, cut: str) -> str:
    """The start of a gold CoPRS response that ``--gold-prefix cut`` forces (:data:`PREFIX_CUTS`)."""
    mark = "." if cut == "inventory" else _ANSWER_LEAD
    start = response.find(mark)
    if start < 0:
        raise ValueError(f"gold response {response!r} has no {cut} to cut at")
    return response[:start + len(mark)]


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gold_prefix and args.reasoning != "generated":
        raise UsageError("--gold-prefix forces the start of a generated response: use it with "
                         "--reasoning generated")
    check_split_and_count(args.split, args.num_samples)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1")
    from coprs.apis.inference import init_segmentor
    from coprs.datasets.shapes import ShapesReasonDataset, parse_final_answer
    from coprs.evaluation.functional import mask_iou

    model = init_segmentor(args.config, resolve_checkpoint(args.checkpoint),
                           cfg_options=args.cfg_options)
    size = model.vision_backbone.img_size
    data = ShapesReasonDataset(split=args.split, num_samples=args.num_samples, image_size=size)
    counts = dict.fromkeys(CLASSES, 0)
    right_colour = 0
    by_answer: dict[str, list[float]] = {c: [] for c in ANSWER_CLASSES}
    by_absent: dict[str, list[float]] = {c: [] for c in ABSENT_CLASSES}
    ious = []
    for start in range(0, len(data), args.batch_size):
        items = [data.get_data_info(i)
                 for i in range(start, min(start + args.batch_size, len(data)))]
        responses = ([d["response_coprs"] for d in items] if args.reasoning == "gold" else None)
        prefixes = ([gold_prefix(d["response_coprs"], args.gold_prefix) for d in items]
                    if args.gold_prefix else None)
        results = model.predict_images([d["img"] for d in items],
                                       [d["instruction"] for d in items], responses=responses,
                                       response_prefixes=prefixes)
        for d, r in zip(items, results):
            target = tuple(d["gold_answer"].split()[-2:])
            counts[classify(r.mask, d["objects"], target)] += 1
            ious.append(mask_iou(r.mask, d["gt_mask"].astype(bool)))
            if args.reasoning == "generated":
                region = d["gold_answer_region"].partition(" in the ")[2]
                parsed = parse_final_answer(r.response)
                kind = answer_class(parsed, target, region, d["objects"])
                by_answer[kind].append(ious[-1])
                if kind == "absent":
                    by_absent[absent_class(parsed, target)].append(ious[-1])
                right_colour += parsed is not None and parsed[0] == target[0]
        print(f"{len(ious)}/{len(data)} samples", file=sys.stderr, flush=True)
    out = dict(config=args.config, checkpoint=args.checkpoint, reasoning=args.reasoning,
               gold_prefix=args.gold_prefix, split=args.split, n=len(ious),
               giou=round(float(np.mean(ious)), 4), picked=counts)
    if args.reasoning == "generated":
        n = {c: len(v) for c, v in by_answer.items()}
        out["answers"] = dict(right=n["in_place"] + n["elsewhere"], right_colour=right_colour,
                              absent=n["absent"], unparsed=n["unparsed"])
        out["by_answer"], out["absent_by_match"] = (
            {c: dict(n=len(v), giou=round(float(np.mean(v)), 4) if v else None)
             for c, v in groups.items()} for groups in (by_answer, by_absent))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
