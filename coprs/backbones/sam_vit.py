"""SAM's ViT image encoder as a frozen vision backbone (keys K for the positional prior)."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from ..registry import VISION_BACKBONES
from ..utils import is_meta_build
from .base import BaseVisionBackbone

__all__ = ["SAM_VIT_PRESETS", "SAMViTBackbone", "build_sam_image_encoder", "load_sam_state"]

#: SAM image-encoder sizes, one table (as segment_anything's build_sam.py). ``tiny`` is ours:
#: a 112 px input with 4 px patches gives a 28 x 28 key grid that resolves small objects on CPU.
SAM_VIT_PRESETS: dict[str, dict] = {
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "tiny": dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=112,
                 patch_size=4, out_chans=32, window_size=7, mlp_ratio=2.0),
}
_COMMON = dict(img_size=1024, patch_size=16, out_chans=256, window_size=14, mlp_ratio=4.0)

# SAM's pixel statistics (0-255 RGB)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def build_sam_image_encoder(arch: str = "vit_h", **overrides) -> nn.Module:
    """An ``ImageEncoderViT`` of a preset size (``overrides`` replace preset values)."""
    from segment_anything.modeling import ImageEncoderViT

    if arch not in SAM_VIT_PRESETS:
        raise ValueError(f"unknown SAM arch {arch!r}; choose one of {sorted(SAM_VIT_PRESETS)}")
    cfg = {**_COMMON, **SAM_VIT_PRESETS[arch], **overrides}
    return ImageEncoderViT(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        out_chans=cfg["out_chans"],
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=cfg["window_size"],
        global_attn_indexes=tuple(cfg["global_attn_indexes"]),
    )


def load_sam_state(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Read the ``prefix``-ed tensors of an official SAM checkpoint (``sam_vit_h_4b8939.pth``
    layout: a plain state dict with ``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*`` keys) with ``weights_only=True``. Keys without any of SAM's prefixes are
    taken as they are (a file holding just that module's state)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint '{path}' not found. Download the official SAM weights "
            "(e.g. sam_vit_h_4b8939.pth) to a local path and set it in the config; coprs never "
            "downloads at run time."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
        from ..utils import torch_load_reason

        raise ValueError(f"cannot read SAM checkpoint '{path}' with torch.load(weights_only=True) "
                         f"({torch_load_reason(exc)}); give the official SAM .pth or a state dict "
                         "of tensors") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    sam_prefixes = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
    if any(k.startswith(sam_prefixes) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


@VISION_BACKBONES.register_module()
class SAMViTBackbone(BaseVisionBackbone):
    """Frozen SAM ViT image encoder; gives B x C x g x g keys for a square padded input.

    Args:
        arch: 'vit_h', 'vit_l', 'vit_b' or 'tiny' (see :data:`SAM_VIT_PRESETS`).
        checkpoint: local path of an official SAM ``.pth`` (or an encoder-only state dict);
            None keeps the random initialisation (tiny models, tests).
        seed: seed for the random initialisation when no checkpoint is given.
        frozen: keep parameters frozen and the module in eval mode (the paper's setting).
        **overrides: preset values to replace (``img_size``, ``patch_size``, ``out_chans``, …).
    """

    def __init__(self, arch: str = "vit_h", checkpoint: str | None = None, seed: int = 0,
                 frozen: bool = True, **overrides) -> None:
        super().__init__()
        self.arch = arch
        self.checkpoint = checkpoint
        cfg = {**_COMMON, **SAM_VIT_PRESETS.get(arch, {}), **overrides}
        self.img_size = int(cfg["img_size"])
        self.out_channels = int(cfg["out_chans"])
        self.grid_size = self.img_size // int(cfg["patch_size"])
        self._overrides = overrides
        if is_meta_build():
            with torch.device("meta"):
                self.encoder = build_sam_image_encoder(arch, **overrides)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.encoder = build_sam_image_encoder(arch, **overrides)
            self._seed = seed
            if checkpoint is not None:
                state = load_sam_state(checkpoint, "image_encoder.")
                try:
                    self.encoder.load_state_dict(state, strict=True)
                except RuntimeError as exc:
                    # torch's first line only says that loading failed; the next says why
                    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
                    why = lines[1] if len(lines) > 1 else lines[0] if lines else ""
                    why = why.split(". ", 1)[0]
                    width = f" with {overrides}" if overrides else ""
                    raise ValueError(
                        f"SAM checkpoint '{checkpoint}' does not match arch {arch!r}{width} "
                        "(check `arch` and the width overrides against the file: vit_h, vit_l, "
                        f"vit_b or tiny): {why}") from exc
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
        self.frozen = frozen
        if frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    @property
    def cache_key(self) -> str:
        """Identifies the features this backbone produces (arch, sizes, weights)."""
        parts = [self.arch, str(sorted(self._overrides.items()))]
        if self.checkpoint is not None:
            p = Path(self.checkpoint)
            st = p.stat()
            parts.append(f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}")
        else:
            parts.append(f"random-seed{getattr(self, '_seed', 0)}")
        return f"sam_{self.arch}_" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalised images → B x C x g x g features (C = ``out_channels``)."""
        if self.frozen:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)
