import torch
from segment_anything.modeling import MaskDecoder

from coprs.decoders import PriorDecoder
from coprs.structures import PriorOutput


def test_batched_decoder_equals_sam_per_sample():
    torch.manual_seed(0)
    dec = PriorDecoder(preset="tiny")
    sam_dec = MaskDecoder(transformer_dim=32, transformer=dec.mask_decoder.transformer,
                          iou_head_hidden_dim=32)
    sam_dec.load_state_dict(dec.mask_decoder.state_dict())
    keys = torch.randn(3, 32, 7, 7)
    dense = torch.randn(3, 1, 28, 28)
    out = dec(keys, PriorOutput(dense=dense, valid=[True] * 3))
    assert out["mask_logits"].shape == (3, 1, 28, 28)
    assert out["iou_pred"].shape == (3, 1)
    pe = dec.pe_layer((7, 7)).unsqueeze(0)
    for b in range(3):
        emb = dec.downscaler(dense[b:b + 1])
        ref, _ = sam_dec(keys[b:b + 1], pe, torch.zeros(1, 0, 32), emb, multimask_output=False)
        torch.testing.assert_close(out["mask_logits"][b:b + 1], ref, atol=1e-5, rtol=1e-5)


def test_projection_only_when_widths_differ():
    assert isinstance(PriorDecoder(preset="tiny", key_in_dim=32).image_proj, torch.nn.Identity)
    dec = PriorDecoder(preset="tiny", key_in_dim=48)
    out = dec(torch.randn(1, 48, 4, 4), PriorOutput(dense=torch.randn(1, 1, 16, 16)))
    assert out["mask_logits"].shape == (1, 1, 16, 16)
