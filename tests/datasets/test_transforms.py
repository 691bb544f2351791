import numpy as np
import pytest
from PIL import Image

from coprs.datasets.transforms import (
    LoadImage,
    PackReasonSegInputs,
    PolicyView,
    ResizePadVision,
    reasonseg_collate,
)


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    out = LoadImage()({"img_path": str(tmp_path / "rot.jpg")})
    assert out["img"].shape == (40, 20, 3) and out["ori_shape"] == (40, 20)


def test_load_image_records_errors_instead_of_raising(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    out = LoadImage()({"img_path": str(tmp_path / "broken.jpg")})
    assert "broken.jpg" in out["load_error"]
    with pytest.raises(ValueError, match="broken.jpg"):
        LoadImage(skip_errors=False)({"img_path": str(tmp_path / "broken.jpg")})
    out = LoadImage()({"img_path": str(tmp_path / "absent.jpg")})
    assert "absent.jpg" in out["load_error"]


def test_resize_pad_vision_keeps_mask_aligned():
    img = np.zeros((50, 100, 3), np.uint8)
    mask = np.zeros((50, 100), bool)
    mask[10:20, 60:80] = True
    img[mask] = 255
    out = ResizePadVision(size=64)({"img": img, "gt_mask": mask, "ignore_mask": None})
    assert out["vision_img"].shape == (64, 64, 3) and out["valid_hw"] == (32, 64)
    vm = out["vision_gt_mask"]
    assert vm.shape == (64, 64) and not vm[32:].any()  # padding is background
    bright = out["vision_img"][..., 0] > 127
    assert (vm & bright).sum() / vm.sum() > 0.9
    assert "vision_ignore_mask" not in out


@pytest.mark.parametrize("hw, expect", [((840, 840), (840, 840)), ((20, 30), (56, 84)),
                                        ((3000, 4000), (700, 952))])
def test_policy_view_budget(hw, expect):
    out = PolicyView(3136, 705600)({"img": np.zeros((*hw, 3), np.uint8)})
    h, w = out["policy_img"].shape[:2]
    assert (h, w) == expect and h % 28 == 0 and w % 28 == 0
    assert 3136 <= h * w <= 705600


def test_policy_view_matches_qwen_smart_resize():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    for hw in [(840, 840), (20, 30), (3000, 4000), (123, 457), (1, 150)]:
        out = PolicyView(3136, 705600)({"img": np.zeros((*hw, 3), np.uint8)})
        assert out["policy_img"].shape[:2] == smart_resize(*hw, 28, 3136, 705600)


def test_pack_and_collate():
    results = {"img": np.zeros((5, 6, 3), np.uint8), "instruction": "x", "gt_mask": None,
               "sample_id": "a", "unrelated": 1}
    packed = PackReasonSegInputs()(results)
    assert packed["data_samples"]["instruction"] == "x"
    assert "unrelated" not in packed["data_samples"]
    batch = reasonseg_collate([packed, packed])
    assert len(batch["inputs"]) == 2 and batch["data_samples"][1]["sample_id"] == "a"


def test_image_above_the_pixel_limit_is_a_per_sample_error(tmp_path, monkeypatch):
    Image.new("L", (20, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 px: PIL raises above twice that
    out = LoadImage()({"img_path": str(tmp_path / "big.png")})
    assert "big.png" in out["load_error"] and "PIL.Image.MAX_IMAGE_PIXELS" in out["load_error"]
    with pytest.raises(ValueError, match=r"big\.png.*MAX_IMAGE_PIXELS"):
        LoadImage(skip_errors=False)({"img_path": str(tmp_path / "big.png")})
