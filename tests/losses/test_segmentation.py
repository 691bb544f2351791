"""Hand-checked tests of coprs.losses.segmentation (paper Eq. 8, SPEC §4)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from coprs.losses import SegmentationLoss, bce_prior_loss, dice_loss, focal_loss
from coprs.registry import MODELS


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _bce(x: float, y: float) -> float:
    return _softplus(x) - x * y  # BCE with logits


# logits       gt     valid
#  0   2       1 0    1 0
# -1   3       0 1    1 1
LOGITS = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])  # 1 x 1 x 2 x 2
GT = torch.tensor([[[[1, 0], [0, 1]]]], dtype=torch.bool)
VALID = torch.tensor([[[[1, 0], [1, 1]]]], dtype=torch.bool)
BCE = [_bce(0, 1), _bce(2, 0), _bce(-1, 0), _bce(3, 1)]


def test_bce_by_hand_and_valid_region():
    assert bce_prior_loss(LOGITS, GT).item() == pytest.approx(sum(BCE) / 4, abs=1e-6)
    expected = (BCE[0] + BCE[2] + BCE[3]) / 3
    assert bce_prior_loss(LOGITS, GT, VALID).item() == pytest.approx(expected, abs=1e-6)
    assert bce_prior_loss(LOGITS, GT[:, 0], VALID[:, 0]).item() == pytest.approx(expected, abs=1e-6)


def test_bce_averages_per_image_then_over_batch():
    logits = torch.cat([LOGITS, LOGITS])
    gt = torch.cat([GT, GT])
    one_pixel = torch.tensor([[[[1, 0], [0, 0]]]], dtype=torch.bool)
    valid = torch.cat([one_pixel, torch.ones_like(VALID)])
    # image 0: one valid pixel; image 1: all four; per-image means, then their mean (no pixel mean)
    expected = (BCE[0] + sum(BCE) / 4) / 2
    assert bce_prior_loss(logits, gt, valid).item() == pytest.approx(expected, abs=1e-6)
    # an image with no valid pixel is left out of the batch mean
    valid[0] = False
    assert bce_prior_loss(logits, gt, valid).item() == pytest.approx(sum(BCE) / 4, abs=1e-6)


def test_dice_by_hand():
    zeros = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    gt = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.bool)
    # Σpg = 0.5, Σp = 2, Σg = 1: 1 - (1 + 1) / (3 + 1)
    assert dice_loss(zeros, gt).item() == pytest.approx(0.5)
    valid = torch.tensor([[[1, 1], [1, 0]]], dtype=torch.bool)
    # Σp = 1.5: 1 - (1 + 1) / (2.5 + 1)
    assert dice_loss(zeros, gt, valid).item() == pytest.approx(1 - 2 / 3.5)
    assert dice_loss(zeros, gt, valid, eps=0.0).item() == pytest.approx(1 - 1 / 2.5)


def test_focal_by_hand_and_equal_to_torchvision():
    logits = torch.zeros(1, 1, 1, 2)
    gt = torch.tensor([[[[1, 0]]]])
    # p = 0.5: α·ce·(1-p_t)^γ with ce = log 2, p_t = 0.5; (1-α) for the negative pixel
    expected = (0.25 * math.log(2) * 0.25 + 0.75 * math.log(2) * 0.25) / 2
    assert focal_loss(logits, gt).item() == pytest.approx(expected, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g) * 3
    gt = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).float()
    ref = sigmoid_focal_loss(logits, gt, alpha=0.25, gamma=2.0, reduction="mean")
    assert torch.allclose(focal_loss(logits, gt), ref, atol=1e-6)


@pytest.mark.parametrize("fn", [bce_prior_loss, dice_loss, focal_loss])
def test_padded_region_does_not_change_loss_or_get_grad(fn):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 4, 4, generator=g)
    gt = torch.rand(2, 1, 4, 4, generator=g) > 0.5
    valid = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    valid[..., :3, :2] = True  # image in the top-left, padding bottom/right
    base = fn(logits, gt, valid)
    moved = logits.clone()
    moved[~valid] = torch.tensor([1e4, -1e4]).repeat(int((~valid).sum()) // 2)
    moved.requires_grad_(True)
    out = fn(moved, gt, valid)
    assert out.item() == pytest.approx(base.item(), abs=1e-6)
    out.backward()
    assert torch.isfinite(moved.grad).all() and (moved.grad[~valid] == 0).all()


@pytest.mark.parametrize("fn", [bce_prior_loss, dice_loss, focal_loss])
def test_ground_truth_resized_to_logits_with_nearest(fn):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 4, 4, generator=g)
    gt = torch.rand(2, 4, 4, generator=g) > 0.5
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[:, 3:] = False
    up = lambda m: m.repeat_interleave(4, -2).repeat_interleave(4, -1)  # noqa: E731  4² → 16²
    assert fn(logits, up(gt), up(valid)).item() == pytest.approx(fn(logits, gt, valid).item())


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        dice_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="images"):
        dice_loss(torch.zeros(2, 1, 4, 4), torch.zeros(1, 4, 4))


def test_segmentation_loss_module():
    # registered under MODELS (checked without MODELS.get, whose lazy import of coprs.models
    # would load the whole segmentor)
    assert MODELS.module_dict["SegmentationLoss"] is SegmentationLoss
    module = SegmentationLoss()
    assert (module.lambda_seg, module.lambda_dice, module.lambda_focal, module.lambda_bce) == (
        0.3, 1.5, 0.0, 1.0)
    g = torch.Generator().manual_seed(3)
    prior = torch.randn(2, 1, 4, 4, generator=g).requires_grad_(True)
    mask = torch.randn(2, 1, 4, 4, generator=g).requires_grad_(True)
    gt = torch.rand(2, 1, 16, 16, generator=g) > 0.5  # padded 4x-resolution ground truth
    valid = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    valid[..., 12:, :] = False
    out = module(prior, mask, gt, valid)
    assert set(out) == {"loss_seg", "seg/bce", "seg/dice", "seg/focal"}
    assert [k for k in out if "loss" in k] == ["loss_seg"]
    bce, dice, focal = (bce_prior_loss(prior, gt, valid), dice_loss(mask, gt, valid),
                        focal_loss(mask, gt, valid))
    assert out["loss_seg"].item() == pytest.approx(0.3 * (bce + 1.5 * dice).item(), abs=1e-6)
    assert out["seg/focal"].item() == pytest.approx(focal.item(), abs=1e-6)
    assert not any(out[k].requires_grad for k in ("seg/bce", "seg/dice", "seg/focal"))
    out["loss_seg"].backward()
    assert prior.grad.abs().sum() > 0 and mask.grad.abs().sum() > 0

    # the step-1500 schedule: a hook sets plain float attributes
    module.lambda_dice, module.lambda_focal = 3.0, 10.0
    out = module(prior, mask, gt, valid)
    expected = 0.3 * (bce + 3.0 * dice + 10.0 * focal).item()
    assert out["loss_seg"].item() == pytest.approx(expected, abs=1e-5)


def test_segmentation_loss_without_prior():
    mask = torch.zeros(1, 1, 2, 2)
    gt = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.bool)
    out = SegmentationLoss(lambda_seg=1.0, lambda_dice=1.0)(None, mask, gt)
    assert set(out) == {"loss_seg", "seg/dice", "seg/focal"}
    assert out["loss_seg"].item() == pytest.approx(0.5)


def test_segmentation_loss_with_mask_bce():
    """LISA-style: BCE on the mask logits instead of a prior; logged as seg/mask_bce."""
    g = torch.Generator().manual_seed(5)
    mask = torch.randn(2, 1, 4, 4, generator=g).requires_grad_(True)
    gt = torch.rand(2, 1, 4, 4, generator=g) > 0.5
    out = SegmentationLoss(lambda_seg=1.0, lambda_dice=0.5, lambda_mask_bce=2.0)(None, mask, gt)
    assert set(out) == {"loss_seg", "seg/mask_bce", "seg/dice", "seg/focal"}
    bce, dice = bce_prior_loss(mask, gt), dice_loss(mask, gt)
    assert out["seg/mask_bce"].item() == pytest.approx(bce.item(), abs=1e-6)
    assert out["loss_seg"].item() == pytest.approx((2.0 * bce + 0.5 * dice).item(), abs=1e-6)
    out["loss_seg"].backward()
    assert mask.grad.abs().sum() > 0


def test_segmentation_loss_with_prior_dice():
    """A Dice term on the prior (for small targets, where BCE alone keeps it below 0)."""
    g = torch.Generator().manual_seed(7)
    prior = torch.randn(2, 1, 4, 4, generator=g).requires_grad_(True)
    mask = torch.randn(2, 1, 4, 4, generator=g)
    gt = torch.rand(2, 1, 4, 4, generator=g) > 0.5
    base = SegmentationLoss(lambda_seg=1.0)(prior, mask, gt)
    out = SegmentationLoss(lambda_seg=1.0, lambda_prior_dice=2.0)(prior, mask, gt)
    assert "seg/prior_dice" in out and "seg/prior_dice" not in base
    assert out["seg/prior_dice"].item() == pytest.approx(dice_loss(prior, gt).item(), abs=1e-6)
    extra = out["loss_seg"] - base["loss_seg"]
    assert extra.item() == pytest.approx(2.0 * dice_loss(prior, gt).item(), abs=1e-6)
    out["loss_seg"].backward()
    assert prior.grad.abs().sum() > 0
