"""Data transforms (TRANSFORMS registry), SPEC §3.

A pipeline turns a dataset's data_info dict into what the model consumes:

* :class:`LoadImage` — RGB uint8, EXIF orientation applied; a file that cannot be read is
  recorded under ``load_error`` (with the path) instead of raising, so a long evaluation reports
  and skips it;
* ``LoadSegAnnotations`` (``coprs.datasets.masks``) — polygons / RLE → ``gt_mask``,
  ``ignore_mask``;
* :class:`ResizePadVision` — the vision view: longest side → S, padded bottom/right to S², the
  masks alike, the valid region recorded;
* :class:`PolicyView` — the policy view: at most ``max_pixels`` and at least ``min_pixels``,
  multiples of 28 (Qwen2.5-VL's ``smart_resize``);
* :class:`PackReasonSegInputs` — ``{'inputs': image, 'data_samples': dict}``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..image import load_image, pad_to_square, policy_view_size, resize_longest_side
from ..registry import FUNCTIONS, TRANSFORMS

__all__ = ["LoadImage", "ResizePadVision", "PolicyView", "PackReasonSegInputs",
           "DEFAULT_META_KEYS", "reasonseg_collate"]


@TRANSFORMS.register_module()
class LoadImage:
    """Load ``img_path`` into ``img`` (H x W x 3 uint8 RGB) unless ``img`` is already there.

    Adds ``img``, ``ori_shape`` (H, W). With ``skip_errors=True`` (default) a missing or corrupt
    file sets ``load_error`` (a message naming the path) and a 1 x 1 placeholder image, so the
    evaluation loop can report and skip the sample; with False it raises.
    """

    def __init__(self, skip_errors: bool = True) -> None:
        self.skip_errors = skip_errors

    def __call__(self, results: dict) -> dict:
        if results.get("img") is None:
            try:
                results["img"] = load_image(results["img_path"])
            except (FileNotFoundError, ValueError) as exc:
                if not self.skip_errors:
                    raise
                results["load_error"] = str(exc)
                results["img"] = np.zeros((1, 1, 3), np.uint8)
        else:
            results["img"] = load_image(results["img"], name=results.get("img_path"))
        results["ori_shape"] = tuple(int(v) for v in results["img"].shape[:2])
        return results

    transform = __call__


@TRANSFORMS.register_module()
class ResizePadVision:
    """The vision view: longest side → ``size`` (aspect kept), padded bottom/right to size².

    Adds ``vision_img`` (size x size x 3 uint8), ``valid_hw`` (h, w of the unpadded region) and,
    when present, ``vision_gt_mask`` / ``vision_ignore_mask`` (size x size bool; nearest
    resampling, padding is background).
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size

    def _mask(self, mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize((hw[1], hw[0]),
                                                                    Image.NEAREST)
        return pad_to_square(np.asarray(small) > 127, self.size, False)

    def __call__(self, results: dict) -> dict:
        img = resize_longest_side(results["img"], self.size)
        hw = img.shape[:2]
        results["vision_img"] = pad_to_square(img, self.size, 0)
        results["valid_hw"] = (int(hw[0]), int(hw[1]))
        for src, dst in (("gt_mask", "vision_gt_mask"), ("ignore_mask", "vision_ignore_mask")):
            if results.get(src) is not None:
                results[dst] = self._mask(results[src], hw)
        return results

    transform = __call__


@TRANSFORMS.register_module()
class PolicyView:
    """The policy view: resized (aspect kept) to multiples of 28 within the pixel budget.

    Adds ``policy_img`` (h x w x 3 uint8). Qwen's image processor leaves an image of this size
    unchanged, so the policy sees exactly this view.
    """

    def __init__(self, min_pixels: int = 3136, max_pixels: int = 705600) -> None:
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def __call__(self, results: dict) -> dict:
        img = results["img"]
        h, w = policy_view_size(*img.shape[:2], self.min_pixels, self.max_pixels)
        results["policy_img"] = (img if (h, w) == img.shape[:2] else
                                 np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC)))
        return results

    transform = __call__


#: data_info keys carried into ``data_samples`` when present
DEFAULT_META_KEYS = (
    "instruction", "gt_mask", "ignore_mask", "img_path", "sample_id", "dataset_name", "split",
    "ori_shape", "load_error", "instruction_type", "template_id", "gold_cot", "gold_answer",
    "gold_answer_region", "response_coprs", "response_lisa", "response_segzero", "bbox", "points",
    "valid_hw", "vision_gt_mask", "vision_ignore_mask", "policy_img", "vision_img",
)


@TRANSFORMS.register_module()
class PackReasonSegInputs:
    """Pack into ``{'inputs': img (H x W x 3 uint8), 'data_samples': dict}``.

    ``data_samples`` holds ``meta_keys`` that are present (instruction, masks, ids, gold
    responses, …), so the model, the metric and the visualiser share one plain dict.
    """

    def __init__(self, meta_keys: tuple[str, ...] = DEFAULT_META_KEYS) -> None:
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        sample = {k: results[k] for k in self.meta_keys if k in results}
        return {"inputs": results["img"], "data_samples": sample}

    transform = __call__


@FUNCTIONS.register_module()
def reasonseg_collate(batch: list[dict]) -> dict:
    """Collate packed samples into ``{'inputs': [B images], 'data_samples': [B dicts]}``.

    Images keep their own sizes (each view is made per image), so nothing is stacked.
    """
    return {"inputs": [b["inputs"] for b in batch],
            "data_samples": [b["data_samples"] for b in batch]}
