"""COCO-style segmentations (polygons / RLE) <-> boolean masks, and the transform that loads them.

Every dataset of coprs stores its target as a COCO segmentation (``gt_segm``) so annotations stay
small until a sample is actually used; :class:`LoadSegAnnotations` rasterises them in the pipeline.

Rasterisation is pycocotools' (the one COCO, ``refer`` and LISA's RefCOCO loader use): polygon
vertices are in pixel coordinates (x right, y down), and parts of a polygon outside the image are
clipped by the rasteriser, so a polygon that sticks out of the image (common in hand-drawn
annotations) is never an error.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from mmengine.logging import print_log
from pycocotools import mask as mask_utils

from coprs.registry import TRANSFORMS

__all__ = ["segm_to_mask", "polygon_pixels", "mask_to_rle", "rle_to_mask", "LoadSegAnnotations"]


def _decode(rle: dict) -> np.ndarray:
    """``pycocotools.mask.decode`` as bool, without its numpy-2 ``__array__(copy=)`` warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"__array__ implementation", category=DeprecationWarning
        )
        return mask_utils.decode(rle).astype(bool)


def _check_polygons(polygons: Sequence[Any]) -> list[list[float]]:
    """Return ``polygons`` as lists of floats; reject odd-length or < 3-point polygons."""
    out = []
    bad = []
    for i, poly in enumerate(polygons):
        flat = [float(v) for v in np.asarray(poly, dtype=np.float64).reshape(-1)]
        if len(flat) % 2 or len(flat) < 6:
            bad.append(
                f"#{i} ({len(flat) / 2:g} points: {flat[:8]}{' ...' if len(flat) > 8 else ''})"
            )
        out.append(flat)
    if bad:
        raise ValueError(
            f"polygon(s) {', '.join(bad)} have fewer than 3 points or an odd number of "
            "coordinates; a polygon is a flat [x1, y1, x2, y2, ...] list with at least 3 points"
        )
    return out


def _string_run_lengths(counts: bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE ``counts`` string.

    pycocotools has no Python entry point to its string decoder (``rleFrString``), and it
    decodes a malformed string without complaint, so this is that decoder in Python: each run
    length is a little-endian base-32 number, 5 bits per character (offset by 48, bit 0x20 =
    "more characters follow", bit 0x10 of the last one = negative), and from the third run on
    it is stored as the difference to the run two before.

    Raises:
        ValueError: If a character is outside COCO's alphabet or the string ends mid-number.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos == len(counts):
                raise ValueError("its last run length is cut short")
            code = counts[pos] - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {chr(counts[pos])!r} at position {pos} is not in "
                                 "COCO's RLE alphabet ('0' to 'o')")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and code & 0x10:
                value |= -1 << shift
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
    return runs


def _check_run_lengths(runs: Sequence[int], h: int, w: int, form: str) -> None:
    """Reject run lengths that are negative or do not cover the ``h`` x ``w`` mask exactly."""
    negative = [i for i, n in enumerate(runs) if n < 0]
    if negative:
        raise ValueError(f"{form} RLE has a negative run length (run #{negative[0]}): the "
                         "'counts' are corrupt")
    total = sum(runs)
    if total != h * w:
        raise ValueError(
            f"{form} RLE run lengths add up to {total} pixels but its size [{h}, {w}] has "
            f"{h * w}: the 'counts' are corrupt or belong to another size"
        )


def _whole(value: Any) -> bool:
    """Whether ``value`` is a whole number >= 0 (an int, or a float such as 480.0)."""
    return (isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            and np.isfinite(value) and value >= 0 and value == int(value))


def _to_compressed_rle(rle: Mapping[str, Any], hw: tuple[int, int] | None = None) -> dict:
    """Turn a COCO RLE dict (counts as list, str or bytes) into pycocotools' compressed form.

    The run lengths are checked first: pycocotools decodes counts that do not add up to
    ``h * w`` into a mask of whatever its buffer held. ``hw``: the size the RLE must have.
    """
    if "counts" not in rle or "size" not in rle:
        raise ValueError(f"an RLE segmentation needs 'counts' and 'size' keys, got {sorted(rle)}")
    size = rle["size"]
    if not isinstance(size, Sequence) or len(size) != 2 or not all(_whole(v) for v in size):
        raise ValueError(f"an RLE 'size' is [height, width] (two integers >= 0), got {size!r}")
    h, w = (int(v) for v in size)
    if hw is not None and (h, w) != tuple(hw):
        raise ValueError(f"RLE size [{h}, {w}] does not match the annotated image size "
                         f"[{hw[0]}, {hw[1]}]")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO iscrowd annotations)
        if not all(_whole(n) for n in counts):
            raise ValueError("an uncompressed RLE's 'counts' must be a list of run lengths "
                             "(integers >= 0)")
        counts = [int(n) for n in counts]
        _check_run_lengths(counts, h, w, "uncompressed")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    if not isinstance(counts, bytes):
        raise ValueError(f"an RLE's 'counts' must be a string or a list of integers, got "
                         f"{type(counts).__name__}")
    try:
        runs = _string_run_lengths(counts)
    except ValueError as err:
        raise ValueError(f"compressed RLE 'counts' is not a COCO RLE string: {err}") from None
    _check_run_lengths(runs, h, w, "compressed")
    return {"size": [h, w], "counts": counts}


def segm_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation (or read a mask image).

    Args:
        segm: A list of polygons (each a flat ``[x1, y1, x2, y2, ...]`` list), an RLE dict
            (``counts`` as str, bytes or list; ``size`` ``[h, w]``), a list of RLE dicts, or
            the path of a mask image (PNG: a pixel is in the region where its value is
            nonzero: the palette index of a P image, the value of an L/1/I/I;16 one, any colour
            channel of an RGB(A) one, alpha aside). An empty list gives an empty mask. Polygon
            parts outside the image are clipped.
        height: Image height H.
        width: Image width W.

    Returns:
        ``np.ndarray`` of bool, H x W: the union of all parts.

    Raises:
        ValueError: If a polygon has fewer than 3 points (named by index), an RLE's ``size`` or a
            mask image's size differs from ``(height, width)``, an RLE's run lengths do not add
            up to its ``size``, or a mask image cannot be read.
    """
    height, width = int(height), int(width)
    if isinstance(segm, (str, os.PathLike)):
        return _read_mask_file(segm, height, width)
    if isinstance(segm, Mapping):
        rles = [segm]
    elif isinstance(segm, Sequence) and not isinstance(segm, (str, bytes)):
        if len(segm) == 0:
            return np.zeros((height, width), dtype=bool)
        if all(isinstance(s, Mapping) for s in segm):
            rles = list(segm)
        elif all(isinstance(s, (int, float, np.number)) for s in segm):
            raise ValueError(
                f"got a flat list of {len(segm)} numbers; a polygon segmentation is a list of "
                "polygons: wrap a single polygon as [[x1, y1, x2, y2, ...]]"
            )
        else:
            polygons = _check_polygons(segm)
            rles = mask_utils.frPyObjects(polygons, height, width)
            return _decode(mask_utils.merge(rles))
    else:
        raise ValueError(
            f"unsupported segmentation of type {type(segm).__name__}: expected a list of polygons "
            "or a COCO RLE dict"
        )
    compressed = [_to_compressed_rle(rle, (height, width)) for rle in rles]
    return _decode(mask_utils.merge(compressed))


def polygon_pixels(polygons: Sequence[Any], height: int, width: int) -> int:
    """How many pixels of a ``height`` x ``width`` image the union of ``polygons`` covers once
    rasterised as :func:`segm_to_mask` does (parts outside the image clipped), counted on the
    RLE without decoding a mask. 0 for an empty list.

    Raises:
        ValueError: If a polygon has fewer than 3 points (see :func:`segm_to_mask`).
    """
    if len(polygons) == 0:
        return 0
    rles = mask_utils.frPyObjects(_check_polygons(polygons), int(height), int(width))
    return int(mask_utils.area(mask_utils.merge(rles)))


def _is_polygons(segm: Any) -> bool:
    """Whether ``segm`` is a non-empty list of polygons (not RLE dicts, not a mask file)."""
    return (isinstance(segm, Sequence) and not isinstance(segm, (str, bytes)) and len(segm) > 0
            and not any(isinstance(s, Mapping) for s in segm))


def _read_mask_file(path, height: int, width: int) -> np.ndarray:
    """Read a mask image: a pixel is target where its value (single-band modes: L, P by palette
    index, 1, I, I;16, F) or any colour channel (RGB, RGBA, ...; alpha is not read) is nonzero."""
    from PIL import Image

    from coprs.image import too_large_message

    try:
        with Image.open(path) as im:
            im.load()
            if len(im.getbands()) == 1 or im.mode in ("LA", "La", "PA"):
                values = np.asarray(im)  # the stored value: a palette image's index, not colour
                mask = (values[..., 0] if values.ndim == 3 else values) > 0
            else:
                mask = (np.asarray(im.convert("RGB")) > 0).any(axis=-1)
    except Image.DecompressionBombError as err:
        raise ValueError(too_large_message(f"mask image '{path}'", err)) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read mask image '{path}': {err}") from None
    if mask.shape != (height, width):
        raise ValueError(f"mask image '{path}' is {mask.shape[0]}x{mask.shape[1]} (HxW) but the "
                         f"image is {height}x{width}; a mask must have its image's size")
    return mask


def mask_to_rle(mask: np.ndarray) -> dict:
    """Encode a mask as a compressed COCO RLE with ``counts`` as a UTF-8 ``str`` (JSON-ready).

    Args:
        mask: H x W array; non-zero is foreground.

    Returns:
        ``{'size': [H, W], 'counts': str}``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects an H x W mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO RLE dict (``counts`` as str, bytes or list) to an H x W bool mask."""
    return _decode(_to_compressed_rle(rle))


@TRANSFORMS.register_module()
class LoadSegAnnotations:
    """Rasterise ``gt_segm`` / ``ignore_segm`` into boolean masks.

    Required keys: ``gt_segm``, ``height``, ``width`` (``ignore_segm`` optional).
    Added keys: ``gt_mask`` (H x W bool), ``ignore_mask`` (H x W bool, or ``None`` when the sample
    has no ignore region, i.e. ``ignore_segm`` is missing, ``None`` or empty).

    If ``results`` already holds the decoded image under ``img`` and its H x W differs from the
    annotation's ``height`` x ``width``, a ``ValueError`` naming ``img_path`` and ``sample_id`` is
    raised: a mask drawn at the wrong size would silently misalign every metric.

    A target given as polygons that cover no pixel of the image (all outside it, or of zero
    area) is kept with an empty ``gt_mask``, as an explicitly empty target is, and a warning
    names the sample (once per sample): an empty prediction scores the metric's ``empty_empty``
    on it (1.0 by default), so the broken annotation would otherwise pass unseen.
    """

    def __init__(self, skip_errors: bool = False) -> None:
        self.skip_errors = skip_errors
        self._warned_empty: set[tuple] = set()

    def __call__(self, results: dict) -> dict:
        """Add ``gt_mask`` and ``ignore_mask`` to ``results`` (modified in place and returned).

        With ``skip_errors=True`` (evaluation configs) a bad annotation does not raise: the
        message goes to ``results['load_error']`` and the sample is reported and skipped by
        the evaluation loop. A sample whose image already failed to load is passed through.
        """
        if results.get("load_error"):
            img = results.get("img")
            hw = img.shape[:2] if img is not None else (1, 1)
            results["gt_mask"] = np.zeros(hw, bool)
            results["ignore_mask"] = None
            return results
        try:
            return self._load(results)
        except (ValueError, KeyError) as err:
            if not self.skip_errors:
                raise
            img = results.get("img")
            hw = img.shape[:2] if img is not None else (1, 1)
            results["load_error"] = str(err.args[0] if isinstance(err, KeyError) else err)
            results["gt_mask"] = np.zeros(hw, bool)
            results["ignore_mask"] = None
            return results

    def _load(self, results: dict) -> dict:
        # the sample, and where its annotation comes from (RefCOCO's ann_id, ReasonSeg's JSON,
        # a JSON-lines line)
        keys = ("img_path", "sample_id", *(k for k in ("ann_id", "json_path", "line") if k in results))
        where = ", ".join(f"{k}={results.get(k)!r}" for k in keys)
        img = results.get("img")
        img_hw = tuple(int(v) for v in img.shape[:2]) if img is not None else None
        height, width = results.get("height"), results.get("width")
        if height is None or width is None:
            if img_hw is None:
                raise KeyError(
                    f"LoadSegAnnotations needs 'height' and 'width' (or a loaded 'img') ({where})"
                )
            height, width = img_hw
        height, width = int(height), int(width)
        if img_hw is not None and img_hw != (height, width):
            raise ValueError(
                f"image is {img_hw[0]}x{img_hw[1]} (HxW) but its annotation says {height}x{width} "
                f"({where}); the annotation does not belong to this image file, or the image was "
                "resized/rotated (EXIF) before this transform. Fix the data rather than the mask."
            )
        if "gt_segm" not in results:
            raise KeyError(f"LoadSegAnnotations needs 'gt_segm' ({where})")
        try:
            results["gt_mask"] = segm_to_mask(results["gt_segm"], height, width)
            ignore = results.get("ignore_segm")
            results["ignore_mask"] = (
                None if ignore is None or len(ignore) == 0 else segm_to_mask(ignore, height, width)
            )
        except ValueError as err:
            raise ValueError(f"{err} ({where})") from err
        if not results["gt_mask"].any() and _is_polygons(results["gt_segm"]):
            key = (results.get("img_path"), results.get("sample_id"))
            if key not in self._warned_empty:
                self._warned_empty.add(key)
                print_log(
                    f"the target polygon(s) cover no pixel of the {height}x{width} image "
                    f"({where}): they lie outside it or have zero area. The sample is kept with "
                    "an empty target, which an empty prediction scores as the metric's "
                    "empty_empty (1.0 by default); fix the annotation, or evaluate with "
                    "test_evaluator.empty_empty=skip to leave empty targets out",
                    logger="current",
                    level=logging.WARNING,
                )
        return results

    transform = __call__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(skip_errors={self.skip_errors})"
