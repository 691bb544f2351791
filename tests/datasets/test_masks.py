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


def _true_runs(mask):
    """COCO's uncompressed RLE of ``mask`` (column-major runs, starting with background)."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *runs] if flat[0] else runs


def test_rle_string_decoder_matches_pycocotools_encoder():
    from coprs.datasets.masks import _string_run_lengths

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        rle = mask_to_rle(mask)
        assert _string_run_lengths(rle["counts"].encode()) == _true_runs(mask)


def test_malformed_rle_is_rejected_not_decoded_to_noise():
    good = mask_to_rle(segm_to_mask([RECT], 48, 64))
    bad = {
        "zzzz": ({"size": [100, 120], "counts": "zzzz"}, "not in COCO's RLE alphabet"),
        "short": ({"size": [100, 120], "counts": "0"}, r"add up to 0 pixels.*12000"),
        "cut": ({"size": [48, 64], "counts": good["counts"][:-1]}, "add up to|cut short"),
        "wrong size": ({"size": [48, 65], "counts": good["counts"]}, r"3072 pixels.*3120"),
        "list sum": ({"size": [2, 3], "counts": [1, 2]}, r"add up to 3 pixels.*\[2, 3\] has 6"),
        "negative": ({"size": [2, 3], "counts": "O"}, "negative run length"),  # -17
        "list negative": ({"size": [2, 3], "counts": [7, -1]}, r"integers >= 0"),
    }
    for rle, message in bad.values():
        with pytest.raises(ValueError, match=message):
            rle_to_mask(rle)
        hw = rle["size"]
        with pytest.raises(ValueError, match=message):
            segm_to_mask(rle, *hw)
    # the pipeline names the sample and the annotation; evaluation (skip_errors) skips it
    results = {"gt_segm": bad["zzzz"][0], "height": 100, "width": 120, "img_path": "a.jpg",
               "sample_id": "7_1", "ann_id": 102}
    with pytest.raises(ValueError, match=r"alphabet.*sample_id='7_1', ann_id=102"):
        LoadSegAnnotations()(dict(results))
    out = LoadSegAnnotations(skip_errors=True)(dict(results))
    assert "ann_id=102" in out["load_error"] and not out["gt_mask"].any()


def test_mask_images_are_read_by_value_not_colour(tmp_path):
    from PIL import Image

    index = np.zeros((6, 8), np.uint8)
    index[1:4, 2:6] = 1
    palette = Image.fromarray(index, mode="P")
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)  # index 0 white, 1 black
    palette.save(tmp_path / "p.png")
    assert np.array_equal(segm_to_mask(str(tmp_path / "p.png"), 6, 8), index > 0)
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[1:4, 2:6, 2] = 2  # a faint blue: 0 in grey (L)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(segm_to_mask(str(tmp_path / "rgb.png"), 6, 8), index > 0)
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[1:4, 2:6] = (9, 0, 0, 0)  # alpha is not read
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(segm_to_mask(str(tmp_path / "rgba.png"), 6, 8), index > 0)
    Image.fromarray(index.astype(np.uint16) * 300).save(tmp_path / "i16.png")
    assert np.array_equal(segm_to_mask(str(tmp_path / "i16.png"), 6, 8), index > 0)


def test_mask_image_above_the_pixel_limit_is_a_value_error(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "m.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 px > twice the limit
    with pytest.raises(ValueError, match=r"m\.png.*PIL\.Image\.MAX_IMAGE_PIXELS"):
        segm_to_mask(str(tmp_path / "m.png"), 20, 20)


def test_polygons_that_cover_no_pixel_are_kept_and_warned_about_once(monkeypatch):
    import coprs.datasets.masks as masks_mod

    logs = []
    monkeypatch.setattr(masks_mod, "print_log", lambda msg, **kw: logs.append(msg),
                        raising=False)
    t = LoadSegAnnotations(skip_errors=True)
    outside = {"gt_segm": [[100, 100, 120, 100, 120, 120]], "height": 48, "width": 64,
               "img_path": "a.jpg", "sample_id": "s1", "line": 3}
    for _ in range(2):  # e.g. browse, then evaluate: one warning
        out = t(dict(outside))
        assert not out["gt_mask"].any() and "load_error" not in out
    flat = dict(outside, gt_segm=[[5, 5, 20, 5, 35, 5]], sample_id="s2")  # zero area
    assert not t(flat)["gt_mask"].any()
    assert len(logs) == 2 and "sample_id='s1'" in logs[0] and "line=3" in logs[0]
    assert "sample_id='s2'" in logs[1] and "cover no pixel" in logs[1]
    # a target that says it is empty is not warned about; nor is one that covers pixels
    empty_rle = mask_to_rle(np.zeros((48, 64), bool))
    for segm in ([], empty_rle, [RECT]):
        t(dict(outside, gt_segm=segm, sample_id="other"))
    assert len(logs) == 2
