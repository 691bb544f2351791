"""CoPRS' supervised segmentation objective L_SEG (paper Eq. 8, SPEC §4).

``L_SEG = λ_bce · BCE(H_prior, M_gt) + λ_d · Dice(M̂, M_gt) + λ_f · Focal(M̂, M_gt)``, scaled by
``λ_SEG`` when added to the GRPO loss (plus an optional ``λ_mbce · BCE(M̂, M_gt)`` on the mask,
LISA's loss, for paradigms without a dense prior). Every term is computed only over the valid pixels (the
original image region of the 1024² padded input) and averaged per image, then over the batch.

Shapes: logits are B x 1 x H x W (or B x H x W); ground truth and valid masks are B x 1 x H' x W'
or B x H' x W', and are resized to the logits' H x W with ``nearest-exact`` when H' x W' differs,
so a caller may pass the 1024² padded mask for 256² logits. Losses are computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..registry import MODELS

__all__ = ["bce_prior_loss", "dice_loss", "focal_loss", "SegmentationLoss"]


def _squeeze_channel(x: Tensor, what: str) -> Tensor:
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 3:
        return x
    raise ValueError(f"{what} must be B x 1 x H x W or B x H x W, got shape {tuple(x.shape)}")


def _prepare(logits: Tensor, gt: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, gt and valid as float32 / float32 / bool B x H x W at the logits' size."""
    logits = _squeeze_channel(logits, "logits").float()
    size = tuple(logits.shape[-2:])

    def fit(mask: Tensor, what: str) -> Tensor:
        mask = _squeeze_channel(mask, what).to(logits.device)
        if mask.shape[0] != logits.shape[0]:
            raise ValueError(f"{what} has {mask.shape[0]} images, logits have {logits.shape[0]}")
        if tuple(mask.shape[-2:]) != size:
            mask = F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")[:, 0]
        return mask

    gt = fit(gt, "gt").float()
    if valid is None:
        return logits, gt, torch.ones_like(logits, dtype=torch.bool)
    return logits, gt, fit(valid, "valid") > 0.5


def _per_image_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    """B x H x W → mean over valid pixels per image, then over the images that have any."""
    valid_per_image = valid.flatten(1).sum(1)  # B
    per_image = per_pixel.masked_fill(~valid, 0).flatten(1).sum(1) / valid_per_image.clamp_min(1)
    has_pixels = valid_per_image > 0
    return per_image.masked_fill(~has_pixels, 0).sum() / has_pixels.sum().clamp_min(1)


def bce_prior_loss(prior_logits: Tensor, gt: Tensor, valid: Tensor | None = None) -> Tensor:
    """Binary cross-entropy (with logits) of the positional prior against the ground truth.

    Mean over the valid pixels of each image, then mean over the images (images without any
    valid pixel are left out; an all-invalid batch gives 0).

    Args:
        prior_logits: B x 1 x H x W prior logits (``H_prior`` at 256²).
        gt: B x 1 x H' x W' or B x H' x W' ground truth (bool or values in [0, 1]).
        valid: like ``gt``, bool; pixels outside (padding) don't count. None: all count.

    Returns:
        Tensor: scalar.
    """
    logits, gt, valid = _prepare(prior_logits, gt, valid)
    per_pixel = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")  # B x H x W
    return _per_image_mean(per_pixel, valid)


def dice_loss(mask_logits: Tensor, gt: Tensor, valid: Tensor | None = None, eps: float = 1.0
              ) -> Tensor:
    """Soft Dice loss ``1 - (2Σpg + eps) / (Σp + Σg + eps)`` with ``p = sigmoid(logits)``.

    Sums run over the valid pixels of each image; mean over the images (images without any valid
    pixel are left out).

    Args:
        mask_logits: B x 1 x H x W mask logits (``M̂`` at 256²).
        gt: B x 1 x H' x W' or B x H' x W' ground truth.
        valid: like ``gt``, bool; None: all pixels count.
        eps: smoothing added to numerator and denominator (with 1.0, an image whose ground truth
            is empty and whose probabilities are near 0 gets a loss near 0).

    Returns:
        Tensor: scalar.
    """
    logits, gt, valid = _prepare(mask_logits, gt, valid)
    p = logits.sigmoid().masked_fill(~valid, 0).flatten(1)  # B x HW
    g = gt.masked_fill(~valid, 0).flatten(1)
    per_image = 1 - (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)  # B
    has_pixels = valid.flatten(1).any(1)
    return per_image.masked_fill(~has_pixels, 0).sum() / has_pixels.sum().clamp_min(1)


def focal_loss(mask_logits: Tensor, gt: Tensor, valid: Tensor | None = None, alpha: float = 0.25,
               gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017) via ``torchvision.ops.sigmoid_focal_loss``.

    Per-pixel loss (``reduction='none'``), mean over the valid pixels of each image, then mean
    over the images (images without any valid pixel are left out). On a fully valid batch this
    equals torchvision's ``reduction='mean'``.

    Args:
        mask_logits: B x 1 x H x W mask logits.
        gt: B x 1 x H' x W' or B x H' x W' ground truth.
        valid: like ``gt``, bool; None: all pixels count.
        alpha: weight of the positive class (negative: no weighting).
        gamma: focusing exponent.

    Returns:
        Tensor: scalar.
    """
    from torchvision.ops import sigmoid_focal_loss

    logits, gt, valid = _prepare(mask_logits, gt, valid)
    per_pixel = sigmoid_focal_loss(logits, gt, alpha=alpha, gamma=gamma, reduction="none")
    return _per_image_mean(per_pixel, valid)


@MODELS.register_module()
class SegmentationLoss(nn.Module):
    """``L_SEG`` of CoPRS, weighted by ``λ_SEG``, as an mmengine loss dict.

    ``loss_seg = lambda_seg · (lambda_bce · BCE(prior) + lambda_mask_bce · BCE(mask)
    + lambda_dice · Dice(mask) + lambda_focal · Focal(mask))``. The unweighted parts are returned
    as ``seg/bce``, ``seg/mask_bce`` (only when ``lambda_mask_bce`` is not 0), ``seg/dice`` and
    ``seg/focal`` (detached; their names avoid "loss", so mmengine logs but does not sum them).

    The weights are plain float attributes: a hook may change them during training (CoPRS:
    ``lambda_dice`` 1.5 → 3.0 and ``lambda_focal`` 0 → 10 at step 1500). While ``lambda_focal`` is
    0, the focal term is computed for logging only, outside the graph.

    Args:
        lambda_seg: λ_SEG, the weight of L_SEG in the total objective.
        lambda_dice: λ_d.
        lambda_focal: λ_f.
        lambda_bce: weight of the prior BCE (1 in the paper).
        dice_eps: smoothing of the Dice loss.
        focal_alpha: α of the focal loss.
        focal_gamma: γ of the focal loss.
        lambda_mask_bce: weight of a BCE on the mask logits (0 in CoPRS; LISA: 2.0 with
            ``lambda_dice=0.5``, ``lambda_seg=1``), for paradigms whose only dense output is the
            mask.
        lambda_prior_dice: weight of a Dice term on the prior heatmap (0 in the paper). When
            the target covers a few percent of the image, BCE alone leaves the prior below 0
            everywhere; the tiny synthetic world (targets ~2% of the image) needs it.
    """

    def __init__(self, lambda_seg: float = 0.3, lambda_dice: float = 1.5, lambda_focal: float = 0.0,
                 lambda_bce: float = 1.0, dice_eps: float = 1.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, lambda_mask_bce: float = 0.0,
                 lambda_prior_dice: float = 0.0) -> None:
        super().__init__()
        self.lambda_prior_dice = float(lambda_prior_dice)
        self.lambda_seg, self.lambda_bce = float(lambda_seg), float(lambda_bce)
        self.lambda_mask_bce = float(lambda_mask_bce)
        self.lambda_dice, self.lambda_focal = float(lambda_dice), float(lambda_focal)
        self.dice_eps, self.focal_alpha, self.focal_gamma = dice_eps, focal_alpha, focal_gamma

    def forward(self, prior_logits: Tensor | None, mask_logits: Tensor, gt: Tensor,
                valid: Tensor | None = None) -> dict[str, Tensor]:
        """Compute the loss dict.

        Args:
            prior_logits: B x 1 x H x W positional-prior logits, or None for paradigms without a
                dense prior (the BCE term and ``seg/bce`` are then left out).
            mask_logits: B x 1 x H x W mask logits.
            gt: B x 1 x H' x W' or B x H' x W' ground truth; resized (nearest-exact) to each
                logits' size when it differs.
            valid: like ``gt``, bool (the unpadded image region); None: all pixels count.

        Returns:
            dict: ``loss_seg`` (scalar with grad) and the detached ``seg/bce``, ``seg/dice``,
            ``seg/focal``.
        """
        dice = dice_loss(mask_logits, gt, valid, eps=self.dice_eps)
        total = self.lambda_dice * dice
        if self.lambda_focal != 0:
            focal = focal_loss(mask_logits, gt, valid, self.focal_alpha, self.focal_gamma)
            total = total + self.lambda_focal * focal
        else:
            with torch.no_grad():
                focal = focal_loss(mask_logits, gt, valid, self.focal_alpha, self.focal_gamma)
        out: dict[str, Tensor] = {}
        if self.lambda_mask_bce != 0:
            mask_bce = bce_prior_loss(mask_logits, gt, valid)
            total = total + self.lambda_mask_bce * mask_bce
            out["seg/mask_bce"] = mask_bce.detach()
        if prior_logits is not None:
            bce = bce_prior_loss(prior_logits, gt, valid)
            total = total + self.lambda_bce * bce
            out["seg/bce"] = bce.detach()
            if self.lambda_prior_dice != 0:
                prior_dice = dice_loss(prior_logits, gt, valid, eps=self.dice_eps)
                total = total + self.lambda_prior_dice * prior_dice
                out["seg/prior_dice"] = prior_dice.detach()
        out["seg/dice"] = dice.detach()
        out["seg/focal"] = focal.detach()
        return {"loss_seg": self.lambda_seg * total, **out}

    def extra_repr(self) -> str:
        return (f"lambda_seg={self.lambda_seg}, lambda_bce={self.lambda_bce}, "
                f"lambda_dice={self.lambda_dice}, lambda_focal={self.lambda_focal}, "
                f"lambda_mask_bce={self.lambda_mask_bce}, "
                f"lambda_prior_dice={self.lambda_prior_dice}")
