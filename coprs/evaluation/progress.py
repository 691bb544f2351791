"""Resumable evaluation: the records of a split written as it goes, and what a rerun may reuse.

A long evaluation (a 7B policy reasoning over thousands of samples) that is killed — a
preempted job, a lost node — should not start over. While a split is evaluated, every rank
appends the per-sample record of each sample it has scored to
``<out_dir>/<dataset>_<split>/progress/rank<r>.jsonl``; ``run.json`` beside ``per_sample.jsonl``
says what produced them (the fingerprint: checkpoint file, reasoning mode, response budget,
model, dataset and metric configs, coprs version) and whether the split finished. ``coprs test
--resume`` reads them back and predicts only the samples without a record
(:class:`ReasonSegTestLoop`, ``resume=True``); a fingerprint that differs is an error naming
what changed, never a silent mix of two runs' records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmengine.dist import barrier, get_rank, is_main_process
from mmengine.logging import print_log

from .functional import append_per_sample, read_per_sample

__all__ = ["EvalProgress", "config_digest", "plain_config", "file_stamp", "fingerprint_changes",
           "check_interrupted", "PROGRESS_DIRNAME", "RUN_FILENAME", "PER_SPLIT_KEYS"]

#: the folder (inside a split's results folder) of the records written as the split goes
PROGRESS_DIRNAME = "progress"
#: the fingerprint of the run that wrote a split's records, and whether it finished
RUN_FILENAME = "run.json"


def plain_config(cfg: Any, drop: Iterable[str] = ()) -> Any:
    """A config (a dict or mmengine ``ConfigDict``) as plain JSON values, without the top-level
    keys ``drop`` (what is not JSON is written as its ``repr``); None for None. A fingerprint
    keeps configs so, and :func:`fingerprint_changes` names the keys that changed."""
    if cfg is None:
        return None
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if isinstance(cfg, Mapping):
        cfg = {k: v for k, v in cfg.items() if k not in set(drop)}
    return _json_round_trip(cfg)


def config_digest(cfg: Any, drop: Iterable[str] = ()) -> str | None:
    """A short sha256 of :func:`plain_config` in canonical JSON; None for None."""
    if cfg is None:
        return None
    text = json.dumps(plain_config(cfg, drop), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


#: files up to this size are hashed whole by :func:`file_stamp`
_STAMP_WHOLE = 64 << 20
#: a larger file: this many evenly spaced pieces of this size, and its last piece
_STAMP_PIECES, _STAMP_PIECE = 64, 1 << 20


def file_stamp(path: str | os.PathLike | None) -> dict | None:
    """What identifies a checkpoint (an annotation file, a responses file, an image) by its
    content: its size and a sha256 of all of it up to 64 MiB; of a larger file (a checkpoint of
    GBs), of 64 evenly spaced MiB and the last MiB, so that a 15 GB file costs a fraction of a
    second. Any training step changes every tensor of a checkpoint, and so every piece; a
    ``torch.save`` zip also ends with a CRC of every tensor. A copy or a move keeps the stamp; a
    file rewritten in place changes it. For a folder (an ``export-hf`` directory), every file's.
    None for None."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if path.is_dir():
        return {"files": {p.relative_to(path).as_posix(): file_stamp(p)
                          for p in sorted(path.rglob("*")) if p.is_file()}}
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= _STAMP_WHOLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            step = (size - _STAMP_PIECE) // _STAMP_PIECES
            for offset in [i * step for i in range(_STAMP_PIECES)] + [size - _STAMP_PIECE]:
                f.seek(offset)
                digest.update(f.read(_STAMP_PIECE))
    return {"size": size, "sha256": digest.hexdigest()[:16]}


def _json_round_trip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=repr))


def fingerprint_changes(earlier: Mapping, now: Mapping, limit: int = 5) -> str:
    """What differs between two fingerprints (compared as JSON), one ``key: <then> then, <now>
    now`` per differing value, nested keys dotted (``model.policy.max_pixels: 705600 then, 12544
    now``), the first ``limit`` of them joined by ``; ``; empty when they are the same."""
    from ..utils import first_few

    def diff(a, b, key: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b), key=str)
                    for d in diff(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))]
        return [] if a == b else [f"{key}: {a!r} then, {b!r} now"]

    return first_few(diff(_json_round_trip(dict(earlier)), _json_round_trip(dict(now)), ""),
                     limit, sep="; ")


#: fingerprint keys that differ between the splits of one evaluation
PER_SPLIT_KEYS = ("dataset", "annotations")


def check_interrupted(out_dir: str | os.PathLike, fingerprint: Mapping) -> None:
    """Before a resumed evaluation touches any split: raise when a split in ``out_dir`` was
    interrupted by an evaluation whose checkpoint or options (the keys every split shares, all
    but :data:`PER_SPLIT_KEYS`) differ from ``fingerprint``'s. Without this check the splits
    before it, finished by that evaluation, would be replaced as another evaluation's before the
    interrupted one refused: a typo in a resume command would cost them. An unreadable
    ``run.json`` is left for its split to report."""
    def shared(fp: Mapping) -> dict:
        return {k: v for k, v in fp.items() if k not in PER_SPLIT_KEYS}

    for run_file in sorted(Path(out_dir).glob(f"*/{RUN_FILENAME}")):
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (not isinstance(run, dict) or run.get("complete")
                or not isinstance(run.get("fingerprint"), dict)):
            continue
        changed = fingerprint_changes(shared(run["fingerprint"]), shared(fingerprint))
        if changed:
            raise ValueError(
                f"--resume: {run_file.parent} holds the records of an interrupted evaluation "
                f"with another checkpoint or options ({changed}); nothing was evaluated or "
                "replaced. Give the same checkpoint and options to continue it, delete "
                f"{run_file.parent} to drop that split's records, or give another --work-dir")


class EvalProgress:
    """The records of one split's evaluation, written as it goes (see the module docstring).

    Args:
        split_dir: the split's results folder (``<out_dir>/<dataset>_<split>``).
        fingerprint: what produced the records (JSON-able; compared key by key on resume).
        split: ``<dataset>/<split>``, for messages.
    """

    def __init__(self, split_dir: str | os.PathLike, fingerprint: dict, split: str) -> None:
        self.split_dir = Path(split_dir)
        self.fingerprint = _json_round_trip(fingerprint)
        self.split = split
        self.progress_dir = self.split_dir / PROGRESS_DIRNAME
        self.run_file = self.split_dir / RUN_FILENAME
        self._unwritable: str | None = None  # why this rank's progress could not be written

    # ------------------------------------------------------------------ start
    def start(self, resume: bool) -> dict[str, dict]:
        """Begin the split; returns ``{sample_id: record}`` of the samples an earlier run with
        the same fingerprint scored (empty unless ``resume``).

        Without ``resume`` the earlier progress is discarded (a finished ``per_sample.jsonl``
        stays until this run replaces it). With ``resume`` and no earlier run, the split starts
        from nothing. Every rank reads; rank 0 writes; all ranks meet before returning.

        Raises:
            ValueError: with ``resume``, when the earlier run's fingerprint differs (the message
                names each difference and what to do).
        """
        done: dict[str, dict] = {}
        earlier = self._read_run() if resume else None
        if earlier is not None:
            changed = fingerprint_changes(earlier["fingerprint"], self.fingerprint)
            if changed and earlier.get("complete"):
                # another evaluation's finished records (e.g. another checkpoint evaluated into
                # the same work dir before this one was interrupted): this evaluation never
                # reached the split, so it starts it, as it would have without the interruption
                print_log(f"{self.split}: its records in {self.split_dir} are those of another, "
                          f"finished evaluation ({changed}); they are replaced",
                          logger="current", level=logging.WARNING)
                earlier = None
            elif changed:
                self._refuse(changed)
            else:
                done = self._read_done(complete=bool(earlier.get("complete")))
        elif is_main_process() and not resume:
            self._warn_discarded()
        if is_main_process():
            if earlier is None:
                shutil.rmtree(self.progress_dir, ignore_errors=True)
                self._write_run(complete=False)
            self.progress_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        return done

    def _warn_discarded(self) -> None:
        """Say so when starting over discards records --resume would have kept (those of an
        interrupted run with the same fingerprint)."""
        try:
            run = self._read_run()
            same = not fingerprint_changes(run["fingerprint"], self.fingerprint)
        except (TypeError, ValueError):  # no earlier run, or an unreadable one
            return
        if run.get("complete"):
            return
        left = sum(len([x for x in p.read_bytes().splitlines() if x.strip()])
                   for p in self.progress_dir.glob("rank*.jsonl"))
        if same and left:
            print_log(f"{self.split}: {left} records of an interrupted evaluation with the same "
                      f"checkpoint and options in {self.progress_dir} are discarded; coprs test "
                      "--resume would have kept them", logger="current", level=logging.WARNING)

    def _read_run(self) -> dict | None:
        if not self.run_file.is_file():
            return None
        try:
            run = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"{self.run_file} (the record of an earlier evaluation of {self.split}) is "
                f"unreadable ({exc}); delete it to evaluate {self.split} from the start") from None
        if not isinstance(run, dict) or "fingerprint" not in run:
            raise ValueError(f"{self.run_file} has no fingerprint; delete it to evaluate "
                             f"{self.split} from the start")
        return run

    def _refuse(self, changed: str) -> None:
        raise ValueError(
            f"--resume: the records of {self.split} in {self.split_dir} were written by another, "
            f"interrupted evaluation ({changed}). Evaluate with the same checkpoint and options "
            f"to continue it, delete {self.split_dir} to evaluate this split from the start "
            "(the other splits' records are kept), or give another --work-dir")

    def _read_done(self, complete: bool) -> dict[str, dict]:
        from .functional import PER_SAMPLE_FILENAME

        done: dict[str, dict] = {}
        final = self.split_dir / PER_SAMPLE_FILENAME
        if complete and final.is_file():
            done.update((str(r["sample_id"]), r) for r in read_per_sample(final))
        for path in sorted(self.progress_dir.glob("rank*.jsonl")):
            done.update(self._read_progress(path))
        return done

    @staticmethod
    def _read_progress(path: Path) -> dict[str, dict]:
        """One rank's records; a line cut short by a killed process, or any line that is not a
        whole record, is left out (that sample is predicted again)."""
        from .functional import PER_SAMPLE_KEYS

        out, broken = {}, 0
        with path.open("rb") as f:  # a line cut inside a character is one broken line
            for line in f:
                try:
                    record = json.loads(line.decode("utf-8"))
                    if not all(k in record for k in PER_SAMPLE_KEYS):
                        raise KeyError
                    out[str(record["sample_id"])] = record
                except (ValueError, TypeError, KeyError):
                    broken += 1
        if broken:
            print_log(f"{path}: {broken} unreadable line(s) left out (a write cut short); "
                      "their samples are evaluated again", logger="current", level=logging.WARNING)
        return out

    def _write_run(self, complete: bool) -> None:
        from ..utils import atomic_write

        atomic_write(self.run_file, json.dumps(
            {"fingerprint": self.fingerprint, "complete": complete}, indent=2) + "\n")

    # --------------------------------------------------------------- progress
    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """This rank's newly scored records, on disk before returning."""
        records = list(records)
        if not records or self._unwritable is not None:
            return
        path = self.progress_dir / f"rank{get_rank()}.jsonl"
        try:
            append_per_sample(path, records)
        except OSError as exc:  # a full disk, a read-only file: the evaluation itself goes on
            self._unwritable = str(exc)
            print_log(f"{self.split}: cannot write {path} ({exc}); the evaluation goes on, but "
                      "what it scores from here on cannot be resumed", logger="current",
                      level=logging.WARNING)

    def finish(self) -> None:
        """The split's ``per_sample.jsonl`` is written (rank 0, by the metric): mark the run
        complete. The progress files stay: they hold every record of this evaluation, also
        those a ``--limit`` run left out of ``per_sample.jsonl``, for a later ``--resume``.
        Every rank calls it."""
        barrier()
        if is_main_process():
            self._write_run(complete=True)
