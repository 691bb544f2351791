import json

import numpy as np
import torch
from mmengine.config import Config

from coprs.apis import init_segmentor
from coprs.backbones import FeatureCache
from coprs.cli import main
from coprs.datasets.masks import rle_to_mask, segm_to_mask
from coprs.testing.data_fixtures import make_refcoco_fixture

from ..conftest import TINY_CONFIG  # noqa: TID252


def _config(tmp_path, datasets, **model):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = datasets
    cfg.model.update(model)
    path = tmp_path / "cfg.py"
    cfg.dump(str(path))
    return str(path)


def test_browse_dataset_dumps_what_the_loader_produced(tmp_path):
    fx = make_refcoco_fixture(tmp_path / "refer", datasets=("refcoco",))
    pipeline = [dict(type="LoadImage"), dict(type="LoadSegAnnotations", skip_errors=True),
                dict(type="PackReasonSegInputs")]
    cfg = _config(tmp_path, [dict(type="RefCOCODataset", data_root=fx.data_root,
                                  img_dir=fx.img_dir, dataset="refcoco", split="val",
                                  pipeline=pipeline)])
    out = tmp_path / "samples.jsonl"
    # (the config also validates on the synthetic world's val split)
    assert main(["browse-dataset", cfg, "--split", "val", "--dataset", "refcoco", "--dump",
                 str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == fx.sentences("refcoco", "val")
    anns = {a["id"]: a for a in fx.annotations}
    refs = {r["ref_id"]: r for r in fx.refs["refcoco"]}
    for line in lines:
        ref = refs[int(line["sample_id"].split("_")[0])]
        ann = anns[ref["ann_id"]]
        img = next(i for i in fx.images if i["id"] == ann["image_id"])
        expect = segm_to_mask(ann["segmentation"], img["height"], img["width"])
        assert np.array_equal(rle_to_mask(line["mask_rle"]), expect)
        assert line["image"].endswith(img["file_name"])
    assert main(["browse-dataset", cfg, "--split", "nosuch", "--dump", str(out)]) == 2
    assert main(["browse-dataset", cfg, "--split", "val"]) == 2  # neither --dump nor --show-dir
    assert main(["browse-dataset", cfg, "--split", "val", "--dataset", "refcoco", "--show-dir",
                 str(tmp_path / "show"), "--limit", "2"]) == 0
    assert len(list((tmp_path / "show" / "refcoco_val").glob("*.png"))) == 2


def test_browse_dataset_draws_a_panel_per_sample(tmp_path, capsys):
    from PIL import Image

    ds = [dict(type="ShapesReasonDataset", split="test", num_samples=3,
               pipeline=[dict(type="LoadImage"), dict(type="PackReasonSegInputs")])]
    cfg = _config(tmp_path, ds)
    assert main(["browse-dataset", cfg, "--split", "test", "--show-dir", str(tmp_path / "s")]) == 0
    assert "3 panels" in capsys.readouterr().out
    panels = sorted((tmp_path / "s" / "shapes_test").glob("*.png"))
    assert [p.name for p in panels] == [f"0000{i}_test_00000{i}.png" for i in range(3)]
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in panels]
    assert all(x.shape == pictures[0].shape for x in pictures)
    assert not np.array_equal(pictures[0], pictures[1])  # each sample its own image and mask
    # the validation split of the config (val_cfg.datasets, 64 scenes in the tiny config)
    assert main(["browse-dataset", cfg, "--split", "val", "--dump", str(tmp_path / "v.jsonl"),
                 "--limit", "2"]) == 0
    assert [json.loads(x)["sample_id"] for x in (tmp_path / "v.jsonl").read_text().splitlines()] == [
        "val/000000", "val/000001"]
    assert main(["browse-dataset", cfg, "--split", "test", "--dump", str(tmp_path / "x.jsonl"),
                 "--limit", "0"]) == 2
    assert "--limit 0 must be at least 1" in capsys.readouterr().err


def test_extract_features_then_the_model_reads_them(tmp_path):
    ds = [dict(type="ShapesReasonDataset", split="test", num_samples=3,
               pipeline=[dict(type="LoadImage"), dict(type="PackReasonSegInputs")])]
    cache_dir = tmp_path / "cache"
    cfg = _config(tmp_path, ds, feature_cache=dict(root=str(cache_dir), dtype="float32"))
    assert main(["extract-features", cfg, "--split", "test"]) == 0
    files = sorted(cache_dir.rglob("*.pt"))
    assert len(files) == 3
    # a run again writes nothing new
    assert main(["extract-features", cfg, "--split", "test"]) == 0
    assert sorted(cache_dir.rglob("*.pt")) == files

    from coprs.datasets.shapes import ShapesWorld, sample_seed

    img = ShapesWorld().sample(sample_seed("test", 0)).image
    cached = init_segmentor(cfg)
    plain = init_segmentor(str(TINY_CONFIG))
    # poison the backbone: a cache hit must not call it
    cached.vision_backbone.encoder.forward = None
    k_cached, v1 = cached.encode_images([img])
    k_plain, v2 = plain.encode_images([img])
    torch.testing.assert_close(k_cached, k_plain)
    assert v1 == v2


def test_cache_is_keyed_by_backbone_and_content(tmp_path):
    a = FeatureCache(tmp_path, "sam_a", "float32")
    b = FeatureCache(tmp_path, "sam_b", "float32")
    img = np.zeros((4, 4, 3), np.uint8)
    a.put(img, torch.ones(2, 3, 3))
    assert torch.equal(a.get(img), torch.ones(2, 3, 3))
    assert b.get(img) is None  # another backbone never reads these features
    assert a.get(img + 1) is None  # other pixels, other entry
    a.path(__import__("coprs").backbones.image_key(img)).write_bytes(b"garbage")
    assert a.get(img) is None  # a corrupt entry is recomputed, not fatal


def test_sample_panel_shows_the_ignored_region(tmp_path):
    from PIL import Image

    from coprs.visualization.overlay import make_sample_panel

    image = np.full((40, 60, 3), 255, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:15, 5:15] = True
    ignore = np.zeros_like(mask)
    ignore[20:35, 30:55] = True
    make_sample_panel(image, mask, "the box", tmp_path / "a.png")
    make_sample_panel(image, mask, "the box", tmp_path / "b.png", ignore=ignore)
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png").convert("RGB")).astype(int)
            for n in "ab")
    grey = (np.abs(b - 185).max(-1) < 8) & (np.abs(a - 185).max(-1) >= 8)  # white, greyed
    assert grey.sum() > 100  # the ignored pixels turned grey, nothing else changed that way


def test_browse_dataset_needs_only_the_files_of_the_split_it_shows(tmp_path):
    """The JSONL config names train.jsonl (training) and val.jsonl (test); with only val.jsonl
    on disk, --split val works: the other split is never read."""
    from coprs.testing.data_fixtures import make_jsonl_fixture

    make_jsonl_fixture(tmp_path / "mine")
    assert not (tmp_path / "mine" / "train.jsonl").exists()
    out = tmp_path / "val.jsonl"
    assert main(["browse-dataset", "configs/coprs/coprs_qwen2.5-vl-7b_sam-vit-h_jsonl.py",
                 "--split", "val", "--dump", str(out), "--cfg-options",
                 f"test_cfg.datasets.0.data_root={tmp_path / 'mine'}",
                 f"train_dataloader.dataset.data_root={tmp_path / 'mine'}"]) == 0
    assert len(out.read_text().splitlines()) == 3  # the fixture's three readable lines
