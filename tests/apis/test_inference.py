import numpy as np
import pytest
import torch
from PIL import Image

from coprs.apis import init_segmentor, segment, segment_batch
from coprs.structures import SegmentationResult

from ..conftest import TINY_CONFIG  # noqa: TID252


def _check(result, shape):
    assert isinstance(result, SegmentationResult)
    assert result.mask.shape == shape and result.mask.dtype == bool
    assert result.heatmap.shape == shape and result.heatmap.dtype == np.float32
    assert 0.0 <= result.heatmap.min() <= result.heatmap.max() <= 1.0
    assert isinstance(result.response, str) and isinstance(result.cot, str)


@pytest.mark.parametrize("shape", [(37, 91, 3), (120, 61, 3), (1, 150, 3), (2000, 3000, 3)])
def test_segment_odd_sizes(tiny_segmentor, shape):
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    _check(segment(tiny_segmentor, img, "the red circle", max_new_tokens=4), shape[:2])


def test_segment_accepts_path_pil_and_array_alike(tiny_segmentor, tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    results = [segment(tiny_segmentor, x, "the cup", max_new_tokens=4)
               for x in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(img), img)]
    for r in results[1:]:
        assert r.response == results[0].response
        assert np.array_equal(r.mask, results[0].mask)
        np.testing.assert_allclose(r.heatmap, results[0].heatmap, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_segment_converts_image_modes(tiny_segmentor, tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    img = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("I;16", "CMYK") else "x.png")
    img.save(path)
    _check(segment(tiny_segmentor, path, "the cup", max_new_tokens=2), (40, 50))


def test_segment_16bit_array_and_grayscale_array(tiny_segmentor):
    a16 = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50)
    _check(segment(tiny_segmentor, a16, "x", max_new_tokens=2), (30, 40))
    _check(segment(tiny_segmentor, np.zeros((30, 40, 1), np.uint8), "x", max_new_tokens=2),
           (30, 40))


def test_bad_inputs_raise_clear_errors(tiny_segmentor, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        segment(tiny_segmentor, tmp_path / "missing.png", "x")
    (tmp_path / "notimage.png").write_text("hello")
    with pytest.raises(ValueError, match="notimage.png"):
        segment(tiny_segmentor, tmp_path / "notimage.png", "x")
    with pytest.raises(ValueError, match="elongated"):
        segment(tiny_segmentor, np.zeros((1, 300, 3), np.uint8), "x")
    with pytest.raises(ValueError, match="instruction is empty"):
        segment(tiny_segmentor, np.zeros((20, 20, 3), np.uint8), "   ")
    with pytest.raises(ValueError, match="shape"):
        segment(tiny_segmentor, np.zeros((20, 20, 2), np.uint8), "x")
    with pytest.raises(ValueError, match="float image"):
        segment(tiny_segmentor, np.full((20, 20, 3), 7.0), "x")
    r = segment(tiny_segmentor, np.zeros((20, 20, 3), np.uint8), "", allow_empty=True,
                max_new_tokens=2)
    _check(r, (20, 20))


def test_malformed_response_is_flagged_and_well_formed_one_is_not(tiny_segmentor):
    img = np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    bad, good = tiny_segmentor.predict_images(
        [img, img], ["x", "x"], responses=["no tags", "<think>the red circle</think><REF_POS>"])
    assert bad.format_ok is False and good.format_ok is True
    assert good.cot == "the red circle"
    assert not np.array_equal(bad.heatmap, good.heatmap)  # the readout steers the prior


def test_segment_teacher_forces_a_given_response(tiny_segmentor):
    img = np.random.default_rng(4).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    given = "<think>the blue square</think><REF_POS>"
    r = segment(tiny_segmentor, img, "x", response=given)
    _check(r, (40, 56))
    assert r.response == given and r.cot == "the blue square" and r.format_ok
    same = tiny_segmentor.predict_images([img], ["x"], responses=[given])[0]
    assert np.array_equal(r.mask, same.mask) and np.array_equal(r.heatmap, same.heatmap)
    other = segment(tiny_segmentor, img, "x", response="<think>the red circle</think><REF_POS>")
    assert not np.array_equal(r.heatmap, other.heatmap)  # the reasoning moves the prior
    with pytest.raises(TypeError, match="response must be a string"):
        segment(tiny_segmentor, img, "x", response=["<think>a</think><REF_POS>"])


def test_checkpoint_round_trip_through_init_segmentor(tmp_path):
    model = init_segmentor(str(TINY_CONFIG), seed=5)
    with torch.no_grad():
        model.prior.w_q.weight.add_(1.0)
        model.policy.model.lm_head.weight.mul_(2.0)
    trainable = {k: v for k, v in model.state_dict().items()
                 if not k.startswith("vision_backbone.")}
    torch.save({"state_dict": trainable, "meta": {"iter": 3}}, tmp_path / "ckpt.pth")
    loaded = init_segmentor(str(TINY_CONFIG), checkpoint=str(tmp_path / "ckpt.pth"), seed=9)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    torch.save({"state_dict": {"prior.nope": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match the model"):
        init_segmentor(str(TINY_CONFIG), checkpoint=str(tmp_path / "bad.pth"))
    # a tensor of another shape (another assembly's head) is the same clear error, not torch's
    reshaped = dict(trainable, **{"prior.w_q.weight": trainable["prior.w_q.weight"][:1]})
    torch.save({"state_dict": reshaped}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shapes \['prior.w_q.weight \(1, "):
        init_segmentor(str(TINY_CONFIG), checkpoint=str(tmp_path / "shape.pth"))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        init_segmentor(str(TINY_CONFIG), checkpoint=str(tmp_path / "absent.pth"))
    # a training work dir stands for the checkpoint its last_checkpoint names, as on the CLI
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(FileNotFoundError, match="without a last_checkpoint"):
        init_segmentor(str(TINY_CONFIG), checkpoint=str(work))
    (work / "last_checkpoint").write_text(str(tmp_path / "ckpt.pth"))
    from_dir = init_segmentor(str(TINY_CONFIG), checkpoint=work, seed=9)
    for k, v in model.state_dict().items():
        assert torch.equal(from_dir.state_dict()[k], v), k


def test_init_segmentor_is_deterministic_given_seed():
    a = init_segmentor(str(TINY_CONFIG), seed=1).prior.w_q.weight
    b = init_segmentor(str(TINY_CONFIG), seed=1).prior.w_q.weight
    c = init_segmentor(str(TINY_CONFIG), seed=2).prior.w_q.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_segment_batch_matches_segment_and_keeps_bad_samples_apart(tiny_segmentor, monkeypatch):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, s, dtype=np.uint8) for s in [(30, 41, 3), (64, 16, 3),
                                                                  (20, 20, 3), (25, 50, 3)]]
    given = "<think>the red circle</think><REF_POS>"
    out = segment_batch(tiny_segmentor, images, ["a", "b", " ", "d"], [None, given, None, None],
                        max_new_tokens=4)
    assert isinstance(out[2], ValueError) and "instruction is empty" in str(out[2])
    for i, response in ((0, None), (1, given), (3, None)):
        alone = segment(tiny_segmentor, images[i], "abcd"[i], response=response,
                        max_new_tokens=4)
        assert out[i].response == alone.response
        assert np.array_equal(out[i].mask, alone.mask)
        np.testing.assert_allclose(out[i].heatmap, alone.heatmap, atol=1e-5)  # padding: rounding
    with pytest.raises(ValueError, match="one of each per sample"):
        segment_batch(tiny_segmentor, images, ["a"])
    # a batched pass that fails is retried sample by sample: only the culprit is lost
    original = type(tiny_segmentor).predict_images

    def fails_on_the_wide_one(self, imgs, *args, **kwargs):
        if any(im.shape[1] == 50 for im in imgs):
            raise RuntimeError("out of memory")
        return original(self, imgs, *args, **kwargs)

    monkeypatch.setattr(type(tiny_segmentor), "predict_images", fails_on_the_wide_one)
    out = segment_batch(tiny_segmentor, [images[0], images[3]], ["a", "d"], max_new_tokens=4)
    assert isinstance(out[1], RuntimeError) and out[0].response == segment(
        tiny_segmentor, images[0], "a", max_new_tokens=4).response
