"""CoPRS' heatmap positional prior (paper Eq. 2, Algorithm 1)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import PRIORS
from ..structures import PolicyOutput, PriorOutput
from .base import BasePrior

__all__ = ["HeatmapPrior"]


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


@PRIORS.register_module()
class HeatmapPrior(BasePrior):
    """Concentration query over image keys → multi-head scores → conv fuse → heatmap logits.

    ``Q = F_head(e_conc)``, ``K = MLP(features)``; for each head i,
    ``S_i(u, v) = (Q W_i^Q) · (K(u, v) W_i^K) / sqrt(d_h)``; ``H_prior = F_fuse([S_i])`` with two
    stacked 3x3 convs (n_head → n_head → 1). The prior is upsampled ×4 (SAM's dense-prompt
    resolution: 256² for a 64² grid) for the decoder and the BCE loss.

    Args:
        query_dim: width of ``e_conc`` (the policy's hidden size; filled in by the segmentor).
        key_in_dim: channels of the backbone features (filled in by the segmentor).
        d_q: width of the concentration query Q.
        d_k: width of the keys K.
        attn_dim: n_head · d_h, the width the per-head projections map to.
        num_heads: n_head.
        upsample: factor from the key grid to the dense-prompt resolution.
        coord_channels: append normalised (x, y) coordinates to the features before the key MLP,
            so keys carry position explicitly (useful when the backbone is small or untrained;
            off by default, as in the paper).
        key_convs: number of trainable 3x3 conv blocks (GELU) applied to the features before the
            key MLP, giving each key spatial context (an object's shape, not just its colour).
            0 (the paper): the per-pixel MLP alone, over a pretrained backbone's features. The
            tiny assembly's random frozen encoder needs them.
        position_grid: side ``g`` of a coarse *position map* read from the query: a linear map
            ``Q -> g x g`` logits, bilinearly resized to the key grid and given to ``F_fuse`` as
            one more channel next to the ``n_head`` scores. It lets the query say *where* ("in
            the lower left") directly, not only through keys that must learn to carry position;
            the scores still say *what*. 0 (the paper): off. The tiny CPU leaf uses 8.
    """

    special_token = "<REF_POS>"
    prompt_template = "coprs"

    def __init__(self, query_dim: int, key_in_dim: int, d_q: int = 256, d_k: int = 256,
                 attn_dim: int = 128, num_heads: int = 8, upsample: int = 4,
                 coord_channels: bool = False, key_convs: int = 0,
                 position_grid: int = 0) -> None:
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim {attn_dim} must be divisible by num_heads {num_heads}")
        if position_grid < 0:
            raise ValueError(f"position_grid must be >= 0 (0: no position map), got "
                             f"{position_grid}")
        self.num_heads, self.head_dim, self.upsample = num_heads, attn_dim // num_heads, upsample
        self.query_head = _mlp(query_dim, d_q, d_q)  # F_head
        self.coord_channels = coord_channels
        in_dim = key_in_dim + 2 * coord_channels
        convs = []
        for _ in range(key_convs):
            convs += [nn.Conv2d(in_dim, d_k, 3, padding=1), nn.GELU()]
            in_dim = d_k
        self.key_convs = nn.Sequential(*convs)  # identity when key_convs == 0
        self.key_mlp = _mlp(in_dim, d_k, d_k)  # per-pixel MLP
        self.w_q = nn.Linear(d_q, attn_dim, bias=False)  # [W_1^Q … W_n^Q]
        self.w_k = nn.Linear(d_k, attn_dim, bias=False)  # [W_1^K … W_n^K]
        self.position_grid = position_grid
        # Q -> g x g position logits (absent when position_grid is 0: the paper's parameters)
        self.position_head = nn.Linear(d_q, position_grid ** 2) if position_grid else None
        self.fuse = nn.Sequential(  # F_fuse
            nn.Conv2d(num_heads + bool(position_grid), num_heads, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(num_heads, 1, 3, padding=1),
        )

    def scores(self, e_conc: torch.Tensor, image_keys: torch.Tensor) -> torch.Tensor:
        """Per-head scaled dot products.

        Args:
            e_conc: B x D concentration-token hidden states.
            image_keys: B x C x h x w backbone features.

        Returns:
            B x n_head x h x w scores S_i.
        """
        b, _, h, w = image_keys.shape
        if self.coord_channels:
            ys = torch.linspace(-1, 1, h, device=image_keys.device, dtype=image_keys.dtype)
            xs = torch.linspace(-1, 1, w, device=image_keys.device, dtype=image_keys.dtype)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # 2 x h x w
            image_keys = torch.cat([image_keys, grid.expand(b, -1, -1, -1)], dim=1)
        image_keys = self.key_convs(image_keys)
        q = self.w_q(self.query_head(e_conc.to(self.w_q.weight.dtype)))  # B x A
        q = q.view(b, self.num_heads, self.head_dim)  # B x n x d_h
        k = self.w_k(self.key_mlp(image_keys.flatten(2).transpose(1, 2)))  # B x hw x A
        k = k.view(b, h * w, self.num_heads, self.head_dim)  # B x hw x n x d_h
        s = torch.einsum("bnd,bpnd->bnp", q, k) / math.sqrt(self.head_dim)  # B x n x hw
        return s.view(b, self.num_heads, h, w)

    def position_map(self, e_conc: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """B x 1 x h x w position logits read from the query (``position_grid`` > 0)."""
        g = self.position_grid
        # F_head again rather than sharing scores()'s output: one shared pass sums the two
        # gradients in another float order, and the CPU main job then no longer reproduces its
        # committed checkpoint (docs/benchmarks.md, Paradigms); the MLP is 128 wide
        pos = self.position_head(self.query_head(e_conc.to(self.position_head.weight.dtype)))
        return F.interpolate(pos.view(-1, 1, g, g), size=size, mode="bilinear",
                             align_corners=False)

    def forward(self, policy_out: PolicyOutput, image_keys: torch.Tensor) -> PriorOutput:
        if policy_out.hidden is None:
            raise ValueError("HeatmapPrior needs the special token's hidden state; configure the "
                             "policy with special_token='<REF_POS>'")
        maps = self.scores(policy_out.hidden, image_keys)  # B x n_head x h x w
        if self.position_head is not None:
            maps = torch.cat([maps, self.position_map(policy_out.hidden, maps.shape[-2:])], 1)
        heatmap = self.fuse(maps)  # B x 1 x h x w
        dense = F.interpolate(heatmap, scale_factor=self.upsample, mode="bilinear",
                              align_corners=False)  # B x 1 x 4h x 4w
        return PriorOutput(heatmap=heatmap, dense=dense, valid=list(policy_out.has_token))
