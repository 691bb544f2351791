"""Writing a result to disk: response text, heatmap/mask/panel PNGs and a JSON summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..structures import SegmentationResult

__all__ = ["write_result", "result_summary", "RESULT_FILES"]

#: the files :func:`write_result` writes into its folder (``result.json`` last)
RESULT_FILES = ("response.txt", "heatmap.png", "mask.png", "panel.png", "result.json")


def result_summary(result: SegmentationResult, instruction: str) -> dict:
    """The JSON-able summary of a result (mask as COCO RLE with ``counts`` as str)."""
    from ..datasets.masks import mask_to_rle

    h, w = result.mask.shape
    peak = np.unravel_index(int(np.argmax(result.heatmap)), result.heatmap.shape)
    return {
        "instruction": instruction,
        "response": result.response,
        "cot": result.cot,
        "format_ok": result.format_ok,
        "mask_rle": mask_to_rle(result.mask),
        "mask_area": int(result.mask.sum()),
        "heatmap_peak_xy": [int(peak[1]), int(peak[0])],
        "heatmap_peak": float(result.heatmap[peak]),
        "image_size": {"height": int(h), "width": int(w)},
    }


def write_result(out_dir, image: np.ndarray, instruction: str, result: SegmentationResult,
                 extra: dict | None = None) -> dict:
    """Write ``response.txt``, ``heatmap.png`` (overlay), ``mask.png`` (binary, original size),
    ``panel.png`` (image+instruction | heatmap | mask | response) and ``result.json`` (the
    summary, with the keys of ``extra`` added; written last and atomically, so a folder with a
    readable ``result.json`` is complete)."""
    from ..utils import atomic_write
    from ..visualization import heatmap_overlay, make_panel, save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "response.txt").write_text(result.response + "\n", encoding="utf-8")
    save_png(heatmap_overlay(image, result.heatmap), out / "heatmap.png")
    save_png(result.mask, out / "mask.png")
    make_panel(image, instruction, result.heatmap, result.mask, result.response,
               out / "panel.png", format_ok=result.format_ok)
    summary = dict(result_summary(result, instruction), **(extra or {}))
    atomic_write(out / "result.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary
