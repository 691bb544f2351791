"""JsonlSegDataset: your own data as JSON lines, loaded, evaluated and trained on."""

import json

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from coprs.cli import main
from coprs.datasets import JsonlSegDataset
from coprs.testing.data_fixtures import make_jsonl_fixture

from ..conftest import TINY_CONFIG  # noqa: TID252


@pytest.fixture(autouse=True)
def _coprs_scope():
    from coprs.utils import register_all_modules

    register_all_modules()  # pipelines name coprs transforms


PIPELINE = [dict(type="LoadImage"), dict(type="LoadSegAnnotations", skip_errors=True),
            dict(type="PackReasonSegInputs")]


def test_lines_masks_and_skipped_lines(tmp_path):
    masks = make_jsonl_fixture(tmp_path)
    ds = JsonlSegDataset(str(tmp_path / "val.jsonl"), pipeline=PIPELINE, serialize_data=False)
    assert ds.metainfo["dataset_name"] == tmp_path.name and ds.metainfo["split"] == "val"
    assert [where.rsplit(":", 1)[1] for where, _ in ds.skipped] == ["4", "5", "6"]
    reasons = " | ".join(why for _, why in ds.skipped)
    assert "not JSON" in reasons and "images/9.png' does not exist" in reasons
    assert "non-empty string" in reasons
    samples = [ds[i]["data_samples"] for i in range(len(ds))]
    assert [s["sample_id"] for s in samples] == ["box", "blob", "triangle"]
    for s in samples:  # mask image, RLE and polygon all rasterise to the annotated region
        assert np.array_equal(s["gt_mask"], masks[s["sample_id"]]), s["sample_id"]
        assert s["response_coprs"].startswith("<think>")
    assert [s["instruction_type"] for s in samples] == ["short", "long", "short"]
    assert samples[2]["ignore_mask"].sum() > 0 and samples[0]["ignore_mask"] is None
    # relative to data_root when it is given; the gold response under another paradigm's key
    ds = JsonlSegDataset("val.jsonl", data_root=str(tmp_path), name="mine", split="dev",
                         response_key="response_lisa", pipeline=PIPELINE, serialize_data=False)
    assert len(ds) == 3 and ds.metainfo["dataset_name"] == "mine"
    assert "response_lisa" in ds[0]["data_samples"]


def test_a_browse_dataset_dump_loads_back(tmp_path):
    """Any loader's samples, dumped by coprs browse-dataset, load as JSON lines: here ReasonSeg's,
    whose ignore regions and types come along."""
    from coprs.testing.data_fixtures import make_reasonseg_fixture

    fx = make_reasonseg_fixture(tmp_path / "rs", split="val")
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [dict(type="ReasonSegDataset", data_root=fx.data_root, split="val",
                                  pipeline=PIPELINE)]
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["browse-dataset", str(tmp_path / "cfg.py"), "--split", "val", "--dataset",
                 "reasonseg", "--dump", str(tmp_path / "dump.jsonl")]) == 0
    from coprs.datasets import ReasonSegDataset

    original = ReasonSegDataset(fx.data_root, split="val", pipeline=PIPELINE,
                                serialize_data=False)
    back = JsonlSegDataset(str(tmp_path / "dump.jsonl"), pipeline=PIPELINE, serialize_data=False)
    assert len(back) == len(original) == 3 and not back.skipped
    for i in range(3):
        a, b = original[i]["data_samples"], back[i]["data_samples"]
        assert a["sample_id"] == b["sample_id"] and a["instruction"] == b["instruction"]
        assert a["instruction_type"] == b["instruction_type"]
        assert np.array_equal(a["gt_mask"], b["gt_mask"])
        assert (a["ignore_mask"] is None) == (b["ignore_mask"] is None)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        JsonlSegDataset(str(tmp_path / "nope.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"no usable line.*missing \['instruction', 'mask'\]"):
        JsonlSegDataset(str(tmp_path / "bad.jsonl"))
    # a mask image of the wrong size is reported by the pipeline, and skipped in evaluation
    make_jsonl_fixture(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "0.png")
    ds = JsonlSegDataset(str(tmp_path / "val.jsonl"), pipeline=PIPELINE, serialize_data=False)
    assert "mask image" in ds[0]["data_samples"]["load_error"]
    assert "10x10" in ds[0]["data_samples"]["load_error"]


def test_evaluate_and_train_on_jsonl(tmp_path, capsys, small_run):
    """The base config's datasets (configs/_base_/datasets/jsonl.py) under the tiny model."""
    make_jsonl_fixture(tmp_path / "mine")
    base = Config.fromfile(str(TINY_CONFIG.parents[1] / "_base_" / "datasets" / "jsonl.py"))
    test, train = base.test_cfg.datasets[0], base.train_dataloader.dataset
    for ds in (test, train):  # the fixture has one file: train on the evaluation lines here
        ds.update(data_root=str(tmp_path / "mine"), ann_file="val.jsonl")
    train.pipeline[2].size = 112  # the tiny vision view
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [test]
    cfg.train_dataloader.dataset = train
    cfg.val_cfg.datasets = [test]  # gold reasoning: the lines' own
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["test", str(tmp_path / "cfg.py"), "--reasoning", "generated", "gold",
                 "--max-new-tokens", "2", "--work-dir", str(tmp_path / "t"), "--out",
                 str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    for mode in ("generated", "gold"):
        split = res[mode]["mine/val"]
        assert split["n"] == 3 and set(split["by_type"]) == {"long", "short"}
    assert res["gold"]["mine/val"]["format_rate"] == 1.0  # the lines' responses, teacher-forced
    # warm-up on the lines' gold responses, then GRPO
    assert main(["train", str(tmp_path / "cfg.py"), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", "train_cfg.stages.0.iters=2", "train_cfg.stages.1.iters=1",
                 *(o for o in small_run if not o.startswith("val_cfg"))]) == 0
    assert (tmp_path / "w" / "iter_3.pth").is_file()
    log = "".join(p.read_text() for p in (tmp_path / "w").rglob("*.log"))
    assert "mine/val/gIoU" in log  # validated on the lines too


def _lines(tmp_path):
    """The three good lines of make_jsonl_fixture, as dicts."""
    make_jsonl_fixture(tmp_path)
    return [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()[:3]]


def test_duplicate_ids_are_an_error_naming_the_lines(tmp_path):
    lines = _lines(tmp_path)
    lines[2]["id"] = lines[0]["id"]
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(ValueError, match=r"dup\.jsonl': lines 1 and 3 have the same id 'box'"):
        JsonlSegDataset(str(path))
    # a line without an id is named by its line number, which another line may use
    del lines[2]["id"]
    lines[0]["id"] = "3"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(ValueError, match=r"lines 1 and 3 have the same id '3'"):
        JsonlSegDataset(str(path))


def test_a_line_that_is_not_utf8_is_skipped_with_its_number(tmp_path):
    lines = _lines(tmp_path)
    raw = [json.dumps(line, ensure_ascii=False).encode("utf-8") for line in lines]
    raw[1] = json.dumps(dict(lines[1], instruction="caf\u00e9"),
                        ensure_ascii=False).encode("latin-1")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(raw) + b"\n")  # a BOM is allowed
    ds = JsonlSegDataset(str(path), serialize_data=False)
    assert [ds.get_data_info(i)["sample_id"] for i in range(len(ds))] == ["box", "triangle"]
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == f"{path}:2"
    assert "not UTF-8" in ds.skipped[0][1] and "0xe9" in ds.skipped[0][1]
