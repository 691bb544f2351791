"""The ``coprs`` command.

Subcommands (one module each in ``coprs.commands``):
    infer             segment an image (or a JSONL batch): CoT, heatmap, mask, panel
    train             train a config (warm-up and/or GRPO + segmentation), resumable
    test              evaluate every split a config names (gIoU, cIoU, heatmap IoU, format rate)
    count-params      parameters per component of a config, on the meta device
    extract-features  precompute frozen backbone features into the feature cache
    browse-dataset    dump what a dataset loader produces as JSON lines and/or PNG panels
    export-hf         the policy (LoRA merged) as a transformers folder + the seg head
    publish-model     a training checkpoint stripped to state_dict + meta, named by its sha256
    list              registered components per registry, with their origin (core or plugin)
    bench-paradigms   train + evaluate CoPRS / LISA / Seg-Zero assemblies under one budget
    print-config      a config with its _base_ files and --cfg-options merged, or a checkpoint's
    collect-env       versions, devices and plugins, for a bug report
    demo              a web page (gradio): image + instruction in; reasoning, heatmap, mask out

Errors in what the user gave (a wrong path, an unreadable image, a bad config key) print one
line and exit with code 2; ``--debug`` shows the traceback. A config argument may name a config
a plugin ships, as ``PLUGIN::path.py`` (``coprs list configs``).

The scripts under ``tools/`` (``python tools/train.py …``) run these subcommands inside
:func:`as_script`, so that their usage lines and errors name the script as it was run, not
``coprs train``.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import sys
import warnings
from collections.abc import Iterator

from . import __version__
from .commands import (
    bench_paradigms,
    browse_dataset,
    collect_env,
    count_params,
    demo,
    export_hf,
    extract_features,
    infer,
    print_config,
    publish_model,
    test,
    train,
)
from .commands import list as list_components
from .commands.common import UsageError

__all__ = ["main", "build_parser", "as_script"]

_COMMANDS = (infer, train, test, count_params, extract_features, browse_dataset, export_hf,
             publish_model, list_components, bench_paradigms, print_config, collect_env, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coprs",
        description="Reasoning segmentation: a multimodal LLM reasons, a positional prior shows "
                    "where it looked, a decoder returns the mask.",
        epilog="example: coprs infer --config configs/coprs/coprs_tiny_shapes_cpu.py IMAGE "
               '"instruction" --out outputs/demo',
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"coprs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, command: str | None, extra: list[str]):
    """Exit (code 2) with the usage of the subcommand the unknown arguments were given to, and
    the closest option for a mistyped one ("--chekpoint" -> "--checkpoint")."""
    import difflib

    target = parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            target = action.choices[command]
    options = [o for a in target._actions for o in a.option_strings]
    hints = []
    for arg in extra:
        if arg.startswith("--"):
            close = difflib.get_close_matches(arg.split("=")[0], options, n=1)
            if close:
                hints.append(f"{arg} (did you mean {close[0]}?)")
                continue
        hints.append(arg)
    target.error(f"unrecognized arguments: {' '.join(hints)}")


#: what :func:`main` calls its subcommand in usage lines and errors (None: ``coprs COMMAND``)
_PROG: contextvars.ContextVar[str | None] = contextvars.ContextVar("coprs_cli_prog", default=None)


@contextlib.contextmanager
def as_script(prog: str | None = None) -> Iterator[None]:
    """Inside, :func:`main` names its subcommand ``prog`` in usage lines and errors (default: the
    running script as it was invoked, ``python tools/train.py``) instead of ``coprs train``. For
    the scripts under ``tools/``::

        with as_script():
            sys.exit(main(["train", *sys.argv[1:]]))
    """
    if prog is None:
        script = sys.argv[0] if sys.argv else ""
        prog = f"python {script}" if script.endswith(".py") else None
    token = _PROG.set(prog)
    try:
        yield
    finally:
        _PROG.reset(token)


def main(argv=None) -> int:
    """Run the ``coprs`` command line ``argv`` (default: ``sys.argv[1:]``), subcommand first, and
    return the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = _PROG.get()
    if prog is not None and argv:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and argv[0] in action.choices:
                action.choices[argv[0]].prog = prog
    debug = "--debug" in argv  # accepted anywhere: `coprs --debug infer …` or `coprs infer … --debug`
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    if extra:
        _unrecognized(parser, args.command, extra)
    args.debug = debug
    if args.command is None:
        parser.print_help()
        return 2
    show = warnings.showwarning

    def show_plugin_warnings_as_one_line(message, category, *rest, **kw):
        if category.__name__ == "PluginWarning":  # a plugin that did not load: say why, briefly
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **kw)

    warnings.showwarning = show_plugin_warnings_as_one_line
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        # `coprs list | head`: the reader stopped reading, which is not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FloatingPointError as exc:  # training stopped after too many non-finite steps
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (UsageError, FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        if args.debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
