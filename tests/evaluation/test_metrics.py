import json

import numpy as np
import pytest

from coprs.evaluation import ReasonSegMetric
from coprs.structures import SegmentationResult


def _pred(mask, heat=None, ok=True, response=""):
    heat = mask.astype(np.float32) if heat is None else heat
    return SegmentationResult(cot="", response=response, heatmap=heat, mask=mask, format_ok=ok)


def _sample(pred, gt, ignore=None, sid="s", **kw):
    return dict(pred=pred, gt_mask=gt, ignore_mask=ignore, sample_id=sid, instruction="i", **kw)


def test_metric_reduces_counts_and_reports_skips(tmp_path):
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True  # 4 px
    pred_a = np.zeros((4, 4), bool)
    pred_a[:2, :] = True  # inter 4, union 8 -> 0.5
    empty = np.zeros((4, 4), bool)
    m = ReasonSegMetric(out_dir=str(tmp_path), dataset_name="refcoco", split="val")
    m.process({}, [_sample(_pred(pred_a, ok=False, response="<think>the red one"), gt, sid="a",
                           instruction_type="relation",
                           template_id="relation.relation.0"),
                   _sample(_pred(empty), empty, sid="b", instruction_type="relation"),
                   dict(pred=None, load_error="x.jpg unreadable", sample_id="c",
                        img_path="x.jpg")])
    res = m.compute_metrics(m.results)
    assert res["n"] == 2 and res["gIoU"] == pytest.approx(0.75)  # (0.5 + 1) / 2
    assert res["cIoU"] == pytest.approx(4 / 8)
    assert res["format_rate"] == pytest.approx(0.5)
    assert res["heatmap_IoU"] == pytest.approx(0.75)
    assert res["n_unreadable"] == 1 and "x.jpg" in res["unreadable"][0]
    assert res["by_type"]["relation"]["n"] == 2
    assert res["by_type"]["relation"]["Pr@0.7"] == pytest.approx(0.5)
    assert (res["Pr@0.5"], res["Pr@0.7"]) == (1.0, pytest.approx(0.5))  # IoUs 0.5 and 1
    lines = (tmp_path / "refcoco_val" / "per_sample.jsonl").read_text().splitlines()
    assert [json.loads(x)["sample_id"] for x in lines] == ["a", "b"]
    assert [json.loads(x)["template_id"] for x in lines] == ["relation.relation.0", None]
    assert [json.loads(x)["response"] for x in lines] == ["<think>the red one", ""]


def test_metric_protocol_switches():
    gt = np.zeros((4, 4), bool)
    gt[0, 0] = True
    ignore = np.zeros((4, 4), bool)
    ignore[3, 3] = True
    pred = gt | ignore
    empty = np.zeros((4, 4), bool)
    samples = [_sample(_pred(pred), gt, ignore), _sample(_pred(empty), empty)]
    res = {}
    for mode, ee in [("exclude", 1.0), ("background", "skip"), ("foreground", 0.0)]:
        m = ReasonSegMetric(ignore_mode=mode, empty_empty=ee)
        m.process({}, samples)
        res[mode] = m.compute_metrics(m.results)
    assert res["exclude"]["gIoU"] == pytest.approx(1.0)  # ignore pixel not counted; empty = 1
    assert res["background"]["gIoU"] == pytest.approx(0.5) and res["background"]["n"] == 1
    assert res["foreground"]["gIoU"] == pytest.approx(0.5)  # (1 + 0) / 2
    # the heatmap IoU is measured under the same protocol (here the heatmap is the mask)
    assert [res[m]["heatmap_IoU"] for m in ("exclude", "background", "foreground")] == [
        pytest.approx(res[m]["gIoU"]) for m in ("exclude", "background", "foreground")]
    with pytest.raises(ValueError):
        ReasonSegMetric(ignore_mode="nope")


def test_metric_with_every_sample_unreadable_is_zero():
    m = ReasonSegMetric()
    m.process({}, [dict(pred=None, load_error="x.jpg unreadable", sample_id="c", img_path="x.jpg")])
    res = m.compute_metrics(m.results)
    assert res["n"] == 0 and res["n_unreadable"] == 1
    assert res["gIoU"] == res["cIoU"] == res["Pr@0.5"] == res["heatmap_IoU"] == 0.0


def test_metric_names_are_unprefixed_and_mmengine_does_not_warn():
    """The loops key results by <dataset>/<split>; mmengine's BaseMetric warns about a missing
    prefix unless one is set (it used to, at every validation), and ``evaluate`` adds none."""
    import logging

    from mmengine.logging import MMLogger

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        m = ReasonSegMetric()
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "prefix" in r.getMessage()]
    gt = np.ones((2, 2), bool)
    m.process({}, [_sample(_pred(gt), gt)])
    assert m.evaluate(1)["gIoU"] == 1.0
