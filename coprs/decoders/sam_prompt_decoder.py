"""SAM's prompt encoder + mask decoder, prompted by sparse embeddings, boxes, points or a mask."""

from __future__ import annotations

import torch
from segment_anything.modeling import PromptEncoder

from ..backbones.sam_vit import load_sam_state
from ..registry import DECODERS
from ..structures import PriorOutput
from ..utils import is_meta_build
from .base import BaseDecoder
from .sam_modules import build_mask_decoder, decoder_preset, key_projection

__all__ = ["SAMPromptDecoder"]


@DECODERS.register_module()
class SAMPromptDecoder(BaseDecoder):
    """SAM's ``PromptEncoder`` + two-way-transformer ``MaskDecoder`` (the LISA and Seg-Zero
    decoder).

    Prompts come from the prior, whichever it fills in (all may be combined):

    * ``sparse`` B x N x C: prompt embeddings used as they are (LISA's ``<SEG>`` embedding);
    * ``points`` B x P x 2: foreground points in vision-frame pixels (label 1);
    * ``boxes`` B x 4: one box (x1, y1, x2, y2) in vision-frame pixels;
    * ``dense`` B x 1 x 4h x 4w: mask-prompt logits, through SAM's mask downscaler (without
      one, SAM's learned "no mask" embedding is used).

    Rows that a coordinate prior marks invalid (``valid`` False while the prior gives boxes or
    points: nothing usable was written) get ``empty_logit`` everywhere: an empty mask, no
    gradient. Rows of an embedding prior are decoded whatever ``valid`` says (the embedding of
    an appended token is still a prompt).

    Args:
        preset: 'sam' (SAM's widths: 4,058,340-parameter mask decoder, 6,220-parameter prompt
            encoder) or 'tiny' (see :data:`SAM_DECODER_PRESETS`).
        key_in_dim: channels of the image features (filled in by the segmentor); a 1x1
            projection is added only when it differs from the transformer width.
        img_size: side S of the vision frame the coordinates refer to (filled in by the
            segmentor from the backbone: 1024 for SAM, 112 for the tiny one).
        sam_checkpoint: optional local SAM ``.pth`` whose ``prompt_encoder.*`` and
            ``mask_decoder.*`` weights initialise this decoder.
        multimask_output: SAM's three-mask output; the first mask is used either way (False:
            SAM's single-mask token, as LISA and Seg-Zero).
        empty_logit: logit of every pixel of an invalid coordinate prompt.
        frozen: keep every parameter frozen (Seg-Zero keeps SAM as it is and trains the policy
            only).
        **overrides: preset values to replace.
    """

    def __init__(self, preset: str = "sam", key_in_dim: int | None = None, img_size: int = 1024,
                 sam_checkpoint: str | None = None, multimask_output: bool = False,
                 empty_logit: float = -20.0, frozen: bool = False, **overrides) -> None:
        super().__init__()
        cfg = decoder_preset(preset, overrides)
        dim = cfg["transformer_dim"]
        self.image_proj = key_projection(key_in_dim, dim)
        # image_embedding_size is nominal (SAM's 16 px patches); the real grid is read from the
        # keys at every forward
        self.prompt_encoder = PromptEncoder(embed_dim=dim,
                                            image_embedding_size=(img_size // 16, img_size // 16),
                                            input_image_size=(img_size, img_size),
                                            mask_in_chans=cfg["mask_in_chans"])
        self.mask_decoder = build_mask_decoder(dim, cfg["depth"], cfg["mlp_dim"],
                                               cfg["num_heads"], cfg["iou_head_hidden_dim"])
        self.transformer_dim, self.img_size = dim, img_size
        self.multimask_output, self.empty_logit = multimask_output, float(empty_logit)
        if sam_checkpoint is not None and not is_meta_build():
            self.load_sam(sam_checkpoint)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)

    def load_sam(self, path: str) -> None:
        """Initialise from an official SAM checkpoint (prompt encoder and mask decoder)."""
        self.prompt_encoder.load_state_dict(load_sam_state(path, "prompt_encoder."))
        self.mask_decoder.load_state_dict(load_sam_state(path, "mask_decoder."))

    def embed_prompts(self, prior: PriorOutput, b: int, hw: tuple[int, int], like: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B x N x C) and dense (B x C x h x w) prompt embeddings of a prior."""
        pe = self.prompt_encoder
        sparse = [like.new_zeros(b, 0, self.transformer_dim)]
        if prior.sparse is not None:
            sparse.append(prior.sparse.to(like.dtype))
        if prior.points is not None and prior.points.shape[1] > 0:
            coords = prior.points.float()  # B x P x 2
            labels = torch.ones(coords.shape[:2], device=coords.device)
            sparse.append(pe._embed_points(coords, labels, pad=prior.boxes is None).to(like.dtype))
        if prior.boxes is not None:
            sparse.append(pe._embed_boxes(prior.boxes.float()).to(like.dtype))  # B x 2 x C
        if prior.dense is not None:
            dense = pe.mask_downscaling(prior.dense.to(like.dtype))  # B x C x h x w
        else:
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, *hw).to(like.dtype)
        return torch.cat(sparse, dim=1), dense

    def forward(self, image_keys: torch.Tensor, prior: PriorOutput) -> dict[str, torch.Tensor]:
        """Args: image_keys B x C' x h x w; a prior for B prompts.

        Returns:
            ``{'mask_logits': B x 1 x 4h x 4w, 'iou_pred': B x 1}``.
        """
        src = self.image_proj(image_keys)  # B x C x h x w
        b, _, h, w = src.shape
        sparse, dense = self.embed_prompts(prior, b, (h, w), src)
        image_pe = self.prompt_encoder.pe_layer((h, w)).unsqueeze(0).to(src.dtype)  # 1 x C x h x w
        masks, iou = self.mask_decoder(src, image_pe, sparse, dense,
                                       multimask_output=self.multimask_output)
        masks, iou = masks[:, :1], iou[:, :1]  # B x 1 x 4h x 4w, B x 1
        coordinates = prior.boxes is not None or prior.points is not None
        if coordinates and prior.valid and not all(prior.valid):
            keep = torch.tensor(prior.valid, device=masks.device).view(-1, 1, 1, 1)
            masks = torch.where(keep, masks, masks.new_full((), self.empty_logit))
        return {"mask_logits": masks, "iou_pred": iou}
