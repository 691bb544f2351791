import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder

from coprs.decoders import SAMPromptDecoder
from coprs.structures import PriorOutput

B, G = 3, 28  # prompts, key grid (tiny: 112 px frame, 4 px patches)


def _keys(c=32):
    return torch.randn(B, c, G, G)


@pytest.mark.parametrize("kind", ["sparse", "points", "box", "box+points", "dense", "all", "none"])
def test_shapes_for_every_prompt_kind(kind):
    torch.manual_seed(0)
    dec = SAMPromptDecoder(preset="tiny", img_size=112)
    prior = PriorOutput(valid=[True] * B)
    if kind in ("sparse", "all"):
        prior.sparse = torch.randn(B, 1, 32)
    if kind in ("points", "box+points", "all"):
        prior.points = torch.rand(B, 2, 2) * 112
    if kind in ("box", "box+points", "all"):
        prior.boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0]] * B)
    if kind in ("dense", "all"):
        prior.dense = torch.randn(B, 1, 4 * G, 4 * G)
    out = dec(_keys(), prior)
    assert out["mask_logits"].shape == (B, 1, 4 * G, 4 * G)
    assert out["iou_pred"].shape == (B, 1)
    assert torch.isfinite(out["mask_logits"]).all()


def test_equals_sam_prompt_encoder_and_mask_decoder_per_sample():
    torch.manual_seed(0)
    dec = SAMPromptDecoder(preset="tiny", img_size=112)
    ref_pe = PromptEncoder(embed_dim=32, image_embedding_size=(G, G), input_image_size=(112, 112),
                           mask_in_chans=16)
    ref_pe.load_state_dict(dec.prompt_encoder.state_dict())
    ref_dec = MaskDecoder(transformer_dim=32, transformer=dec.mask_decoder.transformer,
                          iou_head_hidden_dim=32)
    ref_dec.load_state_dict(dec.mask_decoder.state_dict())
    keys = _keys()
    boxes = torch.tensor([[10.0, 12.0, 50.0, 60.0], [0.0, 0.0, 111.0, 111.0], [30, 40, 31, 45]])
    points = torch.rand(B, 2, 2) * 112
    out = dec(keys, PriorOutput(boxes=boxes, points=points, valid=[True] * B))
    for b in range(B):
        sparse, dense = ref_pe(points=(points[b:b + 1], torch.ones(1, 2)), boxes=boxes[b:b + 1],
                               masks=None)
        ref, _ = ref_dec(keys[b:b + 1], ref_pe.get_dense_pe(), sparse, dense,
                         multimask_output=False)
        torch.testing.assert_close(out["mask_logits"][b:b + 1], ref, atol=1e-5, rtol=1e-5)


def test_invalid_coordinate_rows_get_empty_masks_without_gradient():
    dec = SAMPromptDecoder(preset="tiny", img_size=112, empty_logit=-30.0)
    out = dec(_keys(), PriorOutput(boxes=torch.tensor([[10.0, 10.0, 50.0, 60.0]] * B),
                                   valid=[True, False, True]))
    logits = out["mask_logits"]
    assert (logits[1] == -30.0).all() and not (logits[0] == -30.0).all()
    logits.sum().backward()
    # an embedding prior is decoded whatever `valid` says (the appended token is a prompt)
    out = dec(_keys(), PriorOutput(sparse=torch.randn(B, 1, 32), valid=[False] * B))
    assert not (out["mask_logits"] == -30.0).any()


def test_projection_presets_freezing_and_sam_checkpoint(tmp_path):
    from coprs.testing.tiny_sam import build_tiny_sam, save_tiny_sam_checkpoint

    assert isinstance(SAMPromptDecoder(preset="tiny", key_in_dim=32).image_proj,
                      torch.nn.Identity)
    dec = SAMPromptDecoder(preset="tiny", key_in_dim=48, img_size=112)
    out = dec(_keys(48), PriorOutput(sparse=torch.randn(B, 1, 32), valid=[True] * B))
    assert out["mask_logits"].shape == (B, 1, 4 * G, 4 * G)
    sam = SAMPromptDecoder(preset="sam")
    assert sum(p.numel() for p in sam.prompt_encoder.parameters()) == 6_220
    assert sum(p.numel() for p in sam.mask_decoder.parameters()) == 4_058_340
    assert not any(p.requires_grad for p in SAMPromptDecoder(preset="tiny", frozen=True)
                   .parameters())
    with pytest.raises(ValueError, match="preset"):
        SAMPromptDecoder(preset="huge")
    path = save_tiny_sam_checkpoint(tmp_path / "tiny_sam.pth", seed=3)
    loaded = SAMPromptDecoder(preset="tiny", img_size=112, sam_checkpoint=str(path))
    ref = build_tiny_sam(seed=3)
    for name, value in ref.prompt_encoder.state_dict().items():
        torch.testing.assert_close(loaded.prompt_encoder.state_dict()[name], value)
    for name, value in ref.mask_decoder.state_dict().items():
        torch.testing.assert_close(loaded.mask_decoder.state_dict()[name], value)
