"""On-disk cache of frozen backbone features, keyed by image content and backbone identity.

Layout: ``<root>/<backbone.cache_key>/<sha1[:2]>/<sha1>.pt`` where ``sha1`` hashes the decoded
RGB image (shape + pixels), so a re-encoded or renamed file maps to the same entry and a
different backbone (arch, size or weights) never reads stale features. Files hold one C x h x w
tensor, written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from mmengine.logging import print_log

__all__ = ["FeatureCache", "image_key"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def image_key(image: np.ndarray) -> str:
    """sha1 of an H x W x 3 uint8 image's shape and pixels."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha1(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class FeatureCache:
    """Read/write features of one backbone.

    Args:
        root: cache root folder.
        backbone_key: the backbone's ``cache_key``.
        dtype: storage dtype ('float16' halves the disk; 'float32' stores exactly).
    """

    def __init__(self, root: str | os.PathLike, backbone_key: str, dtype: str = "float16"):
        if dtype not in _DTYPES:
            raise ValueError(f"feature cache dtype {dtype!r} must be one of {list(_DTYPES)}")
        self.dir = Path(root) / backbone_key
        self.dtype = _DTYPES[dtype]

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def get(self, image: np.ndarray) -> torch.Tensor | None:
        """The cached C x h x w features of ``image`` or None (missing or unreadable entry)."""
        path = self.path(image_key(image))
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a broken entry is recomputed, not fatal
            print_log(f"feature cache entry {path} is unreadable ({exc}); recomputing",
                      logger="current", level=30)
            return None

    def put(self, image: np.ndarray, features: torch.Tensor) -> Path:
        """Store C x h x w ``features`` of ``image`` atomically."""
        path = self.path(image_key(image))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(features.detach().to("cpu", self.dtype).contiguous().clone(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
