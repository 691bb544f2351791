"""coprs-mmseg: the load-time report without mmseg, the backbone contract with it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("coprs_mmseg") is None:
    # not installed (as in CI): import the source tree, then leave sys.path as it was, so that
    # metadata of a past editable install there is not taken for an installed plugin
    sys.path.insert(0, str(PLUGIN_ROOT))
    try:
        importlib.import_module("coprs_mmseg")
    finally:
        sys.path.remove(str(PLUGIN_ROOT))

from coprs_mmseg import MMSegBackbone, mmseg_unavailable  # noqa: E402

REASON = mmseg_unavailable()
needs_mmseg = pytest.mark.skipif(
    REASON is not None,
    reason=f"mmseg.models cannot be imported ({REASON}); install mmsegmentation with a compiled "
           "mmcv to run the MMSegBackbone tests")
# a tiny MiT (SegFormer) backbone
TINY_MIT = dict(type="MixVisionTransformer", in_channels=3, embed_dims=8, num_stages=2,
                num_layers=[1, 1], num_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
                sr_ratios=[2, 1], out_indices=(0, 1), mlp_ratio=2)
TINY = dict(img_size=112, out_channels=32, grid_size=28)


@pytest.mark.skipif(REASON is None, reason="mmseg.models imports here; nothing to report")
def test_plugin_reports_why_it_cannot_load_and_coprs_keeps_working():
    from coprs.plugins import LocalPlugin, PluginWarning, isolated_plugins, load_plugins
    from coprs.registry import REWARDS, VISION_BACKBONES

    ep = LocalPlugin("coprs-mmseg", loader=lambda: importlib.import_module("coprs_mmseg.plugin"),
                     version="0.1.0")
    with isolated_plugins([ep]):
        with pytest.warns(PluginWarning, match=r"coprs-mmseg 0\.1\.0.*mmseg\.models cannot be "
                                               r"imported.*mmcv"):
            (info,) = load_plugins()
        assert info.status == "failed" and "mmseg.models" in info.error
        assert VISION_BACKBONES.get("MMSegBackbone") is None
        assert VISION_BACKBONES.get("SAMViTBackbone") is not None
        assert REWARDS.get("MaskReward") is not None
    with pytest.raises(ImportError, match="mmseg.models"):
        MMSegBackbone(TINY_MIT, **TINY)


@needs_mmseg
def test_contract_shapes_and_frozen():
    bb = MMSegBackbone(TINY_MIT, **TINY)
    x, valid = bb.preprocess([np.zeros((30, 40, 3), np.uint8)])
    assert x.shape == (1, 3, 112, 112) and valid == [(84, 112)]
    assert bb(x).shape == (1, 32, 28, 28)
    assert bb.out_channels == 32 and not any(p.requires_grad for p in bb.parameters())
    assert MMSegBackbone(TINY_MIT, out_index=0, out_channels=None, **{
        k: v for k, v in TINY.items() if k != "out_channels"}).out_channels == 8


@needs_mmseg
def test_segmentor_checkpoint_round_trip(tmp_path):
    ref = MMSegBackbone(TINY_MIT, seed=5, **TINY)
    path = tmp_path / "segformer.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in ref.body.state_dict().items()}},
               path)
    bb = MMSegBackbone(TINY_MIT, checkpoint=str(path), seed=0, **TINY)
    for k, v in ref.body.state_dict().items():
        assert torch.equal(bb.body.state_dict()[k], v), k
    assert bb.cache_key != MMSegBackbone(TINY_MIT, seed=0, **TINY).cache_key


@needs_mmseg
def test_meta_build_reads_no_weights(tmp_path):
    from coprs.utils import meta_build

    with meta_build():
        bb = MMSegBackbone(TINY_MIT, checkpoint=str(tmp_path / "absent.pth"), body_channels=16,
                           **TINY)
    assert all(p.is_meta for p in bb.parameters())
