"""``coprs demo``: a web page to try a segmentor on your own images (gradio, the ``demo`` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    UsageError,
    add_cfg_options,
    check_checkpoint_arg,
    check_device,
    config_or_export,
    config_stem,
    load_config,
    read_jsonl,
    resolve_checkpoint,
)

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="serve a web demo: image + instruction in; reasoning, heatmap and mask out",
        description="Serve a gradio page on this machine for a config and checkpoint: upload an "
                    "image, write an instruction, and see the response with its chain of "
                    "thought, the positional prior as a heatmap and the mask; edit the reasoning "
                    "and segment again with it (teacher-forced). Needs the demo extra: "
                    'pip install -e ".[demo]".',
        epilog="example: coprs demo --config configs/coprs/coprs_tiny_shapes_cpu.py "
               "--checkpoint work_dirs/coprs_tiny_shapes_cpu   # then open http://127.0.0.1:7860",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="config file (or PLUGIN::path.py); may be left out when "
                                     "--checkpoint is a coprs export-hf folder (its config.py)")
    p.add_argument("--checkpoint", help="trained checkpoint (.pth), a training work dir or a "
                                         "coprs export-hf folder")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; "
                        "0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--out", help="keep each request's files (response.txt, heatmap.png, "
                                 "mask.png, panel.png, result.json) in OUT/<request id>/ "
                                 "(default: a temporary folder)")
    p.add_argument("--max-new-tokens", type=int, help="largest response budget offered")
    p.add_argument("--examples", metavar="JSONL",
                   help='example inputs shown under the form, one {"image": PATH, '
                        '"instruction": TEXT} per line (default: the packaged sample image)')
    add_cfg_options(p)
    p.set_defaults(func=run)


def read_examples(path: str) -> list[list[str]]:
    """``[[image, instruction], …]`` from a JSON-lines file; any bad line is a UsageError that
    names it (checked before the model is built)."""
    examples, bad = [], []
    for n, item, error in read_jsonl(path):
        if error is None and not Path(item["image"]).is_file():
            error = f"{path}:{n}: image '{item['image']}' does not exist"
        if error is not None:
            bad.append(error)
        else:
            examples.append([str(item["image"]), str(item["instruction"])])
    if bad:
        raise UsageError("--examples: " + "; ".join(bad[:5]) + (" …" if len(bad) > 5 else ""))
    if not examples:
        raise UsageError(f"--examples '{path}' has no lines")
    return examples


def run(args) -> int:
    from coprs.apis import demo as web
    from coprs.apis import init_segmentor

    try:  # before the model is built: say what is missing first
        web.import_gradio()
    except ImportError as exc:
        raise UsageError(str(exc)) from exc
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port number (1-65535)")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    args.config = config_or_export(args.config, args.checkpoint)
    examples = read_examples(args.examples) if args.examples else web.sample_examples()
    cfg = load_config(args.config, args.cfg_options)
    checkpoint = resolve_checkpoint(args.checkpoint)
    if checkpoint is not None:
        check_checkpoint_arg(checkpoint)
    model = init_segmentor(cfg, checkpoint, device=check_device(args.device))
    weights = f"checkpoint `{checkpoint}`" if checkpoint else (
        "no checkpoint: the weights the config's parts load themselves (random for tiny models)")
    demo = web.build_demo(
        model,
        title=f"coprs: {config_stem(args.config)}",
        description=f"config `{args.config}`, {weights}, device `{args.device}`",
        examples=examples,
        out_root=Path(args.out) if args.out else None,
        max_new_tokens=args.max_new_tokens,
    )
    try:
        web.launch_demo(demo, server_name=args.host, server_port=args.port, block=True)
    except OSError as exc:  # gradio: "Cannot find empty port in range …"
        raise UsageError(f"cannot serve on {args.host}:{args.port} ({exc}); pass another "
                         "--port or --host") from exc
    return 0
