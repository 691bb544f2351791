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
            # a gold response that goes on after the token (LISA's "It is the red circle <SEG>.")
            (r,), _ = tiny_segmentor.rollouts_for_training([{"response": "It is a <REF_POS>."}])
            assert r.token_ids[-1] == last
            assert r.text == ("It is a <REF_POS>" if stop else "It is a <REF_POS>.")
            assert r.token_ids.count(policy.special_token_id) == 1
    finally:
        policy.stop_at_special_token = old


def test_answer_token_ids_skip_articles_and_encode_words_in_sentence(tiny_segmentor):
    from coprs.models.segmentor import answer_token_ids

    tok = tiny_segmentor.policy.tokenizer
    want = (tok.encode(" purple", add_special_tokens=False)
            + tok.encode(" triangle", add_special_tokens=False))
    assert answer_token_ids(tok, "the purple triangle") == want
    assert answer_token_ids(tok, "A purple triangle") == want
    assert answer_token_ids(tok, None) == [] and answer_token_ids(tok, "  ") == []


def test_answer_loss_matches_hand_computed_cross_entropy(tiny_segmentor, monkeypatch):
    from coprs.models.segmentor import answer_token_ids

    monkeypatch.setitem(tiny_segmentor.rl, "answer_key", "gold_answer")  # the default
    tok = tiny_segmentor.policy.tokenizer
    torch.manual_seed(0)
    head = torch.nn.Linear(8, len(tok), bias=False)
    hidden = torch.randn(3, 8, requires_grad=True)
    samples = [{"gold_answer": "the red circle"}, {}, {"gold_answer": "the blue star"}]
    loss = tiny_segmentor.answer_loss(hidden, head, samples)
    logp = torch.log_softmax(head(hidden), -1)
    ids0, ids2 = (answer_token_ids(tok, s["gold_answer"]) for s in (samples[0], samples[2]))
    want = 0.5 * (-logp[0, ids0].mean() - logp[2, ids2].mean())  # the sample without one is out
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert hidden.grad[1].abs().sum() == 0 and hidden.grad[0].abs().sum() > 0
    none = tiny_segmentor.answer_loss(hidden, head, [{}, {}, {"gold_answer": ""}])
    assert none.item() == 0.0 and none.requires_grad


def test_answer_key_chooses_the_field_the_answer_loss_names(tiny_segmentor, monkeypatch):
    from coprs.models.segmentor import answer_token_ids

    tok = tiny_segmentor.policy.tokenizer
    torch.manual_seed(0)
    head = torch.nn.Linear(8, len(tok), bias=False)
    hidden = torch.randn(1, 8)
    sample = {"gold_answer": "the red circle", "gold_answer_region": "the red circle in the centre"}
    logp = torch.log_softmax(head(hidden), -1)[0]
    by_key = {}
    for key in ("gold_answer", "gold_answer_region"):
        monkeypatch.setitem(tiny_segmentor.rl, "answer_key", key)
        by_key[key] = tiny_segmentor.answer_loss(hidden, head, [sample])
        torch.testing.assert_close(by_key[key], -logp[answer_token_ids(tok, sample[key])].mean())
    assert len(answer_token_ids(tok, sample["gold_answer_region"])) > 2  # red circle in centre
    assert not torch.isclose(by_key["gold_answer"], by_key["gold_answer_region"])
    # a field no sample has (a typo, another dataset): a warning that names it, and no loss
    monkeypatch.setitem(tiny_segmentor.rl, "answer_key", "gold_anwser")
    with pytest.warns(UserWarning, match="answer_key='gold_anwser': no sample in the batch"):
        assert tiny_segmentor.answer_loss(hidden, head, [sample]).item() == 0.0


def test_answer_coef_adds_a_loss_that_trains_the_policy(tiny_segmentor):
    from PIL import Image

    from coprs.datasets.shapes import ShapesWorld

    s = ShapesWorld().sample(0)
    sample = {"instruction": s.instruction, "response": s.response_coprs,
              "gold_answer": s.gold_answer, "gold_answer_region": s.gold_answer_region,
              "vision_gt_mask": s.gt_mask, "valid_hw": (112, 112)}
    model, rl = tiny_segmentor, dict(tiny_segmentor.rl)
    try:
        model.rl["answer_coef"] = 0.0
        assert "loss_answer" not in model.loss([s.image], [dict(sample)])
        model.rl["answer_coef"] = 0.5
        losses = model.loss([s.image], [dict(sample)])
        ref = model.answer_loss(
            model.policy.forward_responses(
                [Image.fromarray(s.image)], [s.instruction], model.rollouts_for_training([sample])[0]
            ).policy_output([s.response_coprs]).hidden, model.policy.model.lm_head, [sample])
        torch.testing.assert_close(losses["loss_answer"], 0.5 * ref)
        losses["loss_answer"].backward()
        layer = model.policy.model.model.language_model.layers[-1]
        assert layer.self_attn.q_proj.weight.grad.abs().sum() > 0
    finally:
        model.rl = rl
        model.zero_grad(set_to_none=True)


def test_backbone_keys_must_have_the_declared_shape(tiny_segmentor, monkeypatch, tmp_path):
    import numpy as np

    from coprs.backbones.feature_cache import FeatureCache

    seg, img = tiny_segmentor, np.full((30, 40, 3), 7, np.uint8)
    bb = seg.vision_backbone
    c, g = bb.out_channels, bb.grid_size
    monkeypatch.setattr(seg, "feature_cache", None)
    monkeypatch.setattr(bb, "forward", lambda x: torch.zeros(len(x), c - 1, g, g))
    with pytest.raises(ValueError, match=rf"{type(bb).__name__} declares out_channels={c} and "
                                         rf"grid_size={g}.*\(coprs .*gave shape \(1, {c - 1}, "):
        seg.encode_images([img])
    monkeypatch.setattr(bb, "forward", lambda x: torch.zeros(len(x), c, g // 2, g // 2))
    with pytest.raises(ValueError, match="gave shape"):  # a wrong grid is caught too
        seg.encode_images([img])
    # a stale cache entry (another backbone's features under the same key) is named as such
    cache = FeatureCache(tmp_path, "stale")
    cache.put(img, torch.zeros(c, g + 1, g + 1))
    monkeypatch.setattr(seg, "feature_cache", cache)
    with pytest.raises(ValueError, match=r"feature cache .*stale.*new cache_key"):
        seg.encode_images([img])


def test_backbone_without_the_declared_sizes_is_named_when_built():
    register_all_modules()
    from mmengine.config import Config

    from coprs.backbones import SAMViTBackbone
    from coprs.registry import VISION_BACKBONES

    from ..conftest import TINY_CONFIG  # noqa: TID252

    class _NoGrid(SAMViTBackbone):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            del self.grid_size

    VISION_BACKBONES.register_module(module=_NoGrid, force=True)
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.vision_backbone.type = "_NoGrid"
    cfg.model.pop("feature_cache")
    try:
        with pytest.raises(TypeError, match="vision backbone _NoGrid does not set grid_size"):
            MODELS.build(cfg.model)
    finally:  # the registry is the process's: leave it as it was
        VISION_BACKBONES.module_dict.pop("_NoGrid")
