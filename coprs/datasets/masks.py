"""COCO-style segmentations (polygons / RLE) <-> boolean masks, and the transform that loads them.

Every dataset of coprs stores its target as a COCO segmentation (``gt_segm``) so annotations stay
small until a sample is actually used; :class:`LoadSegAnnotations` rasterises them in the pipeline.

Rasterisation is pycocotools' (the one COCO, ``refer`` and LISA's RefCOCO loader use): polygon
vertices are in pixel coordinates (x right, y down), and parts of a polygon outside the image are
clipped by the rasteriser, so a polygon that sticks out of the image (common in hand-drawn
annotations) is never an error.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from coprs.registry import TRANSFORMS

__all__ = ["segm_to_mask", "mask_to_rle", "rle_to_mask", "LoadSegAnnotations"]


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


def _to_compressed_rle(rle: Mapping[str, Any]) -> dict:
    """Turn a COCO RLE dict (counts as list, str or bytes) into pycocotools' compressed form."""
    if "counts" not in rle or "size" not in rle:
        raise ValueError(f"an RLE segmentation needs 'counts' and 'size' keys, got {sorted(rle)}")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO iscrowd annotations)
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    return {"size": [h, w], "counts": counts}


def segm_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation (or read a mask image).

    Args:
        segm: A list of polygons (each a flat ``[x1, y1, x2, y2, ...]`` list), an RLE dict
            (``counts`` as str, bytes or list; ``size`` ``[h, w]``), a list of RLE dicts, or
            the path of a mask image (PNG: nonzero pixels are the region, any mode).
            An empty list gives an empty mask. Polygon parts outside the image are clipped.
        height: Image height H.
        width: Image width W.

    Returns:
        ``np.ndarray`` of bool, H x W: the union of all parts.

    Raises:
        ValueError: If a polygon has fewer than 3 points (named by index), an RLE's ``size`` or a
            mask image's size differs from ``(height, width)``, or a mask image cannot be read.
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
    compressed = []
    for rle in rles:
        c = _to_compressed_rle(rle)
        if list(c["size"]) != [height, width]:
            raise ValueError(
                f"RLE size {list(c['size'])} does not match the annotated image size "
                f"[{height}, {width}]"
            )
        compressed.append(c)
    return _decode(mask_utils.merge(compressed))


def _read_mask_file(path, height: int, width: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mask = np.asarray(im.convert("L")) > 0
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
    """

    def __init__(self, skip_errors: bool = False) -> None:
        self.skip_errors = skip_errors

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
        where = f"img_path={results.get('img_path')!r}, sample_id={results.get('sample_id')!r}"
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
        return results

    transform = __call__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(skip_errors={self.skip_errors})"
