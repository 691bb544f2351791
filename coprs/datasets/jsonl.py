"""Your own data: one JSON object per line (image, instruction, mask), for evaluation and training."""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from coprs.registry import DATASETS
from coprs.utils import first_few

__all__ = ["JsonlSegDataset"]


class _BadLine(ValueError):
    """A line that cannot be used; its reason goes to ``dataset.skipped``."""


@DATASETS.register_module()
class JsonlSegDataset(BaseDataset):
    """Samples from a JSON-lines file, one object per line::

        {"image": "images/0001.jpg", "instruction": "what keeps the rain off?",
         "mask": "masks/0001.png", "ignore": null, "id": "0001", "type": "function",
         "response": "<think>…</think><REF_POS>"}

    * ``image`` (required): the image file;
    * ``instruction`` (required): the instruction, a non-empty string;
    * ``mask`` (required): the target as a mask image (nonzero pixels, the image's size), a
      COCO RLE dict or a list of polygons (``[[x1, y1, x2, y2, ...], ...]``); an empty list is an
      empty target;
    * ``ignore``: an ignore region in the same forms (excluded from scoring);
    * ``id``: the sample id (default: the line number), unique in the file; ``type``: an
      instruction type, for the per-type breakdown of ``coprs test``; ``response``: a gold
      response (the gold-reasoning evaluation mode and the supervised warm-up read it under
      ``response_key``).

    The lines ``coprs browse-dataset --dump`` writes load too (``mask_rle``, ``ignore_rle`` and
    ``sample_id`` stand for ``mask``, ``ignore`` and ``id``).

    Relative paths are relative to ``data_root``, or to the folder of ``ann_file`` when
    ``data_root`` is empty. Lines are checked when the dataset is built: a line that is not UTF-8
    text or not a JSON object, lacks a required field, has a field of the wrong type or names a
    file that does not exist is **skipped and reported** (``dataset.skipped`` holds ``(line,
    reason)``; one warning sums them up), never a crash in the middle of a run. A file where
    every line is bad, or where two usable lines share an ``id``, is a ``ValueError`` (naming
    the lines), a missing file a ``FileNotFoundError``. Masks are read in the pipeline
    (``LoadSegAnnotations``), so a mask image of the wrong size is reported there (with
    ``skip_errors=True``, as evaluation configs set it, the sample is reported and skipped).

    Args:
        ann_file: The JSON-lines file.
        data_root: Folder that relative paths are relative to (default: ``ann_file``'s folder).
        name: The dataset name in results (``NAME/SPLIT``; default: ``ann_file``'s folder name).
        split: The split name in results (default: ``ann_file``'s stem).
        response_key: Where a line's ``response`` goes: ``response_coprs`` (default),
            ``response_lisa`` or ``response_segzero``, the key the assembly's gold mode reads.
        **kwargs: Passed to ``mmengine.dataset.BaseDataset`` (``pipeline``, ``lazy_init``, ...).
    """

    REQUIRED = ("image", "instruction", "mask")
    #: the names of ``coprs browse-dataset --dump`` lines, read when the plain ones are absent, so
    #: that any loader's output (RefCOCO, ReasonSeg, ...) can be dumped and loaded back
    ALIASES = {"mask": "mask_rle", "ignore": "ignore_rle", "id": "sample_id"}

    def __init__(self, ann_file: str, data_root: str = "", name: str | None = None,
                 split: str | None = None, response_key: str = "response_coprs",
                 **kwargs: Any) -> None:
        if not isinstance(ann_file, str) or not ann_file:
            raise ValueError(f"ann_file must be the path of a JSON-lines file, got {ann_file!r}")
        path = ann_file if os.path.isabs(ann_file) or not data_root else os.path.join(
            data_root, ann_file)
        self.name = name or os.path.basename(os.path.dirname(os.path.abspath(path))) or "jsonl"
        self.split = split or os.path.splitext(os.path.basename(path))[0]
        self.response_key = response_key
        self.skipped: list[tuple[str, str]] = []
        super().__init__(ann_file=ann_file, data_root=data_root, **kwargs)
        self._metainfo.update(dataset_name=self.name, split=self.split)

    def _path(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise _BadLine(f"'{field}' must be a file path, got {value!r}")
        root = self.data_root or os.path.dirname(os.path.abspath(self.ann_file))
        path = value if os.path.isabs(value) else os.path.join(root, value)
        if not os.path.isfile(path):
            raise _BadLine(f"{field} '{value}' does not exist (looked at {path})")
        return os.path.abspath(path)

    def _region(self, value: Any, field: str) -> Any:
        """A mask image path (made absolute), a COCO RLE dict or a list of polygons."""
        if isinstance(value, str):
            return self._path(value, field)
        if isinstance(value, Mapping):
            if "counts" not in value or "size" not in value:
                raise _BadLine(f"'{field}' as RLE needs 'counts' and 'size', got {sorted(value)}")
            return dict(value)
        if isinstance(value, list) and all(isinstance(p, (list, Mapping)) for p in value):
            return value
        raise _BadLine(f"'{field}' must be a mask image path, a COCO RLE dict or a list of "
                       f"polygons [[x1, y1, ...], ...], got {type(value).__name__}")

    def _sample(self, number: int, raw: bytes) -> dict:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _BadLine(f"not UTF-8 text (byte 0x{raw[err.start]:02x} at byte {err.start + 1} "
                           "of the line); save the file as UTF-8") from None
        try:
            item = json.loads(line)
        except ValueError as err:
            raise _BadLine(f"not JSON: {err}") from None
        if not isinstance(item, dict):
            raise _BadLine(f"expected a JSON object, got {type(item).__name__}")
        for name, alias in self.ALIASES.items():  # `coprs browse-dataset --dump` lines
            if name not in item and alias in item:
                item[name] = item[alias]
        missing = [k for k in self.REQUIRED if k not in item]
        if missing:
            raise _BadLine(f"missing {missing} (each line needs {list(self.REQUIRED)})")
        instruction = item["instruction"]
        if not isinstance(instruction, str) or not instruction.strip():
            raise _BadLine(f"'instruction' must be a non-empty string, got {instruction!r}")
        response = item.get("response")
        if response is not None and not isinstance(response, str):
            raise _BadLine(f"'response' must be a string, got {type(response).__name__}")
        kind = item.get("type")
        if kind is not None and not isinstance(kind, str):
            raise _BadLine(f"'type' must be a string, got {type(kind).__name__}")
        sample = dict(
            img_path=self._path(item["image"], "image"),
            instruction=instruction,
            gt_segm=self._region(item["mask"], "mask"),
            ignore_segm=None if item.get("ignore") is None else self._region(item["ignore"],
                                                                             "ignore"),
            sample_id=str(item.get("id", number)),
            dataset_name=self.name,
            split=self.split,
            instruction_type=kind,
            line=number,
        )
        if response is not None:
            sample[self.response_key] = response
        return sample

    def load_data_list(self) -> list[dict]:
        if not os.path.isfile(self.ann_file):
            raise FileNotFoundError(
                f"JSON-lines file '{self.ann_file}' does not exist; each line is "
                '{"image": PATH, "instruction": TEXT, "mask": PNG | RLE | polygons}')
        with open(self.ann_file, "rb") as f:  # decoded line by line: one bad line is one skip
            raw = f.read()
        if raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        self.skipped = []
        data_list = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data_list.append(self._sample(number, line))
            except _BadLine as err:
                self.skipped.append((f"{self.ann_file}:{number}", str(err)))
        if self.skipped:
            shown = first_few([f"{where}: {why}" for where, why in self.skipped], 10, "; ")
            print_log(f"{self.name}/{self.split}: skipped {len(self.skipped)} line(s): "
                      f"{shown}. See dataset.skipped.", logger="current",
                      level=logging.WARNING)
        self._check_unique_ids(data_list)
        if not data_list:
            reasons = "; ".join(f"{w}: {r}" for w, r in self.skipped[:3])
            raise ValueError(f"no usable line in '{self.ann_file}'" +
                             (f": {reasons}" if reasons else " (the file is empty)"))
        return data_list

    def _check_unique_ids(self, data_list: list[dict]) -> None:
        """Raise if two usable lines share an id: results, panels and given responses are keyed
        by it, so one sample would silently stand for the other."""
        first_line: dict[str, int] = {}
        duplicates = []
        for sample in data_list:
            line = first_line.setdefault(sample["sample_id"], sample["line"])
            if line != sample["line"]:
                duplicates.append((sample["sample_id"], line, sample["line"]))
        if duplicates:
            sid, line, again = duplicates[0]
            more = f" (and {len(duplicates) - 1} more repeated id(s))" if len(duplicates) > 1 else ""
            raise ValueError(
                f"'{self.ann_file}': lines {line} and {again} have the same id {sid!r}{more}; "
                "ids must be unique (results, --show-dir panels and --reasoning given responses "
                "are keyed by them). Give each line its own 'id' (a line without one is "
                "named by its line number)")
