"""Pure numpy arithmetic for reasoning-segmentation metrics (SPEC §5).

Metrics follow the mmseg two-phase pattern: :func:`sample_counts` keeps per-sample pixel counts
(the ``process()`` phase) and :func:`reduce_counts` turns a list of them into split-level numbers
(the ``compute_metrics()`` phase). Because the counts are kept for every ignore mode, any protocol
can be recomputed later from the per-sample results file without rerunning the model
(:func:`write_per_sample` / :func:`read_per_sample`, ``tools/analysis/recompute_metrics.py``).

Default protocol = LISA's reference code:

* the prediction is ``mask_logits > 0`` at the original image resolution (the caller thresholds);
* ``ignore`` pixels count in neither intersection nor union (``ignore_mode='exclude'``);
* a sample whose union is zero (empty prediction and empty ground truth) scores IoU 1
  (``empty_empty=1.0``);
* gIoU = mean of per-sample IoU, cIoU = Σ intersection / Σ union over the split.

LISA divides by ``union + 1e-5`` (per sample) and ``Σ union + 1e-10`` (split); here the division is
exact, which differs from LISA by at most ~1e-5 relative and only for tiny unions.

Peers differ (Seg-Zero drops empty/empty samples, VisionReasoner and Seg-R1 score them 0, some treat
ignore regions as foreground or background), hence the explicit switches
``empty_empty ∈ {1.0, 0.0, 'skip'}`` and ``ignore_mode ∈ {'exclude', 'background', 'foreground'}``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IGNORE_MODES",
    "EMPTY_EMPTY_CHOICES",
    "PRECISION_THRESHOLDS",
    "COUNT_KEYS",
    "PER_SAMPLE_KEYS",
    "PER_SAMPLE_FILENAME",
    "sample_counts",
    "sample_iou",
    "reduce_counts",
    "reduce_by",
    "iou_metrics",
    "mask_iou",
    "results_subdir",
    "write_per_sample",
    "append_per_sample",
    "read_per_sample",
    "read_json_records",
    "find_per_sample",
]

IGNORE_MODES: tuple[str, ...] = ("exclude", "background", "foreground")
"""How ignore pixels are scored: dropped, counted as ground-truth background, or as foreground."""

EMPTY_EMPTY_CHOICES: tuple[float | str, ...] = (1.0, 0.0, "skip")
"""Score of a sample whose union is zero (LISA: 1.0; VisionReasoner/Seg-R1: 0.0; Seg-Zero: skip)."""

PRECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.9)
"""IoU thresholds of ``Pr@t`` (share of samples with IoU ≥ t), as referring segmentation reports."""

COUNT_KEYS: tuple[str, ...] = tuple(
    f"{kind}_{mode}" for mode in IGNORE_MODES for kind in ("inter", "union")
)
"""Per-sample count keys, one intersection/union pair per ignore mode."""

PER_SAMPLE_KEYS: tuple[str, ...] = (
    "sample_id",
    "instruction",
    *COUNT_KEYS,
    "pred_area",
    "gt_area",
    "ignore_area",
    "iou",
    "heatmap_iou",
    "format_ok",
)
"""Every field of one line of ``per_sample.jsonl`` (see :func:`write_per_sample`)."""

PER_SAMPLE_FILENAME = "per_sample.jsonl"
"""File name of the per-sample results inside ``<results_dir>/<dataset>_<split>/``."""

# Fields read_per_sample insists on: enough to recompute every protocol.
_REQUIRED_READ_KEYS: tuple[str, ...] = ("sample_id", *COUNT_KEYS)


def _as_bool_mask(name: str, mask: Any) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(
            f"{name} must be a boolean mask, got dtype {arr.dtype}; threshold it first "
            f"(e.g. `logits > 0` for predictions, `gt > 0` for label maps)"
        )
    return arr


def _check_ignore_mode(ignore_mode: str) -> None:
    if ignore_mode not in IGNORE_MODES:
        raise ValueError(f"ignore_mode must be one of {IGNORE_MODES}, got {ignore_mode!r}")


def _check_empty_empty(empty_empty: float | str, allow_skip: bool = True) -> None:
    if isinstance(empty_empty, str):
        ok = allow_skip and empty_empty == "skip"
    elif isinstance(empty_empty, (int, float, np.integer, np.floating)):
        ok = not isinstance(empty_empty, bool) and empty_empty in (1.0, 0.0)
    else:
        ok = False
    if not ok:
        valid = EMPTY_EMPTY_CHOICES if allow_skip else (1.0, 0.0)
        raise ValueError(f"empty_empty must be one of {valid}, got {empty_empty!r}")


def sample_counts(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None
) -> dict[str, int]:
    """Pixel counts of one sample under every ignore mode.

    Ignore modes (``gt'`` is the ground truth used for scoring):

    * ``exclude`` (LISA): ignore pixels count in neither intersection nor union.
    * ``background``: ``gt' = gt & ~ignore``; predicted ignore pixels are false positives.
    * ``foreground``: ``gt' = gt | ignore``; unpredicted ignore pixels are false negatives.

    Without an ``ignore`` mask the three modes give identical counts.

    Args:
        pred (np.ndarray): bool, H x W. Predicted mask (already thresholded, e.g. ``logits > 0``).
        gt (np.ndarray): bool, H x W. Ground-truth mask.
        ignore (np.ndarray | None): bool, H x W. Pixels marked "ignore"; ``None`` means none.

    Returns:
        dict[str, int]: ``inter_<mode>`` and ``union_<mode>`` for each mode in
        :data:`IGNORE_MODES`, plus ``pred_area``, ``gt_area`` and ``ignore_area`` (raw pixel
        counts of the three input masks).

    Raises:
        ValueError: if the shapes of the masks differ.
        TypeError: if a mask is not boolean.
    """
    pred = _as_bool_mask("pred", pred)
    gt = _as_bool_mask("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}; "
            "resize the prediction to the original image resolution before scoring"
        )
    if ignore is None:
        ignore = np.zeros_like(gt)
    else:
        ignore = _as_bool_mask("ignore", ignore)
        if ignore.shape != gt.shape:
            raise ValueError(
                f"ignore must have the same shape as gt, got ignore {ignore.shape} and "
                f"gt {gt.shape}"
            )
    valid = ~ignore
    gt_bg = gt & valid
    gt_fg = gt | ignore
    counts = {
        "inter_exclude": int(np.count_nonzero(pred & gt & valid)),
        "union_exclude": int(np.count_nonzero((pred | gt) & valid)),
        "inter_background": int(np.count_nonzero(pred & gt_bg)),
        "union_background": int(np.count_nonzero(pred | gt_bg)),
        "inter_foreground": int(np.count_nonzero(pred & gt_fg)),
        "union_foreground": int(np.count_nonzero(pred | gt_fg)),
        "pred_area": int(np.count_nonzero(pred)),
        "gt_area": int(np.count_nonzero(gt)),
        "ignore_area": int(np.count_nonzero(ignore)),
    }
    return counts


def _record_counts(
    record: Mapping[str, Any], ignore_mode: str, where: str = "record"
) -> tuple[int, int]:
    try:
        inter = record[f"inter_{ignore_mode}"]
        union = record[f"union_{ignore_mode}"]
    except KeyError as err:
        raise ValueError(
            f"{where} has no {err.args[0]!r} count; records must come from sample_counts() "
            f"(keys {COUNT_KEYS})"
        ) from None
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (inter, union))
    if not ints or not 0 <= inter <= union:
        raise ValueError(
            f"{where} has invalid counts for ignore_mode={ignore_mode!r}: intersection "
            f"{inter!r}, union {union!r} (need integers with 0 <= intersection <= union)"
        )
    return int(inter), int(union)


def sample_iou(
    record: Mapping[str, Any], empty_empty: float | str = 1.0, ignore_mode: str = "exclude"
) -> float | None:
    """IoU of one sample from its counts.

    Args:
        record (Mapping[str, Any]): counts as returned by :func:`sample_counts`.
        empty_empty (float | str): IoU when the union is zero: ``1.0``, ``0.0`` or ``'skip'``.
        ignore_mode (str): one of :data:`IGNORE_MODES`.

    Returns:
        float | None: ``inter / union``; for a zero union ``empty_empty``, or ``None`` if it is
        ``'skip'``.
    """
    _check_empty_empty(empty_empty)
    _check_ignore_mode(ignore_mode)
    inter, union = _record_counts(record, ignore_mode)
    if union == 0:
        return None if empty_empty == "skip" else float(empty_empty)
    return inter / union


def reduce_counts(
    records: Sequence[Mapping[str, Any]],
    empty_empty: float | str = 1.0,
    ignore_mode: str = "exclude",
) -> dict[str, float | int]:
    """Split-level gIoU and cIoU from per-sample counts.

    A sample with zero union (empty prediction and empty ground truth, after the ignore mode is
    applied) scores ``empty_empty`` in gIoU; with ``'skip'`` it is left out of gIoU and ``n`` and
    counted in ``n_skipped``. Such a sample adds nothing to Σ intersection or Σ union, so cIoU is the
    same under all three settings.

    With no scored samples (``n == 0``) gIoU is 0.0, and cIoU is 0.0 whenever Σ union is 0 (LISA's
    ``Σ inter / (Σ union + 1e-10)``); results are never NaN.

    Args:
        records (Sequence[Mapping[str, Any]]): per-sample counts from :func:`sample_counts`, or
            lines of a per-sample file (extra keys are ignored).
        empty_empty (float | str): ``1.0`` (LISA), ``0.0`` or ``'skip'``.
        ignore_mode (str): ``'exclude'`` (LISA), ``'background'`` or ``'foreground'``.

    Returns:
        dict[str, float | int]: ``gIoU`` (mean per-sample IoU), ``cIoU`` (Σ inter / Σ union),
        ``n`` (samples scored), ``n_skipped``, and ``Pr@0.5`` / ``Pr@0.7`` / ``Pr@0.9``: the share
        of scored samples whose IoU is at least the threshold (the referring-segmentation
        literature's precision, :data:`PRECISION_THRESHOLDS`; 0.0 when ``n == 0``).

    Raises:
        ValueError: on an unknown ``empty_empty`` or ``ignore_mode``, or a record without valid
            counts.
    """
    _check_empty_empty(empty_empty)
    _check_ignore_mode(ignore_mode)
    total_inter = total_union = 0
    ious: list[float] = []
    n_skipped = 0
    for index, record in enumerate(records):
        inter, union = _record_counts(record, ignore_mode, f"record {index}")
        total_inter += inter
        total_union += union
        if union == 0:
            if empty_empty == "skip":
                n_skipped += 1
                continue
            ious.append(float(empty_empty))
        else:
            ious.append(inter / union)
    n, iou_sum = len(ious), sum(ious)
    out = {
        "gIoU": iou_sum / n if n else 0.0,
        "cIoU": total_inter / total_union if total_union else 0.0,
        "n": n,
        "n_skipped": n_skipped,
    }
    for t in PRECISION_THRESHOLDS:
        out[f"Pr@{t}"] = sum(i >= t for i in ious) / n if n else 0.0
    return out


def reduce_by(
    records: Sequence[Mapping[str, Any]],
    key: str,
    empty_empty: float | str = 1.0,
    ignore_mode: str = "exclude",
) -> dict[str, dict[str, float | int]]:
    """:func:`reduce_counts` per value of ``record[key]`` (e.g. ``instruction_type``).

    Records without a value for ``key`` are left out; the groups come in sorted order of
    ``str(value)``, an empty dict when no record has the key.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get(key) is not None:
            groups.setdefault(str(r[key]), []).append(r)
    return {v: reduce_counts(groups[v], empty_empty, ignore_mode) for v in sorted(groups)}


def iou_metrics(
    preds: Iterable[np.ndarray],
    gts: Iterable[np.ndarray],
    ignores: Iterable[np.ndarray | None] | None = None,
    empty_empty: float | str = 1.0,
    ignore_mode: str = "exclude",
) -> dict[str, Any]:
    """gIoU / cIoU of a list of masks: :func:`reduce_counts` over :func:`sample_counts`.

    Args:
        preds (Iterable[np.ndarray]): bool masks, each H_i x W_i.
        gts (Iterable[np.ndarray]): bool masks, same shapes as ``preds``.
        ignores (Iterable[np.ndarray | None] | None): optional bool ignore masks (or ``None``
            entries), same shapes.
        empty_empty (float | str): ``1.0``, ``0.0`` or ``'skip'``.
        ignore_mode (str): one of :data:`IGNORE_MODES`.

    Returns:
        dict[str, Any]: the keys of :func:`reduce_counts` plus ``per_sample_iou``, a list aligned
        with the inputs (``None`` for samples skipped as empty/empty).

    Raises:
        ValueError: if the numbers of predictions, ground truths and ignore masks differ.
    """
    _check_empty_empty(empty_empty)
    _check_ignore_mode(ignore_mode)
    preds, gts = list(preds), list(gts)
    ignores = [None] * len(gts) if ignores is None else list(ignores)
    if not len(preds) == len(gts) == len(ignores):
        raise ValueError(
            f"need one prediction, ground truth and ignore mask per sample, got {len(preds)} "
            f"predictions, {len(gts)} ground truths and {len(ignores)} ignore masks"
        )
    records = [sample_counts(p, g, i) for p, g, i in zip(preds, gts, ignores)]
    metrics: dict[str, Any] = reduce_counts(records, empty_empty, ignore_mode)
    metrics["per_sample_iou"] = [sample_iou(r, empty_empty, ignore_mode) for r in records]
    return metrics


def mask_iou(a: np.ndarray, b: np.ndarray, empty_empty: float = 1.0) -> float:
    """IoU of two boolean masks, e.g. the heatmap IoU ``sigmoid(prior) > 0.5`` vs ground truth.

    Args:
        a (np.ndarray): bool, H x W.
        b (np.ndarray): bool, H x W.
        empty_empty (float): value when both masks are empty, ``1.0`` or ``0.0``.

    Returns:
        float: ``|a & b| / |a | b|``.

    Raises:
        ValueError: if the shapes differ or ``empty_empty`` is not 1.0 or 0.0.
    """
    _check_empty_empty(empty_empty, allow_skip=False)
    a = _as_bool_mask("a", a)
    b = _as_bool_mask("b", b)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got a {a.shape} and b {b.shape}")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return float(empty_empty)
    return int(np.count_nonzero(a & b)) / union


def results_subdir(dataset: str, split: str) -> str:
    """Directory name of one evaluated dataset/split: ``<dataset>_<split>`` with ``/`` → ``_``.

    Args:
        dataset (str): dataset name, e.g. ``'reason_seg'`` or ``'refcoco+'``.
        split (str): split name, e.g. ``'val'`` or ``'testA'``.

    Returns:
        str: e.g. ``results_subdir('refcoco/unc', 'val') == 'refcoco_unc_val'``.
    """
    return f"{dataset}_{split}".replace("/", "_").replace(os.sep, "_")


def _json_default(obj: Any) -> Any:
    """Record values JSON does not know: numpy scalars and arrays, tensors (their values),
    paths (their text); anything else is a TypeError naming its type."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or type(obj).__name__ == "Tensor":
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def write_per_sample(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write per-sample results as JSON lines (one object per sample).

    Each record must have every key of :data:`PER_SAMPLE_KEYS`::

        {"sample_id": str, "instruction": str,
         "inter_exclude": int, "union_exclude": int, "inter_background": int,
         "union_background": int, "inter_foreground": int, "union_foreground": int,
         "pred_area": int, "gt_area": int, "ignore_area": int,
         "iou": float | null, "heatmap_iou": float | null, "format_ok": bool}

    Extra keys are kept. numpy scalars are converted to Python numbers; non-finite floats are
    written as ``null`` so the file stays valid JSON. Parent directories are created.

    Args:
        path (str | os.PathLike): output file, by convention
            ``<results_dir>/<results_subdir(dataset, split)>/per_sample.jsonl``.
        records (Iterable[Mapping[str, Any]]): one mapping per sample.

    Returns:
        Path: the written path.

    Raises:
        ValueError: if a record lacks a required key.
    """
    return _write_records(path, records, "w")


def append_per_sample(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """:func:`write_per_sample`, appending to ``path`` (created if missing) and flushing the
    lines to disk before returning, so that records written survive the process being killed
    (an evaluation's progress, :mod:`coprs.evaluation.progress`)."""
    return _write_records(path, records, "a")


def _ends_cut_short(path: Path) -> bool:
    """Whether ``path`` exists and its last byte is not a newline (a write cut short)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _write_records(path: str | os.PathLike, records: Iterable[Mapping[str, Any]], mode: str
                   ) -> Path:
    path = Path(path)
    lines = []
    for index, record in enumerate(records):
        missing = [k for k in PER_SAMPLE_KEYS if k not in record]
        if missing:
            raise ValueError(
                f"per-sample record {index} (sample_id={record.get('sample_id')!r}) lacks "
                f"{missing}; every record needs {PER_SAMPLE_KEYS}"
            )
        clean = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in record.items()
        }
        lines.append(json.dumps(clean, default=_json_default, ensure_ascii=False))
    text = "".join(line + "\n" for line in lines)
    if mode == "w":  # a kill mid-write leaves the old file or the new one
        from ..utils import atomic_write

        atomic_write(path, text)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "a" and _ends_cut_short(path):
        text = "\n" + text  # the cut line stays alone (left out on reading), the new ones whole
    with path.open(mode, encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_json_records(path: str | os.PathLike, required: Sequence[str] = ()
                      ) -> list[dict[str, Any]]:
    """Read a JSON-lines file of objects, each with the ``required`` keys; blank lines are
    skipped.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on a line that is not a JSON object with the required keys, naming the file
            and line number.
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                )
            missing = [k for k in required if k not in record]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing keys {missing}")
            records.append(record)
    return records


def read_per_sample(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a per-sample results file written by :func:`write_per_sample`.

    Blank lines are skipped. Only ``sample_id`` and the count keys (:data:`COUNT_KEYS`) are
    required, so any protocol can be recomputed from files of other producers too.

    Args:
        path (str | os.PathLike): a ``per_sample.jsonl`` file.

    Returns:
        list[dict[str, Any]]: one dict per sample, in file order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on a line that is not a JSON object with the required keys, naming the file
            and line number.
    """
    return read_json_records(path, _REQUIRED_READ_KEYS)


def find_per_sample(results_dir: str | os.PathLike) -> dict[str, Path]:
    """Find every per-sample results file under a results directory.

    Args:
        results_dir (str | os.PathLike): searched recursively for :data:`PER_SAMPLE_FILENAME`.

    Returns:
        dict[str, Path]: subdirectory name relative to ``results_dir`` (POSIX style, e.g.
        ``'reason_seg_val'``; ``results_dir``'s own name if the file sits directly in it) → file,
        sorted by path.
    """
    results_dir = Path(results_dir)
    found = {}
    for path in sorted(results_dir.rglob(PER_SAMPLE_FILENAME)):
        rel = path.parent.relative_to(results_dir).as_posix()
        found[results_dir.name if rel == "." else rel] = path
    return found


def require_per_sample(results_dir: str | os.PathLike) -> dict[str, Path]:
    """:func:`find_per_sample`, but a missing folder or one without any per-sample file is a
    ``FileNotFoundError`` that says what layout was expected (the analysis tools' one error)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {str(results_dir)!r} does not exist")
    files = find_per_sample(results_dir)
    if not files:
        raise FileNotFoundError(
            f"no {PER_SAMPLE_FILENAME} under {str(results_dir)!r}; expected "
            f"<RESULTS_DIR>/<dataset>_<split>/{PER_SAMPLE_FILENAME} as written by coprs test")
    return files
