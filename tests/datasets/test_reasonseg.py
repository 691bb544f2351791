import json
import os
import shutil

import numpy as np
import pytest
from mmengine.registry import DefaultScope

import coprs.datasets.reasonseg as reasonseg_mod
from coprs.datasets.masks import LoadSegAnnotations, segm_to_mask
from coprs.datasets.reasonseg import ReasonSegDataset
from coprs.registry import DATASETS
from coprs.testing.data_fixtures import make_reasonseg_fixture, write_reasonseg_sample

SQUARE = [[10, 10], [30, 10], [30, 30], [10, 30]]


def _reasonseg(*args, **kwargs):
    """ReasonSegDataset without mmengine's serialisation (its gc.collect() costs ~0.1 s per build)."""
    kwargs.setdefault("serialize_data", False)
    return ReasonSegDataset(*args, **kwargs)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_reasonseg_fixture(tmp_path_factory.mktemp("reasonseg"))


@pytest.fixture
def fx_copy(fx, tmp_path):
    shutil.copytree(fx.data_root, tmp_path / "rs")
    return str(tmp_path / "rs")


@pytest.fixture
def logs(monkeypatch):
    messages = []
    monkeypatch.setattr(reasonseg_mod, "print_log", lambda msg, **kw: messages.append(msg))
    return messages


def _infos(ds):
    return {ds.get_data_info(i)["sample_id"]: ds.get_data_info(i) for i in range(len(ds))}


def test_query_first_uses_text0(fx):
    ds = _reasonseg(fx.data_root, split="val")
    infos = _infos(ds)
    assert sorted(infos) == ["list_text_0", "str_text_0", "with_ignore_0"]
    for name, sample in fx.samples.items():
        info = infos[f"{name}_0"]
        assert info["instruction"] == sample["text"][0]
        assert info["img_path"] == os.path.abspath(sample["img_path"])
        assert (info["height"], info["width"]) == (48, 64)
        assert info["gt_segm"] == sample["target"]
        assert info["dataset_name"] == "reasonseg" and info["split"] == "val"
    assert infos["list_text_0"]["is_sentence"] is True
    assert infos["list_text_0"]["num_queries"] == 3
    # is_sentence is ReasonSeg's instruction type: the short/long query breakdown of LISA's tables
    assert [infos[f"{n}_0"]["instruction_type"] for n in ("list_text", "str_text", "with_ignore")
            ] == ["long_query", "short_query", "short_query"]


def test_query_all_gives_one_sample_per_instruction(fx):
    ds = _reasonseg(fx.data_root, query="all")
    infos = _infos(ds)
    assert len(ds) == sum(len(s["text"]) for s in fx.samples.values()) == 5
    assert [infos[f"list_text_{q}"]["instruction"] for q in range(3)] == fx.samples["list_text"][
        "text"
    ]
    assert infos["list_text_2"]["query_index"] == 2


def test_size_from_image_header_when_json_lacks_it(fx):
    with open(fx.samples["str_text"]["json_path"]) as f:
        assert "imageHeight" not in json.load(f)
    info = _infos(_reasonseg(fx.data_root))["str_text_0"]
    assert (info["height"], info["width"]) == (48, 64)


def test_header_size_applies_exif_rotation(tmp_path):
    from PIL import Image

    write_reasonseg_sample(
        tmp_path / "val", "rot", "x", [{"label": "target", "points": SQUARE}], write_size=False
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: 64x48 stored, 48x64 upright
    Image.new("RGB", (64, 48)).save(tmp_path / "val" / "rot.jpg", exif=exif)
    info = _reasonseg(str(tmp_path)).get_data_info(0)
    assert (info["height"], info["width"]) == (64, 48)


def test_masks_ignore_and_flag(fx):
    infos = _infos(_reasonseg(fx.data_root))
    t = LoadSegAnnotations()
    out = t(infos["list_text_0"])
    assert out["gt_mask"][20, 20] and not out["gt_mask"][5, 5] and out["ignore_mask"] is None
    out = t(infos["with_ignore_0"])
    assert out["gt_mask"][20, 20] and out["ignore_mask"] is not None
    assert out["ignore_mask"][10, 50] and not out["ignore_mask"][20, 20]
    assert not out["ignore_mask"][35, 4]  # 'flag' shape dropped (LISA)
    info = _infos(_reasonseg(fx.data_root, flag_as="ignore"))["with_ignore_0"]
    assert t(info)["ignore_mask"][35, 4]
    two = t(infos["str_text_0"])["gt_mask"]
    assert two[10, 8] and two[20, 50]  # union of both target polygons


def test_pipeline_through_registry(fx):
    with DefaultScope.overwrite_default_scope("coprs"):
        ds = DATASETS.build(
            dict(
                type="ReasonSegDataset",
                data_root=fx.data_root,
                pipeline=[dict(type="LoadSegAnnotations")],
            )
        )
    assert isinstance(ds, ReasonSegDataset) and ds.metainfo["dataset_name"] == "reasonseg"
    assert ds[0]["gt_mask"].shape == (48, 64)


def test_bad_inputs_are_skipped_and_reported(fx_copy, logs):
    split = os.path.join(fx_copy, "val")
    with open(os.path.join(split, "bad_json.json"), "w") as f:
        f.write('{"text": ["x"], "shapes": [')
    shutil.copy(os.path.join(split, "list_text.jpg"), os.path.join(split, "bad_json.jpg"))
    with open(os.path.join(split, "bad_bytes.json"), "wb") as f:
        f.write(b'{"text": ["\x81\x8d"], "shapes": []}')  # neither UTF-8 nor cp1252
    write_reasonseg_sample(split, "no_text", "x", [{"label": "target", "points": SQUARE}])
    with open(os.path.join(split, "no_text.json"), "w") as f:
        json.dump({"shapes": [{"label": "target", "points": SQUARE}]}, f)
    write_reasonseg_sample(split, "two_points", "x", [{"label": "target", "points": SQUARE[:2]}])
    write_reasonseg_sample(
        split, "no_image", "x", [{"label": "target", "points": SQUARE}], write_image=False
    )
    write_reasonseg_sample(split, "no_target", "x", [{"label": "ignore", "points": SQUARE}])

    ds = _reasonseg(fx_copy)
    reasons = {os.path.basename(p): r for p, r in ds.skipped}
    assert set(reasons) == {
        "bad_json.json",
        "bad_bytes.json",
        "no_text.json",
        "two_points.json",
        "no_image.json",
    }
    assert "invalid JSON" in reasons["bad_json.json"]
    assert "not UTF-8" in reasons["bad_bytes.json"]
    assert "'text'" in reasons["no_text.json"]
    assert "shape #0" in reasons["two_points.json"] and "2 point" in reasons["two_points.json"]
    assert "image not found" in reasons["no_image.json"]
    assert all(os.path.isabs(p) for p, _ in ds.skipped)
    # no target: kept with an empty ground truth (LISA), listed and warned about
    infos = _infos(ds)
    assert len(ds) == 4 and infos["no_target_0"]["gt_segm"] == []
    assert [os.path.basename(p) for p in ds.empty_target] == ["no_target.json"]
    assert any("skipped 5 of 9" in m and "two_points.json" in m for m in logs)
    assert any("no_target.json" in m for m in logs)
    ds = _reasonseg(fx_copy, skip_empty_target=True)
    assert len(ds) == 3 and len(ds.skipped) == 6


def test_cp1252_json_and_rectangle_shapes(tmp_path):
    split = tmp_path / "test"
    write_reasonseg_sample(split, "r", "x", [])
    anno = {
        "text": ["caf\u00e9 table"],
        "is_sentence": False,
        "shapes": [{"label": "target", "points": [[8, 8], [24, 16]], "shape_type": "rectangle"}],
    }
    (split / "r.json").write_bytes(json.dumps(anno, ensure_ascii=False).encode("cp1252"))
    info = _reasonseg(str(tmp_path), split="test").get_data_info(0)
    assert info["instruction"] == "caf\u00e9 table"
    mask = segm_to_mask(info["gt_segm"], 48, 64)
    assert mask.sum() == 16 * 8 and mask[12, 16]
    assert np.array_equal(np.nonzero(mask.any(0))[0], np.arange(8, 24))


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere/val"):
        _reasonseg(str(tmp_path / "nowhere"))
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.json"):
        _reasonseg(str(tmp_path))
    (tmp_path / "val" / "a.json").write_text("{}")
    with pytest.raises(ValueError, match="every annotation.*was skipped"):
        _reasonseg(str(tmp_path))
    with pytest.raises(ValueError, match="'first' or 'all'"):
        _reasonseg(str(tmp_path), query="some")


def test_target_outside_the_image_counts_as_empty(tmp_path, logs):
    split = tmp_path / "val"
    write_reasonseg_sample(split, "inside", "x", [{"label": "target", "points": SQUARE}])
    outside = [[500, 500], [600, 500], [550, 600]]  # a 64x48 image: no pixel covered
    write_reasonseg_sample(split, "outside", "x", [{"label": "target", "points": outside}])
    ds = _reasonseg(str(tmp_path))
    assert len(ds) == 2 and [os.path.basename(p) for p in ds.empty_target] == ["outside.json"]
    assert any("outside.json" in m and "cover no pixel" in m for m in logs)
    ds = _reasonseg(str(tmp_path), skip_empty_target=True)
    assert len(ds) == 1 and "cover no pixel of the 48x64 image" in ds.skipped[0][1]


def test_image_above_the_pixel_limit_is_skipped(tmp_path, monkeypatch, logs):
    from PIL import Image

    split = tmp_path / "val"
    write_reasonseg_sample(split, "ok", "x", [{"label": "target", "points": SQUARE}])
    write_reasonseg_sample(split, "big", "x", [{"label": "target", "points": SQUARE}],
                           write_size=False)  # the size must come from the image header
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x48 > twice that
    ds = _reasonseg(str(tmp_path))
    assert len(ds) == 1 and os.path.basename(ds.skipped[0][0]) == "big.json"
    assert "big.jpg" in ds.skipped[0][1] and "PIL.Image.MAX_IMAGE_PIXELS" in ds.skipped[0][1]
