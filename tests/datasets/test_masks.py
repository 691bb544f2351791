import json

import numpy as np
import pytest

from coprs.datasets.masks import LoadSegAnnotations, mask_to_rle, rle_to_mask, segm_to_mask
from coprs.registry import TRANSFORMS

RECT = [10.0, 8.0, 20.0, 8.0, 20.0, 18.0, 10.0, 18.0]


def test_polygon_pixels():
    mask = segm_to_mask([RECT], 48, 64)
    assert mask.dtype == bool and mask.shape == (48, 64)
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 17, 10, 19)
    assert mask.sum() == 100
    assert mask[12, 15] and not mask[30, 40] and not mask[12, 25]


def test_union_of_polygons_and_empty():
    tri = [40.0, 10.0, 60.0, 10.0, 50.0, 40.0]
    both = segm_to_mask([RECT, tri], 48, 64)
    assert both.sum() == segm_to_mask([RECT], 48, 64).sum() + segm_to_mask([tri], 48, 64).sum()
    assert not segm_to_mask([], 48, 64).any()


def test_polygon_outside_image_is_clipped():
    mask = segm_to_mask([[-10, -10, 20, -10, 20, 20, -10, 20]], 48, 64)
    assert mask.shape == (48, 64)
    assert mask[0, 0] and mask[19, 19] and not mask[20, 20]
    assert not segm_to_mask([[100, 100, 120, 100, 120, 120]], 48, 64).any()


def test_degenerate_polygon_is_rejected_by_index():
    with pytest.raises(ValueError, match=r"#1 \(2 points"):
        segm_to_mask([RECT, [1, 1, 5, 5]], 48, 64)
    with pytest.raises(ValueError, match="wrap a single polygon"):
        segm_to_mask(RECT, 48, 64)


def test_rle_round_trip_and_forms():
    mask = segm_to_mask([RECT], 48, 64)
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [48, 64]
    json.dumps(rle)
    assert np.array_equal(rle_to_mask(rle), mask)
    assert np.array_equal(segm_to_mask(rle, 48, 64), mask)
    assert np.array_equal(segm_to_mask({**rle, "counts": rle["counts"].encode()}, 48, 64), mask)
    # uncompressed (iscrowd) RLE: column-major run lengths
    tiny = {"size": [2, 3], "counts": [1, 2, 3]}
    assert segm_to_mask(tiny, 2, 3).tolist() == [[False, True, False], [True, False, False]]
    with pytest.raises(ValueError, match=r"RLE size \[48, 64\].*\[50, 64\]"):
        segm_to_mask(rle, 50, 64)


def test_load_seg_annotations():
    assert TRANSFORMS.get("LoadSegAnnotations") is LoadSegAnnotations
    t = LoadSegAnnotations()
    out = t({"gt_segm": [RECT], "ignore_segm": None, "height": 48, "width": 64})
    assert out["gt_mask"].sum() == 100 and out["ignore_mask"] is None
    ign = [[30, 30, 40, 30, 40, 40, 30, 40]]
    out = t.transform(
        {
            "gt_segm": [RECT],
            "ignore_segm": ign,
            "height": 48,
            "width": 64,
            "img": np.zeros((48, 64, 3), np.uint8),
        }
    )
    assert out["ignore_mask"][35, 35] and not out["ignore_mask"][12, 15]


def test_load_seg_annotations_rejects_size_mismatch():
    results = {
        "gt_segm": [RECT],
        "height": 48,
        "width": 64,
        "img": np.zeros((64, 48, 3)),
        "img_path": "/data/x.jpg",
        "sample_id": "12_34",
    }
    with pytest.raises(ValueError, match=r"64x48.*48x64.*/data/x\.jpg.*12_34"):
        LoadSegAnnotations()(results)
    with pytest.raises(ValueError, match=r"#0.*12_34"):
        LoadSegAnnotations()(
            {"gt_segm": [[1, 2, 3, 4]], "height": 48, "width": 64, "sample_id": "12_34"}
        )
