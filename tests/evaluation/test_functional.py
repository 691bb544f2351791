"""Hand-checked tests of coprs.evaluation.functional (SPEC §5: LISA's protocol and its switches)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coprs.evaluation.functional import (
    COUNT_KEYS,
    PER_SAMPLE_KEYS,
    find_per_sample,
    iou_metrics,
    mask_iou,
    read_per_sample,
    reduce_by,
    reduce_counts,
    results_subdir,
    sample_counts,
    sample_iou,
    write_per_sample,
)


def _mask(pixels: list[tuple[int, int]], shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for r, c in pixels:
        mask[r, c] = True
    return mask


# pred  gt    ignore     (4 x 4; unlisted pixels are 0)
# 1100  0110  1010
# 1100  0110  0100
# 0000  0000  0000
# 0000  0000  0001
# ignore covers a pred-only pixel (0,0), a gt-only pixel (0,2), a pred&gt pixel (1,1) and (3,3).
PRED = _mask([(0, 0), (0, 1), (1, 0), (1, 1)])
GT = _mask([(0, 1), (0, 2), (1, 1), (1, 2)])
IGNORE = _mask([(0, 0), (0, 2), (1, 1), (3, 3)])


def _record(inter: int, union: int) -> dict:
    """Counts with the same numbers in every ignore mode."""
    return {
        f"{kind}_{mode}": v
        for mode in ("exclude", "background", "foreground")
        for kind, v in (("inter", inter), ("union", union))
    }


def test_sample_counts_4x4_every_ignore_mode():
    counts = sample_counts(PRED, GT, IGNORE)
    # exclude: valid pixels only -> inter {(0,1)}, union {(0,1),(1,0),(1,2)}
    assert counts["inter_exclude"] == 1 and counts["union_exclude"] == 3
    # background: gt' = {(0,1),(1,2)} -> inter {(0,1)}, union pred + (1,2)
    assert counts["inter_background"] == 1 and counts["union_background"] == 5
    # foreground: gt' = gt + {(0,0),(3,3)} -> inter {(0,0),(0,1),(1,1)}, union 7
    assert counts["inter_foreground"] == 3 and counts["union_foreground"] == 7
    assert counts["pred_area"] == 4 and counts["gt_area"] == 4 and counts["ignore_area"] == 4
    assert all(type(v) is int for v in counts.values())
    assert sample_iou(counts) == pytest.approx(1 / 3)
    assert sample_iou(counts, ignore_mode="background") == pytest.approx(1 / 5)
    assert sample_iou(counts, ignore_mode="foreground") == pytest.approx(3 / 7)


def test_sample_counts_without_ignore_modes_agree():
    for ignore in (None, np.zeros((4, 4), dtype=bool)):
        counts = sample_counts(PRED, GT, ignore)
        for mode in ("exclude", "background", "foreground"):
            assert (counts[f"inter_{mode}"], counts[f"union_{mode}"]) == (2, 6)
        assert counts["ignore_area"] == 0


def test_sample_counts_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        sample_counts(PRED, np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match=r"ignore \(3, 4\)"):
        sample_counts(PRED, GT, np.zeros((3, 4), dtype=bool))


def test_sample_counts_rejects_unthresholded_masks():
    with pytest.raises(TypeError, match="logits > 0"):
        sample_counts(PRED.astype(np.float32), GT)


def test_ciou_differs_from_giou():
    records = [_record(1, 2), _record(9, 10)]
    out = reduce_counts(records)
    assert out["gIoU"] == pytest.approx((0.5 + 0.9) / 2)  # 0.7
    assert out["cIoU"] == pytest.approx(10 / 12)  # 0.8333
    assert out["n"] == 2 and out["n_skipped"] == 0


@pytest.mark.parametrize(
    ("empty_empty", "giou", "n", "n_skipped"),
    [(1.0, 0.75, 2, 0), (0.0, 0.25, 2, 0), ("skip", 0.5, 1, 1), (1, 0.75, 2, 0)],
)
def test_empty_empty_settings(empty_empty, giou, n, n_skipped):
    records = [_record(1, 2), _record(0, 0)]
    out = reduce_counts(records, empty_empty=empty_empty)
    assert out["gIoU"] == pytest.approx(giou)
    assert out["cIoU"] == pytest.approx(0.5)  # the empty sample adds nothing to the sums
    assert (out["n"], out["n_skipped"]) == (n, n_skipped)


def test_empty_empty_depends_on_ignore_mode():
    # Empty prediction and gt but an ignore region: union 0 when excluded, not when foreground.
    counts = sample_counts(_mask([]), _mask([]), _mask([(2, 2), (2, 3)]))
    assert sample_iou(counts, empty_empty=1.0) == 1.0
    assert sample_iou(counts, empty_empty="skip") is None
    assert sample_iou(counts, ignore_mode="background") == 1.0
    assert sample_iou(counts, ignore_mode="foreground") == 0.0


def test_no_scored_samples_is_zero_not_nan():
    no_pr = {"Pr@0.5": 0.0, "Pr@0.7": 0.0, "Pr@0.9": 0.0}
    assert reduce_counts([]) == {"gIoU": 0.0, "cIoU": 0.0, "n": 0, "n_skipped": 0, **no_pr}
    out = reduce_counts([_record(0, 0)], empty_empty="skip")
    assert out == {"gIoU": 0.0, "cIoU": 0.0, "n": 0, "n_skipped": 1, **no_pr}
    # All samples empty/empty and scored 1: gIoU 1, cIoU 0 (LISA: 0 / (0 + 1e-10)).
    out = reduce_counts([_record(0, 0)], empty_empty=1.0)
    assert out == {"gIoU": 1.0, "cIoU": 0.0, "n": 1, "n_skipped": 0,
                   "Pr@0.5": 1.0, "Pr@0.7": 1.0, "Pr@0.9": 1.0}


def test_precision_at_thresholds():
    # IoUs 0.3, 0.5 (counts at its own threshold), 0.8, 1.0 and an empty/empty sample
    records = [_record(3, 10), _record(5, 10), _record(8, 10), _record(4, 4), _record(0, 0)]
    out = reduce_counts(records)  # empty/empty scores 1.0
    assert out["Pr@0.5"] == pytest.approx(4 / 5)
    assert out["Pr@0.7"] == pytest.approx(3 / 5)
    assert out["Pr@0.9"] == pytest.approx(2 / 5)
    out = reduce_counts(records, empty_empty="skip")  # left out of n and of Pr
    assert (out["n"], out["Pr@0.5"], out["Pr@0.9"]) == (4, pytest.approx(3 / 4), pytest.approx(1 / 4))
    out = reduce_counts(records, empty_empty=0.0)
    assert out["Pr@0.5"] == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"empty_empty": 0.5}, r"empty_empty must be one of \(1.0, 0.0, 'skip'\)"),
        ({"empty_empty": "drop"}, "empty_empty must be one of"),
        ({"ignore_mode": "ignore"}, r"ignore_mode must be one of \('exclude', 'background'"),
    ],
)
def test_reduce_counts_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reduce_counts([_record(1, 2)], **kwargs)


def test_reduce_counts_validates_records():
    with pytest.raises(ValueError, match="record 1 has no 'inter_exclude'"):
        reduce_counts([_record(1, 2), {"union_exclude": 3}])
    with pytest.raises(ValueError, match="record 0 has invalid counts"):
        reduce_counts([_record(3, 2)])


def test_iou_metrics_end_to_end():
    preds = [PRED, _mask([]), _mask([(0, 0)])]
    gts = [GT, _mask([]), _mask([(0, 0), (0, 1)])]
    ignores = [IGNORE, None, None]
    out = iou_metrics(preds, gts, ignores)
    assert out["per_sample_iou"] == pytest.approx([1 / 3, 1.0, 0.5])
    assert out["gIoU"] == pytest.approx((1 / 3 + 1.0 + 0.5) / 3)
    assert out["cIoU"] == pytest.approx((1 + 0 + 1) / (3 + 0 + 2))
    assert out["n"] == 3
    out = iou_metrics(preds, gts, ignores, empty_empty="skip", ignore_mode="foreground")
    assert out["per_sample_iou"][0] == pytest.approx(3 / 7)
    assert out["per_sample_iou"][1] is None
    assert out["gIoU"] == pytest.approx((3 / 7 + 0.5) / 2)
    assert (out["n"], out["n_skipped"]) == (2, 1)
    with pytest.raises(ValueError, match="2 predictions, 1 ground truths"):
        iou_metrics([PRED, PRED], [GT])


def test_mask_iou():
    assert mask_iou(PRED, GT) == pytest.approx(2 / 6)
    assert mask_iou(_mask([]), _mask([])) == 1.0
    assert mask_iou(_mask([]), _mask([]), empty_empty=0.0) == 0.0
    with pytest.raises(ValueError, match="empty_empty must be one of"):
        mask_iou(PRED, GT, empty_empty="skip")
    with pytest.raises(ValueError, match=r"a \(4, 4\) and b \(2, 2\)"):
        mask_iou(PRED, np.zeros((2, 2), dtype=bool))


def test_results_subdir():
    assert results_subdir("reason_seg", "val") == "reason_seg_val"
    assert results_subdir("refcoco/unc", "testA") == "refcoco_unc_testA"


def _full_record(sample_id: str, **overrides) -> dict:
    record = {
        "sample_id": sample_id,
        "instruction": "the object that can hold water",
        **sample_counts(PRED, GT, IGNORE),
        "iou": 1 / 3,
        "heatmap_iou": 0.25,
        "format_ok": True,
    }
    record.update(overrides)
    return record


def test_per_sample_roundtrip(tmp_path):
    path = tmp_path / "results" / results_subdir("reason_seg", "val") / "per_sample.jsonl"
    import torch

    records = [
        _full_record("a", pred_area=np.int64(4), iou=np.float32(0.5),
                     bbox=np.array([1, 2, 3, 4]), points=torch.tensor([[1, 2]]),
                     image=tmp_path / "a.png"),  # a dataset's extra fields, as they come
        _full_record("b", heatmap_iou=None, format_ok=False),
        _full_record("c", heatmap_iou=float("nan")),
    ]
    assert write_per_sample(path, records) == path
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert all(set(json.loads(line)) >= set(PER_SAMPLE_KEYS) for line in lines)
    back = read_per_sample(path)
    assert [r["sample_id"] for r in back] == ["a", "b", "c"]
    assert back[0]["pred_area"] == 4 and back[0]["iou"] == pytest.approx(0.5)
    assert back[0]["bbox"] == [1, 2, 3, 4] and back[0]["points"] == [[1, 2]]
    assert back[0]["image"] == str(tmp_path / "a.png")
    with pytest.raises(TypeError, match="type object is not JSON serializable"):
        write_per_sample(path, [_full_record("d", extra=object())])
    assert back[1]["heatmap_iou"] is None and back[1]["format_ok"] is False
    assert back[2]["heatmap_iou"] is None  # NaN written as null
    assert reduce_counts(back)["gIoU"] == pytest.approx(1 / 3)
    assert find_per_sample(tmp_path / "results") == {"reason_seg_val": path}


def test_write_per_sample_requires_every_field(tmp_path):
    record = _full_record("a")
    del record["heatmap_iou"]
    with pytest.raises(ValueError, match=r"record 0 \(sample_id='a'\) lacks \['heatmap_iou'\]"):
        write_per_sample(tmp_path / "per_sample.jsonl", [record])


def test_read_per_sample_errors_name_file_and_line(tmp_path):
    path = tmp_path / "per_sample.jsonl"
    good = json.dumps(_full_record("a"))
    path.write_text(good + "\n\n" + '{"sample_id": "b", broken\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"per_sample.jsonl:3: malformed JSON"):
        read_per_sample(path)
    path.write_text(good + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"per_sample.jsonl:2: expected a JSON object"):
        read_per_sample(path)
    path.write_text(json.dumps({"sample_id": "x", "inter_exclude": 1}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"per_sample.jsonl:1: missing keys \['union_exclude'"):
        read_per_sample(path)
    assert set(COUNT_KEYS) < set(PER_SAMPLE_KEYS)


def test_reduce_by_groups_records_by_a_key_and_leaves_out_those_without_it():
    records = [{**_record(1, 1), "kind": "b"}, {**_record(1, 2), "kind": "a"},
               {**_record(0, 2), "kind": "a"}, {**_record(1, 1), "kind": None}, _record(1, 1)]
    out = reduce_by(records, "kind")
    assert list(out) == ["a", "b"]
    assert out["a"]["n"] == 2 and out["a"]["gIoU"] == pytest.approx(0.25)  # IoUs 1/2 and 0
    assert out["a"]["cIoU"] == pytest.approx(1 / 4) and out["a"]["Pr@0.5"] == pytest.approx(0.5)
    assert out["b"]["n"] == 1 and out["b"]["gIoU"] == pytest.approx(1.0)
    assert reduce_by(records, "missing") == {}
