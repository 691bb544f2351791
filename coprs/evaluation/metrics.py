"""The reasoning-segmentation metric (METRICS registry): gIoU, cIoU, heatmap IoU, format rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mmengine.evaluator import BaseMetric

from ..registry import METRICS
from .functional import (
    PER_SAMPLE_FILENAME,
    PRECISION_THRESHOLDS,
    reduce_by,
    reduce_counts,
    results_subdir,
    sample_counts,
    sample_iou,
    write_per_sample,
)

__all__ = ["ReasonSegMetric"]

#: what ``by_type`` keeps per instruction type
BY_TYPE_KEYS = ("gIoU", "cIoU", *(f"Pr@{t}" for t in PRECISION_THRESHOLDS), "n")


@METRICS.register_module()
class ReasonSegMetric(BaseMetric):
    """gIoU / cIoU under LISA's protocol by default, with the peers' switches (SPEC §5).

    ``process`` keeps per-sample pixel counts under every ignore mode (so any protocol can be
    recomputed offline, ``tools/analysis/recompute_metrics.py``), the heatmap IoU
    (``heatmap > 0.5`` vs ground truth) and whether the response was well formed; samples whose
    image or annotation could not be read are kept as *skipped* with the reason.
    ``compute_metrics`` reduces them. mmengine's ``collect_results`` truncates the samples a
    distributed sampler pads with, so each sample counts once.

    Args:
        empty_empty: IoU of an empty prediction on an empty target: 1.0 (LISA), 0.0 or 'skip'.
        ignore_mode: 'exclude' (LISA), 'background' or 'foreground'.
        out_dir: where ``<dataset>_<split>/per_sample.jsonl`` is written (None: not written).
        dataset_name / split: names used for the output folder and the result keys.
    """

    # no prefix on the metric names: the loops key them by <dataset>/<split> (an empty string,
    # not None, so that mmengine does not warn about a missing prefix at every evaluation)
    default_prefix = ""

    def __init__(self, empty_empty: float | str = 1.0, ignore_mode: str = "exclude",
                 out_dir: str | None = None, dataset_name: str = "dataset", split: str = "test",
                 collect_device: str = "cpu", prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        sample_iou({"inter_exclude": 0, "union_exclude": 1, "inter_background": 0,
                    "union_background": 1, "inter_foreground": 0, "union_foreground": 1},
                   empty_empty, ignore_mode)  # validates both switches early
        self.empty_empty, self.ignore_mode = empty_empty, ignore_mode
        self.out_dir, self.dataset_name, self.split = out_dir, dataset_name, split

    def process(self, data_batch, data_samples) -> None:
        """``data_samples``: dicts with ``pred`` (a SegmentationResult, or None when skipped),
        ``gt_mask``, ``ignore_mask``, ``sample_id``, ``instruction`` and ``load_error``. Each
        per-sample record keeps the policy's ``response`` (its chain of thought and answer; the
        gold one in gold mode), and the synthetic world's ``instruction_type`` and
        ``template_id`` (None elsewhere) for breakdowns (``recompute_metrics.py --by``). A sample
        with ``resumed_record`` (scored by an earlier, interrupted run: ``coprs test --resume``)
        keeps that record."""
        for s in data_samples:
            if s.get("resumed_record") is not None:
                self.results.append(dict(s["resumed_record"]))
                continue
            if s.get("load_error") or s.get("pred") is None:
                self.results.append({"skipped": True, "sample_id": s.get("sample_id"),
                                     "img_path": s.get("img_path"),
                                     "reason": s.get("load_error") or "no prediction"})
                continue
            pred, gt = s["pred"], np.asarray(s["gt_mask"], bool)
            ignore = s.get("ignore_mask")
            ignore = None if ignore is None else np.asarray(ignore)
            record = sample_counts(pred.mask, gt, ignore)
            # the heatmap under the mask's protocol (ignore regions, empty targets), so that the
            # two IoUs the paper correlates are measured alike
            heat = sample_counts(pred.heatmap > 0.5, gt, ignore)
            record.update(
                sample_id=str(s.get("sample_id")),
                instruction=s.get("instruction", ""),
                iou=sample_iou(record, self.empty_empty, self.ignore_mode),
                heatmap_iou=sample_iou(heat, self.empty_empty, self.ignore_mode),
                format_ok=bool(pred.format_ok),
                response=pred.response,
                instruction_type=s.get("instruction_type"),
                template_id=s.get("template_id"),
            )
            self.results.append(record)

    def compute_metrics(self, results: list) -> dict:
        scored = [r for r in results if not r.get("skipped")]
        skipped = [r for r in results if r.get("skipped")]
        out = reduce_counts(scored, self.empty_empty, self.ignore_mode)  # zeros when empty
        heat = [r["heatmap_iou"] for r in scored if r["heatmap_iou"] is not None]
        out["heatmap_IoU"] = float(np.mean(heat)) if heat else 0.0
        out["format_rate"] = float(np.mean([r["format_ok"] for r in scored])) if scored else 0.0
        out["n_unreadable"] = len(skipped)
        out["unreadable"] = [f"{r['img_path']} ({r['sample_id']}): {r['reason']}"
                             for r in skipped]
        by_type = reduce_by(scored, "instruction_type", self.empty_empty, self.ignore_mode)
        if by_type:
            out["by_type"] = {t: {k: m[k] for k in BY_TYPE_KEYS} for t, m in by_type.items()}
        if self.out_dir is not None:
            path = Path(self.out_dir) / results_subdir(self.dataset_name, self.split)
            write_per_sample(path / PER_SAMPLE_FILENAME, scored)
        return out
