"""SAM decoder building blocks, batched per image, shared by the decoders."""

from __future__ import annotations

import torch
import torch.nn as nn
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d

__all__ = ["SAM_DECODER_PRESETS", "BatchedMaskDecoder", "build_mask_decoder",
           "build_mask_downscaler", "decoder_preset", "key_projection"]

#: decoder sizes, one table. 'sam' is SAM's own (4,058,340 parameters); 'tiny' is for CPU tests.
SAM_DECODER_PRESETS: dict[str, dict] = {
    "sam": dict(transformer_dim=256, depth=2, mlp_dim=2048, num_heads=8, iou_head_hidden_dim=256,
                mask_in_chans=16),
    "tiny": dict(transformer_dim=32, depth=2, mlp_dim=64, num_heads=2, iou_head_hidden_dim=32,
                 mask_in_chans=16),
}


class BatchedMaskDecoder(MaskDecoder):
    """SAM's ``MaskDecoder`` taking one image embedding per prompt.

    SAM repeats a single image embedding for every prompt; here ``image_embeddings`` may already
    hold one embedding per prompt (B x C x h x w with B prompts), which is what a batch of
    (image, instruction) pairs needs. Parameter names equal SAM's, so SAM weights load.
    """

    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings,
                      dense_prompt_embeddings):
        """Args: image_embeddings B x C x h x w (or 1 x …), image_pe 1 x C x h x w,
        sparse B x N x C, dense B x C x h x w. Returns masks B x M x 4h x 4w, iou B x M."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        n = sparse_prompt_embeddings.size(0)
        output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)  # B x (1+M+N) x C
        src = image_embeddings if image_embeddings.shape[0] == n else \
            torch.repeat_interleave(image_embeddings, n, dim=0)
        src = src + dense_prompt_embeddings
        pos_src = image_pe.expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:(1 + self.num_mask_tokens), :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)  # B x C/8 x 4h x 4w
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # B x M x C/8
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


def build_mask_decoder(transformer_dim: int, depth: int, mlp_dim: int, num_heads: int,
                       iou_head_hidden_dim: int, num_multimask_outputs: int = 3
                       ) -> BatchedMaskDecoder:
    """SAM's two-way-transformer mask decoder with the given widths."""
    return BatchedMaskDecoder(
        transformer_dim=transformer_dim,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=transformer_dim,
                                      mlp_dim=mlp_dim, num_heads=num_heads),
        num_multimask_outputs=num_multimask_outputs,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )


def build_mask_downscaler(embed_dim: int, mask_in_chans: int = 16) -> nn.Sequential:
    """Three conv blocks, 4h x 4w x 1 → h x w x embed_dim (SAM's mask-prompt downscaler)."""
    return nn.Sequential(
        nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
        LayerNorm2d(mask_in_chans // 4),
        nn.GELU(),
        nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
        LayerNorm2d(mask_in_chans),
        nn.GELU(),
        nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
    )


def decoder_preset(preset: str, overrides: dict) -> dict:
    """The widths of a :data:`SAM_DECODER_PRESETS` entry with ``overrides`` replacing values."""
    if preset not in SAM_DECODER_PRESETS:
        raise ValueError(f"unknown decoder preset {preset!r}; use {sorted(SAM_DECODER_PRESETS)}")
    return dict(SAM_DECODER_PRESETS[preset], **overrides)


def key_projection(key_in_dim: int | None, dim: int) -> nn.Module:
    """Backbone features → the decoder's width: identity when they match (or are unknown), else
    a 1x1 conv."""
    return (nn.Identity() if key_in_dim in (None, dim)
            else nn.Conv2d(key_in_dim, dim, kernel_size=1))
