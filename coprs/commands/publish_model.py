"""``coprs publish-model``: a training checkpoint stripped to its weights, named by its hash.

The equivalent of mmsegmentation's ``tools/model_converters/publish_model.py``: keep ``state_dict``
and ``meta``, drop the optimizer, message hub, schedulers and random states (what only resuming
needs), and name the file ``<out without .pth>-<first 8 hex digits of its sha256>.pth``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import NamedTuple

from .common import UsageError, read_checkpoint

__all__ = ["add_parser", "run", "publish_checkpoint", "Published"]

#: what a published checkpoint keeps; everything else (optimizer, message_hub, param_schedulers,
#: rng) only serves ``--resume``
KEPT_KEYS = ("state_dict", "meta")


class Published(NamedTuple):
    """What :func:`publish_checkpoint` wrote."""

    path: Path                # <out without .pth>-<sha256[:8]>.pth
    source: Path              # the checkpoint read (a work dir's last_checkpoint followed)
    kept: tuple[str, ...]     # top-level keys written
    dropped: tuple[str, ...]  # top-level keys left out


def add_parser(sub) -> None:
    p = sub.add_parser(
        "publish-model",
        help="strip a training checkpoint to its weights for sharing, named by its sha256",
        description="Read a coprs training checkpoint (or a training work dir: its "
                    "last_checkpoint) with torch.load(weights_only=True), keep state_dict and "
                    "meta, drop the optimizer, message hub, parameter schedulers and random "
                    "states, and write <out without .pth>-<first 8 hex digits of the file's "
                    "sha256>.pth "
                    "(mmsegmentation's publish_model). The file is written atomically; it loads "
                    "as a checkpoint (--checkpoint of infer, test and demo; init_segmentor) but "
                    "cannot resume training. A coprs export-hf folder is not taken: it is "
                    "shared as it is.",
        epilog="example: coprs publish-model work_dirs/coprs_tiny_shapes_cpu "
               "published/coprs_tiny_shapes_cpu.pth",
    )
    p.add_argument("checkpoint", help="training checkpoint (.pth) or a training work dir")
    p.add_argument("out", help="output file, ending in .pth; the hash is added to its name")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    """``9300000`` -> ``9.3 MB`` (decimal units, as ``ls -h --si``)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_training_checkpoint(checkpoint: str | os.PathLike) -> tuple[Path, dict]:
    """(the file, its contents) for a checkpoint file or a training work dir; a UsageError names
    the input when it is missing, unreadable, or not a training checkpoint (a ``coprs
    export-hf`` folder among them)."""
    from coprs.apis import EXPORT_MANIFEST
    from coprs.apis.inference import export_manifest

    export = Path(checkpoint).expanduser()
    if (export / EXPORT_MANIFEST).is_file():
        try:
            source = f" ({export_manifest(export)['checkpoint']})"
        except (ValueError, KeyError, TypeError):
            source = ""
        raise UsageError(
            f"'{export}' is a coprs export-hf folder, which is already the shareable form of a "
            "model (policy/ loads with transformers, seg_head.pth and config.py with coprs); "
            "share the folder as it is (copy it, or tar it), or publish the training checkpoint "
            f"it was exported from{source}")
    path, ckpt = read_checkpoint(checkpoint)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UsageError(f"'{path}' has no 'state_dict': it is not a coprs/mmengine training "
                         "checkpoint; give an iter_<N>.pth written by coprs train, or its work "
                         "dir")
    return path, ckpt


def publish_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Published:
    """Write ``checkpoint``'s ``state_dict`` and ``meta`` to ``<out without .pth>-<sha8>.pth``.

    Args:
        checkpoint: a training checkpoint file, or a training work dir (its ``last_checkpoint``).
        out: the output file, ending in ``.pth``; its folder is created if missing.

    Returns:
        The file written (``sha8`` is the first 8 hex digits of its sha256), the file read and
        the top-level keys kept and dropped.

    Raises:
        UsageError: ``out`` does not end in ``.pth``, or the input is missing, unreadable with
            ``weights_only=True``, or holds no ``state_dict``.
    """
    import torch

    out = Path(out).expanduser()
    if out.suffix != ".pth":
        raise UsageError(f"output '{out}' must end in .pth (the published file is named "
                         "<out without .pth>-<sha256[:8]>.pth)")
    source, ckpt = _read_training_checkpoint(checkpoint)
    published = {k: ckpt[k] for k in KEPT_KEYS if k in ckpt}
    # written next to out, then renamed: an interrupted run leaves no truncated .pth
    tmp = out.with_name(f".{out.stem}-{secrets.token_hex(4)}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, "xb")  # "x": never another run's file; closed below
    except OSError as exc:
        raise UsageError(f"cannot write the output next to '{out}' ({exc.strerror}); give an "
                         "output in a folder you can write to") from exc
    try:
        with f:  # a file object, not a path: torch would name the archive's records after it
            torch.save(published, f)
            f.flush()
            os.fsync(f.fileno())
        final = out.with_name(f"{out.stem}-{_sha256(tmp)[:8]}.pth")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Published(final, source, tuple(published), tuple(k for k in ckpt if k not in published))


def run(args) -> int:
    done = publish_checkpoint(args.checkpoint, args.out)
    dropped = ", ".join(done.dropped) or "nothing"
    print(f"{done.path}  {_size(done.source.stat().st_size)} -> {_size(done.path.stat().st_size)}"
          f"  (from {done.source}; kept {', '.join(done.kept)}; dropped {dropped})")
    return 0
