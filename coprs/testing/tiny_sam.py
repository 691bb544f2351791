"""A tiny SAM (image encoder, prompt encoder, mask decoder) from segment_anything's classes.

Saved with :func:`save_tiny_sam_checkpoint` in the layout of the official checkpoints
(``sam_vit_h_4b8939.pth``: one plain state dict with ``image_encoder.*``, ``prompt_encoder.*``
and ``mask_decoder.*`` keys), so the loaders users run on real SAM files are tested on it.
Random-initialised; deterministic given the seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backbones.sam_vit import SAM_VIT_PRESETS, build_sam_image_encoder
from ..decoders.sam_modules import SAM_DECODER_PRESETS, build_mask_decoder

__all__ = ["build_tiny_sam", "save_tiny_sam_checkpoint"]


def build_tiny_sam(seed: int = 0, **encoder_overrides):
    """A ``segment_anything.modeling.Sam`` with the 'tiny' encoder and decoder presets
    (112 px input, 4 px patches → 28 x 28 embeddings of width 32); ``encoder_overrides`` change
    the encoder preset as ``SAMViTBackbone``'s do (e.g. ``embed_dim=64, out_chans=64``, the CPU
    main job's)."""
    from segment_anything.modeling import PromptEncoder, Sam

    enc = SAM_VIT_PRESETS["tiny"]
    dec = SAM_DECODER_PRESETS["tiny"]
    grid = enc["img_size"] // enc["patch_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=build_sam_image_encoder("tiny", **encoder_overrides),
            prompt_encoder=PromptEncoder(
                embed_dim=dec["transformer_dim"],
                image_embedding_size=(grid, grid),
                input_image_size=(enc["img_size"], enc["img_size"]),
                mask_in_chans=dec["mask_in_chans"],
            ),
            mask_decoder=build_mask_decoder(dec["transformer_dim"], dec["depth"],
                                            dec["mlp_dim"], dec["num_heads"],
                                            dec["iou_head_hidden_dim"]),
        )
    return sam.eval()


def save_tiny_sam_checkpoint(path, seed: int = 0, **encoder_overrides) -> Path:
    """Write the tiny SAM's state dict as an official-layout ``.pth`` file
    (``encoder_overrides``: see :func:`build_tiny_sam`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_tiny_sam(seed, **encoder_overrides).state_dict(), path)
    return path
