"""Image loading and the geometry of the two views of an image (SPEC §3).

* the vision view: longest side → S (1024 for SAM), aspect kept, padded bottom/right to S²;
* the policy view: capped at ``max_pixels`` (705,600 in the paper) and at least ``min_pixels``
  (3,136); Qwen's image processor applies the cap itself, :func:`policy_view_size` mirrors it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["load_image", "to_rgb_array", "longest_side_size", "resize_longest_side", "pad_to_square",
           "policy_view_size", "too_large_message", "MAX_ASPECT_RATIO"]

#: Qwen2.5-VL's image processor rejects images more elongated than this.
MAX_ASPECT_RATIO = 200


def too_large_message(what: str, exc: Exception) -> str:
    """The message for PIL's ``DecompressionBombError`` on ``what`` (e.g. ``"image 'x.png'"``):
    PIL's reason and the setting that lifts the limit."""
    return (f"{what} is too large to read: {exc} PIL refuses images of more than twice "
            f"PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS}) pixels; if the file is "
            "trusted, set PIL.Image.MAX_IMAGE_PIXELS higher (or to None) in the process that "
            "reads it, or shrink the image")


def load_image(image, name: str | None = None) -> np.ndarray:
    """Read an image into an H x W x 3 uint8 RGB array.

    Accepts a path (EXIF orientation applied), a PIL image, or an array (H x W, H x W x 1/3/4;
    uint8, uint16, int32/int64 in [0, 65535] or float in [0, 1]). Grayscale, palette, RGBA/LA
    (alpha dropped), CMYK and 16-bit images are converted to 8-bit RGB. Errors name the image:
    by ``name`` when given, else by its path, else as "the PIL image" or "the image array".

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is a folder, the file is not a readable image (or has more pixels
            than PIL's decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS``), the array has
            an unsupported shape/dtype or values out of range, the image is empty, or it is more
            elongated than 200:1.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        label = f"image '{name or path}'"
        if path.is_dir():
            raise ValueError(f"image '{path}' is a folder; give an image file")
        if not path.is_file():
            raise FileNotFoundError(f"image '{path}' does not exist")
        try:
            with Image.open(path) as im:
                im.load()
                pil = ImageOps.exif_transpose(im)
        except Image.DecompressionBombError as exc:
            raise ValueError(too_large_message(f"image '{path}'", exc)) from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"image '{path}' cannot be read as an image: {exc}") from exc
        arr = to_rgb_array(pil, label)
    elif isinstance(image, Image.Image):
        label = f"image '{name}'" if name else "the PIL image"
        arr = to_rgb_array(ImageOps.exif_transpose(image), label)
    elif isinstance(image, np.ndarray):
        label = f"image '{name}'" if name else "the image array"
        arr = to_rgb_array(image, label)
    else:
        raise ValueError(
            f"image must be a path, a PIL image or an HxWx3 uint8 array, got {type(image).__name__}"
        )
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"{label} is empty ({h}x{w})")
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"{label} is {h}x{w}: more elongated than {MAX_ASPECT_RATIO}:1, which the "
            "policy's image processor cannot take; crop or pad it first"
        )
    return arr


def to_rgb_array(image, label: str = "the image") -> np.ndarray:
    """A PIL image or array → H x W x 3 uint8 RGB (see :func:`load_image`).

    ``label`` names the image in errors, e.g. ``"image 'cat.png'"`` or ``"the image array"``.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            image = np.asarray(image)
        elif image.mode != "RGB":
            image = image.convert("RGBA" if "transparency" in image.info else image.mode)
            image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
        else:
            return np.asarray(image, dtype=np.uint8).copy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{label} has shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    supported = (arr.dtype in (np.uint8, np.uint16, np.int32, np.int64)
                 or np.issubdtype(arr.dtype, np.floating))
    if arr.size == 0 and supported:  # no pixels to convert: the caller reports it as empty
        return np.zeros(arr.shape, np.uint8)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if arr.dtype in (np.int32, np.int64):
        low, high = arr.min(), arr.max()
        if low < 0 or high > 65535:
            raise ValueError(f"{label} ({arr.dtype}) holds values from {low} to {high}; "
                             f"{arr.dtype} images must hold values in [0, 65535] (8- or 16-bit)")
        scale = 257.0 if high > 255 else 1.0
        return (arr.astype(np.float32) / scale + 0.5).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{label} is a float image ({arr.dtype}): it must hold finite "
                             "values in [0, 1]")
        return (arr * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"{label} has unsupported dtype {arr.dtype}; use uint8 RGB")


def longest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the longer side to ``size`` (aspect kept, rounded)."""
    scale = size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_longest_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is ``size`` (aspect kept), as SAM's ``ResizeLongestSide``."""
    h, w = image.shape[:2]
    nh, nw = longest_side_size(h, w, size)
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def pad_to_square(array: np.ndarray, size: int, value=0) -> np.ndarray:
    """Pad an H x W (x C) array at the bottom/right to ``size`` x ``size``."""
    h, w = array.shape[:2]
    if h > size or w > size:
        raise ValueError(f"cannot pad a {h}x{w} array to {size}x{size}")
    out = np.full((size, size, *array.shape[2:]), value, dtype=array.dtype)
    out[:h, :w] = array
    return out


def policy_view_size(height: int, width: int, min_pixels: int = 3136, max_pixels: int = 705600,
                     factor: int = 28) -> tuple[int, int]:
    """The (h, w) the policy sees: Qwen2.5-VL's own ``smart_resize`` (multiples of ``factor``,
    within the pixel budget, aspect kept), so this view and the processor always agree."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return smart_resize(height, width, factor, min_pixels, max_pixels)
