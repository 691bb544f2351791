"""TimmBackbone: the backbone contract, local checkpoints, and a segmentor built from a config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

TimmBackbone = pytest.importorskip(
    "coprs_timm", reason="coprs-timm is not installed: pip install -e plugins/coprs-timm"
).TimmBackbone

REPO = Path(__file__).resolve().parents[3]
TINY_CONFIG = REPO / "configs" / "coprs" / "coprs_tiny_shapes_cpu.py"
TINY = dict(img_size=112, out_channels=32, grid_size=28)  # the tiny CoPRS assembly's sizes


def test_registered_through_the_entry_point():
    from coprs.plugins import origin_of, plugins
    from coprs.registry import VISION_BACKBONES

    assert VISION_BACKBONES.get("TimmBackbone") is TimmBackbone
    assert origin_of("vision_backbones", "TimmBackbone").startswith("coprs-timm ")
    (info,) = [p for p in plugins() if p.name == "coprs-timm"]
    assert info.status == "loaded" and info.components == [("vision_backbones", "TimmBackbone")]


@pytest.mark.parametrize("model_name, features", [
    ("test_vit", "features_only"), ("test_vit", "forward_features"),
    ("test_convnext", "features_only"), ("test_convnext", "forward_features"),
])
def test_contract_shapes_and_frozen(model_name, features):
    bb = TimmBackbone(model_name, features=features, **TINY)
    x, valid = bb.preprocess([np.zeros((30, 40, 3), np.uint8), np.zeros((112, 56, 3), np.uint8)])
    assert x.shape == (2, 3, 112, 112) and valid == [(84, 112), (112, 56)]
    assert bb.valid_hw((30, 40)) == (84, 112)
    keys = bb(x)
    assert keys.shape == (2, 32, 28, 28) and torch.isfinite(keys).all()
    assert bb.out_channels == 32 and bb.grid_size == 28 and bb.img_size == 112
    assert bb.pixel_mean.shape == (3, 1, 1) and bb.frozen
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.body.training and not bb.neck.training


def test_out_channels_none_keeps_the_models_channels_and_native_grid():
    bb = TimmBackbone("test_convnext", img_size=112, out_channels=None, grid_size=28)
    assert bb.out_channels == 64  # test_convnext's last stage
    assert bb(torch.zeros(1, 3, 112, 112)).shape == (1, 64, 28, 28)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_round_trip(tmp_path, suffix):
    import timm

    torch.manual_seed(3)
    ref = timm.create_model("test_convnext", pretrained=False)  # with its classifier head
    path = tmp_path / f"test_convnext{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": ref.state_dict()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    bb = TimmBackbone("test_convnext", checkpoint=str(path), seed=123, **TINY)
    body = bb.body.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("head.fc."):
            assert torch.equal(body[k], v), k
    other = TimmBackbone("test_convnext", seed=123, **TINY)
    assert bb.cache_key != other.cache_key
    same = TimmBackbone("test_convnext", checkpoint=str(path), seed=123, **TINY)
    assert bb.cache_key == same.cache_key  # stable: the neck seed and the file name it


def test_checkpoint_errors_name_the_file(tmp_path):
    import timm

    with pytest.raises(FileNotFoundError, match="never downloads"):
        TimmBackbone("test_convnext", checkpoint=str(tmp_path / "nope.pth"), **TINY)
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="vit.pth.*test_convnext"):
        TimmBackbone("test_convnext", checkpoint=str(path), **TINY)
    with pytest.raises(ValueError, match="never downloads"):
        TimmBackbone("test_convnext", model_kwargs=dict(pretrained=True), **TINY)
    with pytest.raises(ValueError, match="no model"):
        TimmBackbone("no_such_timm_model", **TINY)


def test_meta_build_reads_no_weights(tmp_path):
    from coprs.utils import meta_build

    with meta_build():
        bb = TimmBackbone("test_vit", checkpoint=str(tmp_path / "absent.pth"), **TINY)
    assert all(p.is_meta for p in bb.parameters())


def test_segmentor_predicts_with_timm_backbone_from_config(tmp_path):
    from coprs.apis import init_segmentor

    cfg = tmp_path / "coprs_tiny_timm-convnext_shapes_cpu.py"
    cfg.write_text(
        f"_base_ = [{str(TINY_CONFIG)!r}]\n"
        "model = dict(\n"
        "    feature_cache=None,\n"
        "    vision_backbone=dict(_delete_=True, type='TimmBackbone', model_name='test_convnext',\n"
        "                         img_size=112, out_channels=32, grid_size=28),\n"
        ")\n")
    model = init_segmentor(str(cfg))
    assert isinstance(model.vision_backbone, TimmBackbone)
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    (res,) = model([img], [{"instruction": "x", "response": "<think>a</think><REF_POS>"}],
                   mode="predict")
    assert res.mask.shape == (30, 40) and res.heatmap.shape == (30, 40) and res.format_ok
    logits = model([img], [{"instruction": "x"}], mode="tensor")
    assert logits.shape == (1, 1, 112, 112)
