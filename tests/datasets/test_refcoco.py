import os
import pickle
import shutil

import pytest
from mmengine.registry import DefaultScope

import coprs.datasets.refcoco as refcoco_mod
from coprs.datasets.masks import LoadSegAnnotations
from coprs.datasets.refcoco import RefCOCODataset
from coprs.datasets.safe_pickle import UnsafePickleError
from coprs.registry import DATASETS
from coprs.testing.data_fixtures import make_refcoco_fixture


def _refcoco(*args, **kwargs):
    """RefCOCODataset without mmengine's serialisation (its gc.collect() costs ~0.1 s per build)."""
    kwargs.setdefault("serialize_data", False)
    return RefCOCODataset(*args, **kwargs)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_refcoco_fixture(tmp_path_factory.mktemp("refer"), num_images=6)


@pytest.fixture
def fx_copy(fx, tmp_path):
    """A writable copy of the fixture (for tests that break files)."""
    root = tmp_path / "refer"
    shutil.copytree(fx.data_root, root)
    return str(root)


@pytest.fixture
def logs(monkeypatch):
    messages = []
    monkeypatch.setattr(refcoco_mod, "print_log", lambda msg, **kw: messages.append(msg))
    return messages


@pytest.mark.parametrize(
    "dataset,split",
    [
        ("refcoco", "train"),
        ("refcoco", "val"),
        ("refcoco", "testA"),
        ("refcoco", "testB"),
        ("refcoco+", "testB"),
        ("refcocog", "val"),
        ("refcocog", "test"),
    ],
)
def test_one_sample_per_sentence(fx, dataset, split):
    ds = _refcoco(fx.data_root, dataset=dataset, split=split)
    assert len(ds) == fx.sentences(dataset, split) > 0
    refs = {r["ref_id"]: r for r in fx.refs[dataset] if r["split"] == split}
    images = {img["id"]: img for img in fx.images}
    anns = {a["id"]: a for a in fx.annotations}
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        ref = refs[info["ref_id"]]
        sent = next(s for s in ref["sentences"] if s["sent_id"] == info["sent_id"])
        assert info["instruction"] == sent["sent"]
        assert info["sample_id"] == f"{ref['ref_id']}_{sent['sent_id']}"
        assert info["gt_segm"] == anns[ref["ann_id"]]["segmentation"]
        assert info["ignore_segm"] is None
        assert os.path.isabs(info["img_path"]) and os.path.isfile(info["img_path"])
        assert os.path.basename(info["img_path"]) == images[ref["image_id"]]["file_name"]
        assert (info["height"], info["width"]) == (48, 64)
        assert info["dataset_name"] == dataset and info["split"] == split
    assert len({ds.get_data_info(i)["sample_id"] for i in range(len(ds))}) == len(ds)
    assert ds.split_by == {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}[dataset]


def test_masks_match_annotations_including_rle(fx):
    ds = _refcoco(fx.data_root, dataset="refcoco", split="train")
    area = {a["id"]: a["area"] for a in fx.annotations}
    seen_rle = False
    for i in range(len(ds)):
        info = LoadSegAnnotations()(ds.get_data_info(i))
        assert info["gt_mask"].sum() == area[info["ann_id"]] > 0
        seen_rle |= isinstance(info["gt_segm"], dict)
    assert seen_rle


def test_exclusion_drops_exactly_the_eval_images(fx, logs):
    union = set().union(*fx.eval_image_ids.values())
    train_images = {r["image_id"] for r in fx.refs["refcoco+"] if r["split"] == "train"}
    assert union & train_images  # the fixture shares images between train and eval splits
    full = _refcoco(fx.data_root, dataset="refcoco+", split="train")
    ds = _refcoco(fx.data_root, dataset="refcoco+", split="train", exclude_eval_images=True)
    kept = {ds.get_data_info(i)["image_id"] for i in range(len(ds))}
    assert kept == train_images - union
    assert len(ds) == fx.sentences("refcoco+", "train", exclude=union) < len(full)
    assert not any("missing" in m for m in logs)


def test_exclusion_warns_about_missing_refs_files(fx_copy, logs):
    os.remove(os.path.join(fx_copy, "refcocog", "refs(umd).p"))
    ds = _refcoco(fx_copy, dataset="refcoco", split="train", exclude_eval_images=True)
    assert len(ds) > 0
    assert any(os.path.join(fx_copy, "refcocog", "refs(umd).p") in m for m in logs)


def test_missing_ann_is_skipped_with_warning(fx_copy, logs):
    path = os.path.join(fx_copy, "refcoco", "refs(unc).p")
    with open(path, "rb") as f:
        refs = pickle.load(f)
    broken = next(r for r in refs if r["split"] == "train")
    broken["ann_id"] = 987654
    with open(path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    before = sum(len(r["sentences"]) for r in refs if r["split"] == "train")
    ds = _refcoco(fx_copy, dataset="refcoco", split="train")
    assert len(ds) == before - len(broken["sentences"])
    assert len(ds.skipped) == 1 and "987654" in ds.skipped[0][1]
    assert any(f"ref_id={broken['ref_id']}" in m for m in logs)
    for r in refs:
        r["ann_id"] = 987654
    with open(path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    with pytest.raises(ValueError, match=r"no usable sample.*987654"):
        _refcoco(fx_copy, dataset="refcoco", split="val")


def test_argument_validation(fx):
    with pytest.raises(ValueError, match="refcoco, refcoco\\+, refcocog"):
        _refcoco(fx.data_root, dataset="refclef")
    with pytest.raises(ValueError, match="valid: umd, google"):
        _refcoco(fx.data_root, dataset="refcocog", split_by="unc")
    with pytest.raises(ValueError, match="testA"):
        _refcoco(fx.data_root, split="dev")
    with pytest.raises(ValueError, match="only with split='train'"):
        _refcoco(fx.data_root, split="val", exclude_eval_images=True)
    with pytest.raises(ValueError, match=r"no refs in split 'val'; it has: testB, train"):
        _refcoco(fx.data_root, dataset="refcoco+", split="val")


def test_missing_files_name_the_path(fx_copy, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"nothing/refcoco/instances\.json.*refer"):
        _refcoco(str(empty))
    os.remove(os.path.join(fx_copy, "refcoco", "refs(unc).p"))
    with pytest.raises(FileNotFoundError, match=r"refcoco/refs\(unc\)\.p.*layout"):
        _refcoco(fx_copy)
    with pytest.raises(FileNotFoundError, match="img_dir"):
        _refcoco(fx_copy, dataset="refcocog", split="val", img_dir=str(tmp_path / "no"))


def test_malicious_refs_pickle_is_rejected(fx_copy, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(os.path.join(fx_copy, "refcocog", "refs(umd).p"), "wb") as f:
        pickle.dump([Evil()], f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refs\(umd\)\.p"):
        _refcoco(fx_copy, dataset="refcocog", split="val")
    assert not marker.exists()


def test_registry_build_lazy_init_and_pipeline(fx):
    with DefaultScope.overwrite_default_scope("coprs"):
        ds = DATASETS.build(
            dict(
                type="RefCOCODataset",
                data_root=fx.data_root,
                dataset="refcocog",
                split="test",
                lazy_init=True,
                pipeline=[dict(type="LoadSegAnnotations")],
            )
        )
    assert isinstance(ds, RefCOCODataset) and not ds._fully_initialized
    sample = ds[0]
    assert sample["gt_mask"].shape == (48, 64) and sample["gt_mask"].any()
    assert ds.metainfo["dataset_name"] == "refcocog"


def _edit_instances(root, edit):
    import json

    path = os.path.join(root, "refcoco", "instances.json")
    with open(path) as f:
        instances = json.load(f)
    edit(instances)
    with open(path, "w") as f:
        json.dump(instances, f)
    return path


def _val_ref(root):
    with open(os.path.join(root, "refcoco", "refs(unc).p"), "rb") as f:
        return next(r for r in pickle.load(f) if r["split"] == "val")


def test_empty_segmentation_is_kept_and_reported(fx_copy, logs):
    ref = _val_ref(fx_copy)

    def empty(instances):
        next(a for a in instances["annotations"] if a["id"] == ref["ann_id"])["segmentation"] = []

    _edit_instances(fx_copy, empty)
    ds = _refcoco(fx_copy, dataset="refcoco", split="val")
    assert ds.empty_target == [f"{ds.ann_file}#ref_id={ref['ref_id']}"]
    assert any("empty 'segmentation'" in m and f"ref_id={ref['ref_id']}" in m for m in logs)
    infos = [ds.get_data_info(i) for i in range(len(ds))]
    kept = [i for i in infos if i["ref_id"] == ref["ref_id"]]
    assert len(kept) == len(ref["sentences"]) and all(i["gt_segm"] == [] for i in kept)


def test_broken_instances_and_refs_name_the_file(fx_copy):
    path = os.path.join(fx_copy, "refcoco", "instances.json")
    with open(path, "a") as f:
        f.write(",")
    with pytest.raises(ValueError, match=r"refcoco/instances\.json is not a readable JSON"):
        _refcoco(fx_copy, dataset="refcoco", split="val")
    refs_path = os.path.join(fx_copy, "refcocog", "refs(umd).p")
    with open(refs_path, "rb") as f:
        refs = pickle.load(f)
    for ref in refs:
        for sent in ref["sentences"]:
            del sent["sent_id"]
    with open(refs_path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    with pytest.raises(ValueError, match=r"refs\(umd\)\.p: sentence #0 of ref #0.*'sent_id'"):
        _refcoco(fx_copy, dataset="refcocog", split="val")


def test_unreadable_refs_pickle_is_a_one_line_cli_error(fx_copy, tmp_path, capsys):
    from mmengine.config import Config

    from coprs.cli import main

    from ..conftest import TINY_CONFIG  # noqa: TID252

    refs_path = os.path.join(fx_copy, "refcoco", "refs(unc).p")
    with open(refs_path, "rb") as f:
        data = f.read()
    with open(refs_path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):  # UnsafePickleError
        _refcoco(fx_copy, dataset="refcoco", split="val")
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [dict(type="RefCOCODataset", data_root=fx_copy, dataset="refcoco",
                                  split="val", pipeline=[dict(type="LoadSegAnnotations")])]
    cfg.dump(str(tmp_path / "cfg.py"))
    code = main(["browse-dataset", str(tmp_path / "cfg.py"), "--split", "val", "--dump",
                 str(tmp_path / "dump.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "error: " in err and "refs(unc).p: not a readable pickle" in err
