import pytest
import torch

from coprs.models import postprocess_logits
from coprs.registry import MODELS
from coprs.utils import register_all_modules


def test_postprocess_removes_padding_then_resizes():
    # a 4x4 logit map over a 16x16 padded frame whose valid region is the top 8 rows
    logits = torch.full((1, 4, 4), -5.0)
    logits[:, :2, :] = 5.0  # exactly the valid (unpadded) half is foreground
    out = postprocess_logits(logits, img_size=16, valid_hw=(8, 16), ori_hw=(30, 60))
    assert out.shape == (30, 60)
    assert (out > 0).float().mean() > 0.9  # the padding (background) was cropped away


def test_prior_and_policy_special_tokens_must_agree():
    register_all_modules()
    from mmengine.config import Config

    from ..conftest import TINY_CONFIG  # noqa: TID252

    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.policy.special_token = "<SEG>"
    with pytest.raises(ValueError, match="special_token"):
        MODELS.build(cfg.model)


def test_forward_predict_and_tensor_modes(tiny_segmentor):
    import numpy as np

    img = np.zeros((30, 40, 3), np.uint8)
    res = tiny_segmentor([img], [{"instruction": "x", "response": "<think>a</think><REF_POS>"}],
                         mode="predict")
    assert res[0].mask.shape == (30, 40) and res[0].format_ok
    logits = tiny_segmentor([img], [{"instruction": "x"}], mode="tensor")
    assert logits.shape == (1, 1, 112, 112)
    with pytest.raises(ValueError, match="unsupported mode"):
        tiny_segmentor([img], [{"instruction": "x"}], mode="bogus")


def test_teacher_forced_targets_end_where_generation_stops(tiny_segmentor):
    policy = tiny_segmentor.policy
    old = policy.stop_at_special_token
    try:
        for stop, last in ((True, policy.special_token_id),
                           (False, policy.tokenizer.convert_tokens_to_ids("<|im_end|>"))):
            policy.stop_at_special_token = stop
            (r,), g = tiny_segmentor.rollouts_for_training(
                [{"response": "<think>a</think><REF_POS>"}])
            assert g == 1 and r.token_ids[-1] == last
    finally:
        policy.stop_at_special_token = old
