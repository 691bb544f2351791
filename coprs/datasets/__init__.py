"""Datasets and transforms (DATASETS / TRANSFORMS registries)."""

from . import masks, reasonseg, refcoco, safe_pickle, shapes  # noqa: F401  (register)
