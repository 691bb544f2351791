import pickle

import numpy as np
import pytest
import torch

from coprs.backbones import SAMViTBackbone
from coprs.decoders import PriorDecoder
from coprs.testing.tiny_sam import build_tiny_sam, save_tiny_sam_checkpoint


@pytest.fixture(scope="module")
def sam_ckpt(tmp_path_factory):
    return save_tiny_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny.pth", seed=7)


def test_official_layout_checkpoint_loads_into_backbone_and_decoder(sam_ckpt):
    sam = build_tiny_sam(seed=7)
    bb = SAMViTBackbone(arch="tiny", checkpoint=str(sam_ckpt), seed=123)
    for k, v in sam.image_encoder.state_dict().items():
        assert torch.equal(bb.encoder.state_dict()[k], v), k
    dec = PriorDecoder(preset="tiny", sam_checkpoint=str(sam_ckpt))
    for k, v in sam.mask_decoder.state_dict().items():
        assert torch.equal(dec.mask_decoder.state_dict()[k], v), k
    ds = sam.prompt_encoder.mask_downscaling.state_dict()
    assert all(torch.equal(dec.downscaler.state_dict()[k], v) for k, v in ds.items())


def test_backbone_is_frozen_and_gives_the_key_grid(sam_ckpt):
    bb = SAMViTBackbone(arch="tiny", checkpoint=str(sam_ckpt))
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.encoder.training
    x, valid = bb.preprocess([np.zeros((50, 100, 3), np.uint8), np.zeros((112, 30, 3), np.uint8)])
    assert x.shape == (2, 3, 112, 112)
    assert valid == [(56, 112), (112, 30)]
    assert torch.all(x[0, :, 56:, :] == 0)  # padding bottom/right after normalisation
    keys = bb(x)
    assert keys.shape == (2, bb.out_channels, 28, 28) and bb.grid_size == 28


def test_backbone_random_init_is_deterministic_given_seed():
    a, b = SAMViTBackbone(arch="tiny", seed=1), SAMViTBackbone(arch="tiny", seed=1)
    x, _ = a.preprocess([np.full((40, 40, 3), 128, np.uint8)])
    assert torch.equal(a(x), b(x))
    assert a.cache_key == b.cache_key != SAMViTBackbone(arch="tiny", seed=2).cache_key


def test_checkpoint_errors(tmp_path, sam_ckpt):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        SAMViTBackbone(arch="tiny", checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="does not match arch"):
        SAMViTBackbone(arch="vit_b", checkpoint=str(sam_ckpt), depth=1, embed_dim=64,
                       num_heads=2, global_attn_indexes=(0,))
    with pytest.raises(ValueError, match="unknown SAM arch"):
        SAMViTBackbone(arch="vit_x")
    # the tiny preset's file under the CPU main job's width: the message says which tensor
    with pytest.raises(ValueError, match=r"with \{'embed_dim': 64, 'out_chans': 64\}.*size "
                                         r"mismatch for pos_embed"):
        SAMViTBackbone(arch="tiny", checkpoint=str(sam_ckpt), embed_dim=64, out_chans=64)


def test_a_tiny_sam_file_of_the_main_jobs_width_loads_into_its_backbone(tmp_path):
    from coprs.testing.tiny_sam import build_tiny_sam, save_tiny_sam_checkpoint

    path = save_tiny_sam_checkpoint(tmp_path / "sam64.pth", embed_dim=64, out_chans=64)
    backbone = SAMViTBackbone(arch="tiny", checkpoint=str(path), embed_dim=64, out_chans=64)
    want = build_tiny_sam(0, embed_dim=64, out_chans=64).image_encoder.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in backbone.encoder.state_dict().items())


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickled_code_in_a_checkpoint_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"image_encoder.x": _Evil()}, f)
    with pytest.raises(ValueError, match="evil.pth"):
        SAMViTBackbone(arch="tiny", checkpoint=str(bad))
    assert not (tmp_path / "PWNED").exists()
