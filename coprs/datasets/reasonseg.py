"""ReasonSeg (LISA): one LabelMe-style JSON per image, evaluated zero-shot."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from PIL import Image

from coprs.image import too_large_message
from coprs.registry import DATASETS
from coprs.utils import first_few

from .masks import polygon_pixels

__all__ = ["ReasonSegDataset", "parse_reasonseg_json"]

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_CIRCLE_VERTICES = 32
_EXIF_ORIENTATION = 0x0112


class _BadSample(ValueError):
    """A sample that cannot be used; carries the reason recorded in ``dataset.skipped``."""


def _read_json(path: str) -> Any:
    """Read a JSON file as UTF-8 (BOM allowed), falling back to cp1252 exactly as LISA does."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError as err:
            raise _BadSample(f"not UTF-8 (nor cp1252) text: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _BadSample(f"invalid JSON: {err}") from None


def _shape_polygon(shape: Any, index: int) -> tuple[str, list[float]]:
    """Return ``(label, flat polygon)`` of one LabelMe shape; raise ``_BadSample`` if unusable."""
    if not isinstance(shape, dict) or "points" not in shape:
        raise _BadSample(f"shape #{index} is not an object with 'points'")
    label = str(shape.get("label", "")).strip()
    try:
        points = [(float(p[0]), float(p[1])) for p in shape["points"]]
    except (TypeError, ValueError, IndexError, KeyError):
        raise _BadSample(
            f"shape #{index} ({label!r}) has points that are not [x, y] pairs"
        ) from None
    if not all(math.isfinite(v) for p in points for v in p):
        raise _BadSample(f"shape #{index} ({label!r}) has non-finite coordinates")
    shape_type = shape.get("shape_type") or "polygon"
    if shape_type == "rectangle" and len(points) == 2:
        (x1, y1), (x2, y2) = points
        points = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    elif shape_type == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        r = math.hypot(px - cx, py - cy)
        points = [
            (
                cx + r * math.cos(2 * math.pi * k / _CIRCLE_VERTICES),
                cy + r * math.sin(2 * math.pi * k / _CIRCLE_VERTICES),
            )
            for k in range(_CIRCLE_VERTICES)
        ]
    if len(points) < 3:
        raise _BadSample(
            f"shape #{index} ({label!r}, shape_type {shape_type!r}) has {len(points)} point(s); "
            "a region needs at least 3"
        )
    return label, [v for p in points for v in p]


def parse_reasonseg_json(anno: Any, flag_as: str = "drop") -> dict:
    """Parse one decoded ReasonSeg JSON.

    Labels follow LISA's reference loader: ``'flag'`` (exact, case-insensitive) marks deprecated
    shapes, any label containing ``'ignore'`` is an ignore region, every other label is target.

    Args:
        anno: The decoded JSON object.
        flag_as: ``'drop'`` (LISA: flag shapes are discarded) or ``'ignore'`` (treated as ignore).

    Returns:
        Dict with ``texts`` (list of str), ``is_sentence`` (bool or None), ``target`` and
        ``ignore`` (lists of flat polygons), ``unknown_labels`` (labels read as target that are
        not ``'target'``), ``height``/``width`` (ints or None when absent).

    Raises:
        ValueError: Describing why the annotation is unusable.
    """
    if not isinstance(anno, dict):
        raise _BadSample(f"top-level JSON is a {type(anno).__name__}, not an object")
    if "text" not in anno:
        raise _BadSample("missing 'text' (the instruction list)")
    texts = anno["text"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise _BadSample("'text' is empty or neither a string nor a list of strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise _BadSample(f"text[{i}] is not a non-empty string")
    if "shapes" not in anno or not isinstance(anno["shapes"], list):
        raise _BadSample("missing 'shapes' list")
    target: list[list[float]] = []
    ignore: list[list[float]] = []
    unknown: list[str] = []
    for i, shape in enumerate(anno["shapes"]):
        label, poly = _shape_polygon(shape, i)
        low = label.lower()
        if low == "flag":
            if flag_as == "ignore":
                ignore.append(poly)
        elif "ignore" in low:
            ignore.append(poly)
        else:
            if low != "target":
                unknown.append(label)
            target.append(poly)
    is_sentence = anno.get("is_sentence")
    size = []
    for key in ("imageHeight", "imageWidth"):
        v = anno.get(key)
        size.append(int(v) if isinstance(v, (int, float)) and v > 0 else None)
    return dict(
        texts=list(texts),
        is_sentence=None if is_sentence is None else bool(is_sentence),
        target=target,
        ignore=ignore,
        unknown_labels=unknown,
        height=size[0] if None not in size else None,
        width=size[1] if None not in size else None,
    )


def query_kind(is_sentence: bool | None) -> str | None:
    """ReasonSeg's instruction type: ``'long_query'`` (a sentence), ``'short_query'`` (a phrase)
    or None (unknown)."""
    return None if is_sentence is None else ("long_query" if is_sentence else "short_query")


@DATASETS.register_module()
class ReasonSegDataset(BaseDataset):
    """ReasonSeg: ``<data_root>/<split>/<name>.jpg`` + ``<name>.json`` (LabelMe-style).

    Each JSON has ``text`` (a list of instructions, or one string), ``is_sentence``, ``shapes``
    (``{'label', 'points': [[x, y], ...], 'shape_type'?}``) and optionally ``imageHeight`` /
    ``imageWidth`` (else the size is read from the image header, without decoding pixels, with
    EXIF orientation applied as LabelMe and LISA's ``cv2.imread`` do).

    Target = union of the target polygons (``gt_segm``, a polygon list); ``'ignore'`` shapes (and
    ``'flag'`` shapes if ``flag_as='ignore'``) form ``ignore_segm`` (``None`` when there are
    none). Labels follow LISA's loader: ``'flag'`` = deprecated shape, dropped by default as LISA
    does; a label containing ``'ignore'`` = ignore; any other label = target (non-``'target'``
    labels are counted in the warning). LabelMe ``rectangle``/``circle`` shapes (2 points) are
    converted to polygons. Note: LISA paints shapes largest-first, so where a *smaller target lies
    inside an ignore shape* LISA scores it as target, whereas here the ignore region wins; the
    two coincide whenever ignore shapes do not contain target shapes.

    ``query='first'`` gives one sample per image with ``text[0]`` (LISA's evaluation protocol);
    ``query='all'`` one sample per instruction. ``sample_id`` is ``f"{stem}_{query_index}"``.
    ``instruction_type`` is ``'long_query'`` where ``is_sentence`` is true and ``'short_query'``
    where it is false (None where the JSON lacks it), so ``coprs test`` breaks ReasonSeg down
    into short and long queries as LISA's tables do.

    Bad input (decided per case; skips are recorded in ``self.skipped`` as ``(path, reason)`` and
    summarised in one warning, because one corrupt file must not end a long evaluation):

    * missing ``<data_root>/<split>`` folder or no ``*.json`` in it -> ``FileNotFoundError``;
      every sample skipped -> ``ValueError`` with the first reasons;
    * JSON that is not UTF-8 -> decoded as cp1252 (the fallback of LISA's reference loader);
      neither decodes, or invalid JSON, or not an object -> skipped;
    * missing/empty ``text`` or a non-string instruction, missing ``shapes`` -> skipped;
    * a shape with < 3 points (after rectangle/circle conversion) or bad coordinates -> the sample
      is skipped (its ground truth is ill-defined);
    * no target shape, or target shapes that cover no pixel once rasterised (outside the image,
      or of zero area) -> *kept* with an empty target by default, as LISA does, so the
      evaluation's empty/empty switch decides how it scores (listed in ``self.empty_target`` and
      the warning); ``skip_empty_target=True`` skips them instead;
    * JSON without its image (``<stem>.jpg/.jpeg/.png``), or an unreadable image header (or an
      image above PIL's ``MAX_IMAGE_PIXELS`` limit) when the size must be read from it ->
      skipped.

    Args:
        data_root: Folder holding the split folders.
        split: Split folder name (``'val'``, ``'test'``, ``'train'``).
        query: ``'first'`` or ``'all'``.
        flag_as: ``'drop'`` (default, LISA) or ``'ignore'``.
        skip_empty_target: Skip samples whose target covers no pixel instead of keeping them.
        **kwargs: Passed to ``mmengine.dataset.BaseDataset`` (``pipeline``, ``lazy_init``, ...).
    """

    def __init__(
        self,
        data_root: str,
        split: str = "val",
        query: str = "first",
        flag_as: str = "drop",
        skip_empty_target: bool = False,
        **kwargs: Any,
    ) -> None:
        if query not in ("first", "all"):
            raise ValueError(f"query must be 'first' or 'all', got {query!r}")
        if flag_as not in ("drop", "ignore"):
            raise ValueError(f"flag_as must be 'drop' or 'ignore', got {flag_as!r}")
        if not isinstance(split, str) or not split or os.sep in split:
            raise ValueError(f"split must be a folder name such as 'val' or 'test', got {split!r}")
        self.split = split
        self.query = query
        self.flag_as = flag_as
        self.skip_empty_target = skip_empty_target
        self.skipped: list[tuple[str, str]] = []
        self.empty_target: list[str] = []
        super().__init__(data_root=data_root, **kwargs)
        # set after BaseDataset, which would try to read string metainfo values as files
        self._metainfo.update(dataset_name="reasonseg", split=split, query=query)

    def _find_image(self, json_path: str, anno: Any) -> str:
        stem = os.path.splitext(json_path)[0]
        for ext in _IMAGE_EXTS:
            if os.path.isfile(stem + ext):
                return stem + ext
        image_path = anno.get("imagePath") if isinstance(anno, dict) else None
        if isinstance(image_path, str) and image_path:
            candidate = os.path.join(os.path.dirname(json_path), image_path)
            if os.path.isfile(candidate):
                return candidate
        raise _BadSample(f"image not found (looked for {os.path.basename(stem)}.jpg/.jpeg/.png)")

    def load_data_list(self) -> list[dict]:
        """Parse every ``*.json`` of the split folder (sorted by name)."""
        split_dir = os.path.join(self.data_root, self.split)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(
                f"ReasonSeg split folder not found: {split_dir}; expected "
                "<data_root>/<split>/<name>.jpg + <name>.json (LISA's ReasonSeg release)"
            )
        names = sorted(n for n in os.listdir(split_dir) if n.endswith(".json"))
        if not names:
            raise FileNotFoundError(f"no *.json annotations in {split_dir}")

        self.skipped = []
        self.empty_target = []
        unknown_labels: set[str] = set()
        data_list: list[dict] = []
        for name in names:
            json_path = os.path.abspath(os.path.join(split_dir, name))
            try:
                anno = _read_json(json_path)
                parsed = parse_reasonseg_json(anno, self.flag_as)
                img_path = self._find_image(json_path, anno)
                height, width = parsed["height"], parsed["width"]
                if height is None:
                    try:
                        with Image.open(img_path) as im:  # reads the header only
                            width, height = im.size
                            # EXIF orientations 5-8 rotate by 90 degrees: LabelMe (and
                            # LISA's cv2.imread) see the image upright, so swap
                            if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                                width, height = height, width
                    except Image.DecompressionBombError as err:
                        raise _BadSample(too_large_message(f"image {img_path}", err)) from None
                    except OSError as err:
                        raise _BadSample(f"cannot read image header of {img_path}: {err}") from None
                # measured on the rasterised target: a polygon outside the image covers nothing
                if polygon_pixels(parsed["target"], height, width) == 0:
                    if self.skip_empty_target:
                        raise _BadSample(
                            f"no target region: no target shape, or target shapes that cover no "
                            f"pixel of the {height}x{width} image (outside it, or of zero area)"
                        )
                    self.empty_target.append(json_path)
            except _BadSample as err:
                self.skipped.append((json_path, str(err)))
                continue
            unknown_labels.update(parsed["unknown_labels"])
            stem = os.path.splitext(name)[0]
            texts = parsed["texts"]
            indices = [0] if self.query == "first" else range(len(texts))
            for q in indices:
                data_list.append(
                    dict(
                        img_path=img_path,
                        instruction=texts[q],
                        gt_segm=parsed["target"],
                        ignore_segm=parsed["ignore"] or None,
                        height=int(height),
                        width=int(width),
                        dataset_name="reasonseg",
                        split=self.split,
                        sample_id=f"{stem}_{q}",
                        json_path=json_path,
                        query_index=q,
                        num_queries=len(texts),
                        is_sentence=parsed["is_sentence"],
                        instruction_type=query_kind(parsed["is_sentence"]),
                    )
                )

        if self.skipped:
            shown = first_few([f"{p}: {r}" for p, r in self.skipped], 10, "; ")
            print_log(
                f"ReasonSeg {self.split}: skipped {len(self.skipped)} of {len(names)} "
                f"annotation(s): {shown}. See dataset.skipped.",
                logger="current",
                level=logging.WARNING,
            )
        if self.empty_target:
            print_log(
                f"ReasonSeg {self.split}: {len(self.empty_target)} annotation(s) have no target "
                "region (no target shape, or target shapes that cover no pixel of the image: "
                "outside it, or of zero area) and are kept with an empty ground truth: "
                f"{', '.join(self.empty_target[:10])}",
                logger="current",
                level=logging.WARNING,
            )
        if unknown_labels:
            print_log(
                f"ReasonSeg {self.split}: labels {sorted(unknown_labels)} read as target "
                "(LISA treats every label other than 'flag'/'*ignore*' as target)",
                logger="current",
                level=logging.WARNING,
            )
        if not data_list:
            raise ValueError(
                f"ReasonSeg {self.split}: every annotation in {split_dir} was skipped; first "
                f"reasons: {self.skipped[:3]}"
            )
        return data_list
