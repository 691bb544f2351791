"""Hand-checked tests of coprs.rewards (SPEC §4: mask score, five format cases, 0.7/0.3 sum)."""

from __future__ import annotations

import pytest
import torch

from coprs.registry import REWARDS
from coprs.rewards import (
    COPRS_REWARD,
    BaseReward,
    FormatReward,
    MaskReward,
    WeightedSumReward,
    format_score,
    mask_score,
)

# --- mask_score -----------------------------------------------------------------------------------

# pred        gt
# 0.8 0.4     1 1
# 0.2 0.0     0 0
PRED = torch.tensor([[0.8, 0.4], [0.2, 0.0]])
GT = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
# Σpg = 1.2, Σp = 1.4, Σg = 2; soft IoU 1.2/2.2, soft Dice 2.4/3.4, hard IoU 1/2 (p > 0.5 → (0,0))
SCORE = 0.5 * 1.2 / 2.2 + 0.2 * 2.4 / 3.4 + 0.3 * 0.5
# valid drops pixel (0,1): Σpg = 0.8, Σp = 1.0, Σg = 1; soft IoU 0.8/1.2, Dice 1.6/2, hard IoU 1
VALID = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
SCORE_VALID = 0.5 * 0.8 / 1.2 + 0.2 * 1.6 / 2.0 + 0.3 * 1.0


def test_mask_score_by_hand():
    assert mask_score(PRED, GT).item() == pytest.approx(SCORE, abs=1e-5)
    assert mask_score(PRED, GT, VALID).item() == pytest.approx(SCORE_VALID, abs=1e-5)


def test_mask_score_batched_and_weights():
    all_valid = torch.ones_like(VALID)
    pred, gt = torch.stack([PRED, PRED]), torch.stack([GT, GT])
    out = mask_score(pred, gt, torch.stack([VALID, all_valid]))
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([SCORE_VALID, SCORE], abs=1e-5)
    only_hard = mask_score(PRED, GT, w_soft_iou=0.0, w_soft_dice=0.0, w_hard_iou=1.0)
    assert only_hard.item() == pytest.approx(0.5)


def test_mask_score_empty_empty_is_one():
    empty = torch.zeros(2, 2, dtype=torch.bool)
    assert mask_score(torch.full((2, 2), 0.1), empty).item() == pytest.approx(1.0)
    # ground truth only in the excluded region counts as empty
    gt = torch.tensor([[0, 1], [0, 0]], dtype=torch.bool)
    assert mask_score(torch.full((2, 2), 0.1), gt, VALID).item() == pytest.approx(1.0)
    # empty ground truth, non-empty prediction: every term 0
    pred = torch.tensor([[0.9, 0.0], [0.0, 0.0]])
    assert mask_score(pred, empty).item() == pytest.approx(0.0)


def test_mask_score_range_and_perfect_prediction():
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(8, 16, 16, generator=g), torch.rand(8, 16, 16, generator=g) > 0.5
    out = mask_score(pred, gt)
    assert ((out >= 0) & (out <= 1)).all()
    assert mask_score(gt.float(), gt).tolist() == pytest.approx([1.0] * 8, abs=1e-6)


def test_mask_score_rejects_logits_and_mismatched_shapes():
    with pytest.raises(ValueError, match="not the logits"):
        mask_score(torch.tensor([[3.0, -2.0]]), torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="same shape"):
        mask_score(PRED, GT[:1])


# --- format_score ---------------------------------------------------------------------------------

LONG = "a" * 2049


@pytest.mark.parametrize(
    "response, expected",
    [
        # the five canonical cases (paper B.1)
        ("<think>no tags at the end", 0.0),  # invalid
        ("<think>The cup left of the plate.</think><REF_POS>", 1.0),  # valid and clean
        (f"<think>{LONG}</think><REF_POS>", 0.9),  # long think
        ("Sure! <think>the cup</think><REF_POS>", 0.9),  # text before <think>
        ("<think>the cup</think><REF_POS> is here", 0.9),  # text after the token
        # whitespace is not text; exactly 2048 characters is not long
        (" \n<think>\n the cup \n</think>\n<REF_POS>\n", 1.0),
        (f"<think>{'a' * 2048}</think><REF_POS>", 1.0),
        # several issues at once: one penalty, not 0.9²
        (f"Hi <think>{LONG}</think><REF_POS> bye", 0.9),
        # chat end tokens don't count as text
        ("<think>the cup</think><REF_POS><|im_end|>", 1.0),
        ("<think>the cup</think><REF_POS><|endoftext|><|endoftext|>", 1.0),
        ("<think>the cup</think><REF_POS><|im_end|> more", 0.9),
        # invalid shapes
        ("<think>the cup</think>", 0.0),  # no token
        ("<think></think><REF_POS>", 0.0),  # empty think
        ("<think> </think><REF_POS>", 0.0),  # blank think
        ("<think>a</think><REF_POS><REF_POS>", 0.0),  # two tokens
        ("<think>a</think><think>b</think><REF_POS>", 0.0),  # two think blocks
        ("<REF_POS><think>the cup</think>", 0.0),  # token before think
        ("<think>the <REF_POS> cup</think>", 0.0),  # token inside think
        ("the cup <REF_POS>", 0.0),  # no think at all
        ("", 0.0),
    ],
)
def test_format_score_cases(response, expected):
    assert format_score(response) == expected


def test_format_score_words_between_rule_is_optional():
    eleven = "<think>x</think> the answer is the red cup on the table over there <REF_POS>"
    ten = "<think>x</think> the answer is the red cup on the table over <REF_POS>"
    assert format_score(eleven) == 1.0  # off by default
    assert format_score(eleven, max_words_between=10) == 0.9
    assert format_score(ten, max_words_between=10) == 1.0


def test_format_score_token_and_penalty_arguments():
    assert format_score("<think>x</think><SEG>", special_token="<SEG>") == 1.0
    assert format_score("<think>x</think><REF_POS>", special_token="<SEG>") == 0.0
    assert format_score("a <think>x</think><REF_POS>", penalty=0.5) == 0.5
    assert format_score("<think>xyz</think><REF_POS>", max_think_chars=2) == 0.9


# --- reward classes -------------------------------------------------------------------------------

CLEAN = "<think>the cup</think><REF_POS>"
INVALID = "the cup"
BEFORE = "Ok <think>the cup</think><REF_POS>"


def test_format_reward_vectorises():
    out = FormatReward()([CLEAN, INVALID, BEFORE])
    assert out.dtype == torch.float32 and out.tolist() == pytest.approx([1.0, 0.0, 0.9])
    assert FormatReward(max_words_between=0)(["<think>a</think> b <REF_POS>"]).tolist() == [
        pytest.approx(0.9)
    ]
    assert not FormatReward.needs_masks


def test_mask_reward_resizes_ground_truth_and_valid():
    reward = MaskReward()
    assert reward.needs_masks and reward.name == "mask"
    pred = torch.stack([PRED, PRED])
    gt = GT.float().repeat_interleave(2, 0).repeat_interleave(2, 1)  # 4 x 4, block constant
    valid = VALID.repeat_interleave(2, 0).repeat_interleave(2, 1)
    valid = torch.stack([valid, torch.ones_like(valid)])
    out = reward(["a", "b"], pred, torch.stack([gt, gt]), valid)
    assert out.tolist() == pytest.approx([SCORE_VALID, SCORE], abs=1e-5)


def test_mask_reward_needs_masks():
    with pytest.raises(ValueError, match="pred_probs"):
        MaskReward()(["a"])
    with pytest.raises(ValueError, match="N = 2"):
        MaskReward()(["a", "b"], PRED[None], GT[None])


def test_weighted_sum_breakdown_and_coprs_default():
    assert {"MaskReward", "FormatReward", "WeightedSumReward"} <= set(REWARDS.registered_names())
    reward = REWARDS.build(COPRS_REWARD)
    assert isinstance(reward, WeightedSumReward) and isinstance(reward, BaseReward)
    assert reward.weights == {"mask": 0.7, "format": 0.3} and reward.needs_masks
    pred, gt = torch.stack([PRED] * 3), torch.stack([GT] * 3)
    total, breakdown = reward.score([CLEAN, INVALID, BEFORE], pred, gt)
    assert set(breakdown) == {"mask", "format"}
    assert breakdown["format"].tolist() == pytest.approx([1.0, 0.0, 0.9])
    # an invalid response still gets the mask score of the prediction the loop passes
    assert breakdown["mask"].tolist() == pytest.approx([SCORE] * 3, abs=1e-5)
    expected = [0.7 * SCORE + 0.3 * f for f in (1.0, 0.0, 0.9)]
    assert total.tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(reward([CLEAN, INVALID, BEFORE], pred, gt), total)


def test_weighted_sum_accepts_built_rewards_and_names():
    reward = WeightedSumReward([
        dict(reward=FormatReward(), weight=1.0),
        dict(reward=dict(type="FormatReward", max_think_chars=2, name="format_short"), weight=2.0),
    ])
    total, breakdown = reward.score(["<think>abc</think><REF_POS>"])
    assert breakdown["format"].tolist() == [1.0]
    assert breakdown["format_short"].tolist() == pytest.approx([0.9])
    assert total.tolist() == pytest.approx([1.0 + 2 * 0.9])
    assert not reward.needs_masks


def test_weighted_sum_config_errors():
    with pytest.raises(ValueError, match="distinct name"):
        WeightedSumReward([dict(reward=dict(type="FormatReward"), weight=1.0)] * 2)
    with pytest.raises(ValueError, match="weight"):
        WeightedSumReward([dict(reward=dict(type="FormatReward"))])
    with pytest.raises(KeyError, match="Registered names"):
        WeightedSumReward([dict(reward=dict(type="MaskRewardd"), weight=1.0)])


def test_a_reward_that_returns_a_list_or_the_wrong_shape_is_named():
    from coprs.rewards.base import BaseReward

    class ListReward(BaseReward):
        name = "as_list"

        def __call__(self, responses, pred_probs=None, gt=None, valid=None):
            return [1.0] * len(responses)

    class ShortReward(BaseReward):
        name = "short"

        def __call__(self, responses, pred_probs=None, gt=None, valid=None):
            return torch.ones(1)

    with pytest.raises(TypeError, match="reward 'as_list' returned a list; a reward returns a "
                                        "tensor of one value per response"):
        WeightedSumReward([dict(reward=ListReward(), weight=1.0)]).score(["a", "b"])
    with pytest.raises(ValueError, match=r"reward 'short' returned shape \(1,\) for 2"):
        WeightedSumReward([dict(reward=ShortReward(), weight=1.0)]).score(["a", "b"])
