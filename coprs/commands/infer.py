"""``coprs infer``: segment an image (or a JSONL batch) and write CoT, heatmap, mask, panel."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    UsageError,
    add_cfg_options,
    check_checkpoint_arg,
    check_device,
    config_or_export,
    load_config,
    read_jsonl,
    resolve_checkpoint,
)

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="segment an image from an instruction",
        description="Reason about an instruction on an image and write response.txt, heatmap.png, "
                    "mask.png, panel.png and result.json to --out.",
        epilog='example: coprs infer --config configs/coprs/coprs_tiny_shapes_cpu.py '
               'coprs/assets/sample.png "the shape left of the blue square" --out outputs/demo',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", nargs="?", help="image path")
    p.add_argument("instruction", nargs="?", help="the instruction (quote it)")
    p.add_argument("--config", help="config file (or PLUGIN::path.py); may be left out when "
                                     "--checkpoint is a coprs export-hf folder (its config.py)")
    p.add_argument("--checkpoint", help="trained checkpoint (.pth), a training work dir or a "
                                         "coprs export-hf folder")
    p.add_argument("--out", default="outputs/infer", help="output folder (default: %(default)s)")
    p.add_argument("--input-jsonl", help='batch: lines {"image": PATH, "instruction": TEXT} '
                                         '(optionally "response": TEXT); one output folder per '
                                         "line")
    p.add_argument("--response", help="teacher-force this response instead of generating one, "
                                      "e.g. an edited chain of thought "
                                      "'<think>…</think><REF_POS>': the heatmap and mask show "
                                      "where it points")
    p.add_argument("--batch-size", type=int, default=1,
                   help="--input-jsonl lines segmented per batched pass (default: %(default)s; "
                        "the same results up to float rounding, faster)")
    p.add_argument("--resume", action="store_true",
                   help="with --input-jsonl: keep the lines an earlier run into the same --out "
                        "finished (same checkpoint, config and options) and segment the rest")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int,
                   help="response budget, at least 1 (default: the policy's max_new_tokens)")
    p.add_argument("--allow-empty", action="store_true", help="accept an empty instruction")
    add_cfg_options(p)
    p.set_defaults(func=run)


def _one_line(text: str, limit: int = 400) -> str:
    """Text for a terminal line: whitespace runs folded, long text cut."""
    flat = " ".join(text.split())
    if not flat:
        return "(empty)" if not text else f"(only whitespace: {len(text)} characters)"
    return flat if len(flat) <= limit else flat[:limit] + " …"


def _check_out(out: Path) -> None:
    """``--out`` is a folder, or a path where one can be made: not a file, nor under one."""
    for path in (out, *out.parents):
        if path.exists():
            if path.is_dir():
                return
            where = "is a file" if path == out else f"is inside '{path}', which is a file"
            raise UsageError(f"--out '{out}' {where}; give a folder (created if missing)")


def _image_stamp(image) -> dict | None:
    """The image file's :func:`~coprs.evaluation.progress.file_stamp` (None when it cannot be
    read): a result is kept on ``--resume`` only for the same image content, so an image
    overwritten in place is segmented again."""
    from coprs.evaluation.progress import file_stamp

    try:  # a folder (or "" for the working dir) is no image: not walked, load_image says so
        return file_stamp(image) if Path(image).is_file() else None
    except (OSError, TypeError):
        return None


def _start_batch(out: Path, args, cfg, lines: list[tuple[int, dict]],
                 numbers: list[int]) -> tuple[set[int], str]:
    """Write the batch's fingerprint to ``<out>/run.json``; with ``--resume``, first check it
    against the earlier run's. Returns the line numbers whose folder already holds a complete
    result of this run's fingerprint for the same image (path and content), instruction and
    given response (they are not segmented again), and the fingerprint's digest, which every
    result records. Every other line's old outputs are removed first, so a line that fails this
    time never leaves an earlier result behind as if it were this run's."""
    import json

    from coprs.evaluation.progress import (
        config_digest,
        file_stamp,
        fingerprint_changes,
        plain_config,
    )
    from coprs.utils import atomic_write, source_version

    fingerprint = dict(coprs_version=source_version(), checkpoint=file_stamp(args.checkpoint),
                       model=plain_config(cfg.get("model")), response=args.response,
                       max_new_tokens=args.max_new_tokens, allow_empty=args.allow_empty)
    digest = config_digest(fingerprint)
    run_file, kept = out / "run.json", set()
    if args.resume and run_file.is_file():
        try:
            earlier = json.loads(run_file.read_text(encoding="utf-8"))["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--resume: {run_file} is unreadable ({exc}); delete it, or leave "
                             "out --resume to segment every line again") from None
        changed = fingerprint_changes(earlier, fingerprint)
        if changed:
            raise UsageError(f"--resume: the results in {out} come from another run ({changed});"
                             " give the same checkpoint and options, another --out, or leave out"
                             " --resume to segment every line again")
        for n, item in lines:
            try:
                done = json.loads((out / f"{n:06d}" / "result.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # not segmented, or cut short by the kill: segmented again
            # a folder an earlier run with another fingerprint wrote (a run started over into
            # this folder and stopped before it got here) is not this run's
            if (isinstance(done, dict) and done.get("run") == digest
                    and done.get("image") == str(item["image"])
                    and done.get("image_stamp") == _image_stamp(item["image"])
                    and done.get("instruction") == item["instruction"]
                    and done.get("given_response") == item.get("response", args.response)):
                kept.add(n)
    elif args.resume:
        print(f"--resume: no earlier run in {out}; segmenting every line", file=sys.stderr)
    from coprs.apis.outputs import RESULT_FILES

    for n in numbers:
        if n not in kept:  # result.json first: a folder without it is never taken as done
            for name in ("result.json", *RESULT_FILES):
                (out / f"{n:06d}" / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(run_file, json.dumps({"fingerprint": fingerprint}, indent=2) + "\n")
    return kept, digest


def _warn_leftovers(out: Path, numbers: set[int]) -> None:
    """Name the result folders in ``out`` that are no line of this input (an earlier, longer
    input's): they are left alone, but they are not this batch's results."""
    from coprs.utils import first_few

    left = sorted(p.name for p in out.iterdir() if p.is_dir() and len(p.name) == 6
                  and p.name.isdigit() and int(p.name) not in numbers
                  and (p / "result.json").is_file())
    if left:
        print(f"note: {len(left)} folder(s) in {out} hold results of lines this input does not "
              f"have ({first_few(left, 5)}), from an earlier input; they are left as they are "
              "(delete them, or use another --out, to keep only this batch's)", file=sys.stderr)


def run(args) -> int:
    from tqdm import tqdm

    from coprs.apis import init_segmentor, segment, segment_batch, write_result
    from coprs.image import load_image

    # everything the user passed is checked before the model is built
    if args.input_jsonl is not None and (args.image is not None or args.instruction is not None):
        given = " ".join(repr(a) for a in (args.image, args.instruction) if a is not None)
        raise UsageError(f"--input-jsonl takes the images and instructions from its lines; "
                         f"drop the positional {given}, or drop --input-jsonl")
    if args.input_jsonl is None and (args.image is None or args.instruction is None):
        raise UsageError("give IMAGE and INSTRUCTION, or --input-jsonl FILE")
    if args.resume and args.input_jsonl is None:
        raise UsageError("--resume continues an --input-jsonl batch; one image needs no resume")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be at least 1 (leave it "
                         "out for the policy's default)")
    out = Path(args.out)
    _check_out(out)
    args.config = config_or_export(args.config, args.checkpoint)
    cfg = load_config(args.config, args.cfg_options)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    if args.checkpoint is not None:
        check_checkpoint_arg(args.checkpoint)
    if args.input_jsonl is None:
        image = load_image(args.image)
    else:  # read, and checked against an earlier run, before the model is built
        items = read_jsonl(args.input_jsonl)
        good = [(n, item) for n, item, error in items if error is None]
        kept, digest = _start_batch(out, args, cfg, good, [n for n, _, _ in items])
    model = init_segmentor(cfg, args.checkpoint, device=check_device(args.device))

    if args.input_jsonl is None:
        result = segment(model, image, args.instruction, allow_empty=args.allow_empty,
                         max_new_tokens=args.max_new_tokens, response=args.response)
        summary = write_result(out, image, args.instruction, result)
        given = " (given, teacher-forced)" if args.response is not None else ""
        print(f"response{given}: {_one_line(result.response)}")
        print(f"chain of thought: {_one_line(result.cot)}")
        print(f"format ok: {result.format_ok}; mask area: {summary['mask_area']} px; "
              f"heatmap peak (x, y): {tuple(summary['heatmap_peak_xy'])}, "
              f"value {summary['heatmap_peak']:.2g}")
        print(f"wrote {out}/response.txt heatmap.png mask.png panel.png result.json")
        return 0

    failures = [(n, error) for n, _, error in items if error is not None]
    good = [(n, item) for n, item in good if n not in kept]
    done = len(kept)
    with tqdm(total=len(items), desc="infer", unit="sample") as bar:
        bar.update(len(items) - len(good))
        for start in range(0, len(good), args.batch_size):
            chunk = good[start:start + args.batch_size]
            loaded = []  # decoded once: segmented and drawn from the same array
            for n, item in chunk:
                try:  # the stamp first: a file replaced while it is read is not kept later
                    loaded.append((n, item, _image_stamp(item["image"]),
                                   load_image(item["image"])))
                except (FileNotFoundError, ValueError, TypeError) as exc:
                    failures.append((n, f"{args.input_jsonl}:{n}: {exc}"))
            results = segment_batch(
                model, [image for *_, image in loaded],
                [item["instruction"] for _, item, *_ in loaded],
                [item.get("response", args.response) for _, item, *_ in loaded],
                allow_empty=args.allow_empty, max_new_tokens=args.max_new_tokens)
            for (n, item, stamp, image), result in zip(loaded, results):
                if isinstance(result, Exception):
                    failures.append((n, f"{args.input_jsonl}:{n}: {result}"))
                    continue
                write_result(out / f"{n:06d}", image, item["instruction"], result,
                             extra={"image": str(item["image"]), "line": n, "run": digest,
                                    "image_stamp": stamp,
                                    "given_response": item.get("response", args.response)})
                done += 1
            bar.update(len(chunk))
    print(f"{done} of {len(items)} lines segmented into {out}/<line number>/"
          + (f" ({len(kept)} of them by the earlier run, kept)" if kept else ""))
    _warn_leftovers(out, {n for n, _, _ in items})
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for _, f in sorted(failures):
            print(f"  {f}", file=sys.stderr)
    return 0 if done or not items else 1
