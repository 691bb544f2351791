"""Datasets and transforms (DATASETS / TRANSFORMS registries)."""

from .jsonl import JsonlSegDataset
from .masks import LoadSegAnnotations, mask_to_rle, rle_to_mask, segm_to_mask
from .reasonseg import ReasonSegDataset
from .refcoco import RefCOCODataset
from .shapes import PerturbAnswerPlace, ShapesReasonDataset, ShapesWorld
from .transforms import LoadImage, PackReasonSegInputs, PolicyView, ResizePadVision

__all__ = [
    "RefCOCODataset", "ReasonSegDataset", "JsonlSegDataset", "ShapesReasonDataset", "ShapesWorld",
    "LoadImage", "LoadSegAnnotations", "ResizePadVision", "PolicyView", "PackReasonSegInputs",
    "PerturbAnswerPlace",
    "segm_to_mask", "mask_to_rle", "rle_to_mask",
]
