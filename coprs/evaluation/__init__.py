"""Metrics (METRICS registry) and the pure functions behind them."""

from .functional import iou_metrics, mask_iou, reduce_counts, sample_counts
from .metrics import ReasonSegMetric

__all__ = ["ReasonSegMetric", "iou_metrics", "mask_iou", "reduce_counts", "sample_counts"]
