"""CoPRS' lightweight prior decoder (paper Eq. 3)."""

from __future__ import annotations

import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

from ..backbones.sam_vit import load_sam_state
from ..registry import DECODERS
from ..structures import PriorOutput
from ..utils import is_meta_build
from .base import BaseDecoder
from .sam_modules import (
    build_mask_decoder,
    build_mask_downscaler,
    decoder_preset,
    key_projection,
)

__all__ = ["PriorDecoder"]


@DECODERS.register_module()
class PriorDecoder(BaseDecoder):
    """Three conv blocks resample the dense prior to a C x h x w embedding; SAM's two-way
    transformer then attends between image features and that embedding, and the upscaling +
    hypernetwork head gives mask logits at 4h x 4w.

    Args:
        preset: 'sam' (SAM's widths, 4.06M-parameter mask decoder) or 'tiny'.
        key_in_dim: channels of the image features (filled in by the segmentor); a 1x1
            projection is added only when it differs from the transformer width.
        sam_checkpoint: optional local SAM ``.pth`` whose ``mask_decoder.*`` and
            ``prompt_encoder.mask_downscaling.*`` / ``pe_layer`` weights initialise this decoder.
        **overrides: preset values to replace.
    """

    def __init__(self, preset: str = "sam", key_in_dim: int | None = None,
                 sam_checkpoint: str | None = None, **overrides) -> None:
        super().__init__()
        cfg = decoder_preset(preset, overrides)
        dim = cfg["transformer_dim"]
        self.image_proj = key_projection(key_in_dim, dim)
        self.downscaler = build_mask_downscaler(dim, cfg["mask_in_chans"])
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.mask_decoder = build_mask_decoder(dim, cfg["depth"], cfg["mlp_dim"],
                                               cfg["num_heads"], cfg["iou_head_hidden_dim"])
        self.transformer_dim = dim
        if sam_checkpoint is not None and not is_meta_build():
            self.load_sam(sam_checkpoint)

    def load_sam(self, path: str) -> None:
        """Initialise from an official SAM checkpoint (mask decoder, mask downscaler, PE)."""
        self.mask_decoder.load_state_dict(load_sam_state(path, "mask_decoder."))
        pe = load_sam_state(path, "prompt_encoder.")
        self.downscaler.load_state_dict(
            {k[len("mask_downscaling."):]: v for k, v in pe.items()
             if k.startswith("mask_downscaling.")})
        self.pe_layer.load_state_dict({k[len("pe_layer."):]: v for k, v in pe.items()
                                       if k.startswith("pe_layer.")})

    def forward(self, image_keys: torch.Tensor, prior: PriorOutput) -> dict[str, torch.Tensor]:
        src = self.image_proj(image_keys)  # B x C x h x w
        b, _, h, w = src.shape
        dense = self.downscaler(prior.dense.to(src.dtype))  # B x C x h x w
        sparse = src.new_zeros(b, 0, self.transformer_dim)  # no sparse prompts
        image_pe = self.pe_layer((h, w)).unsqueeze(0).to(src.dtype)  # 1 x C x h x w
        masks, iou = self.mask_decoder(src, image_pe, sparse, dense, multimask_output=False)
        return {"mask_logits": masks, "iou_pred": iou}
