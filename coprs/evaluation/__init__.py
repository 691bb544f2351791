"""Metrics (METRICS registry), the pure functions behind them, and chain-of-thought judges
(COT_JUDGES registry)."""

from .consistency import (
    BaseCoTJudge,
    ScoresFileJudge,
    ShapesCoTJudge,
    VLMJudge,
    consistency_score,
    consistency_table,
)
from .functional import iou_metrics, mask_iou, reduce_counts, sample_counts
from .metrics import ReasonSegMetric

__all__ = ["ReasonSegMetric", "iou_metrics", "mask_iou", "reduce_counts", "sample_counts",
           "BaseCoTJudge", "ShapesCoTJudge", "ScoresFileJudge", "VLMJudge", "consistency_score",
           "consistency_table"]
