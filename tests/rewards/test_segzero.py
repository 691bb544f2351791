"""Seg-Zero's rewards and the LISA-style token-format reward, against hand-computed values."""

import pytest
import torch

from coprs.registry import REWARDS
from coprs.rewards import (
    TokenFormatReward,
    answer_format_score,
    box_iou,
    box_iou_score,
    box_l1_score,
    mask_box,
    point_l1_score,
    points_in_mask_score,
    thinking_format_score,
    token_format_score,
)
from coprs.structures import ImageGeometry
from coprs.utils import register_all_modules

register_all_modules()


def _answer(bbox, points=((15, 25), (20, 30)), think="t"):
    pts = ", ".join(f"[{x}, {y}]" for x, y in points)
    return f'<think>{think}</think><answer>{{"bbox": {list(bbox)}, "points": [{pts}]}}</answer>'


def test_thinking_format():
    assert thinking_format_score("<think>a</think><answer>x</answer>") == 1.0
    assert thinking_format_score(" <think>a\nb</think>\n <answer>x</answer>\n<|im_end|>") == 1.0
    assert thinking_format_score("<think>a</think> so <answer>x</answer>") == 0.0
    assert thinking_format_score("ok <think>a</think><answer>x</answer>") == 0.0
    assert thinking_format_score("<think>a</think><answer>x</answer> done") == 0.0
    assert thinking_format_score("<answer>x</answer>") == 0.0


def test_answer_format():
    assert answer_format_score(_answer((1, 2, 3, 4))) == 1.0
    assert answer_format_score("<answer>{}</answer>") == 0.0
    assert answer_format_score(_answer((1, 2, 3, 4), points=((1, 2),))) == 0.0
    assert answer_format_score(_answer((1, 2, 3, 4), points=((1, 2),)), num_points=1) == 1.0


def test_box_and_point_functions_by_hand():
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[1:4, 2:5] = True  # rows 1-3, columns 2-4
    assert mask_box(mask) == [2.0, 1.0, 5.0, 4.0]
    assert mask_box(torch.zeros(3, 3)) is None
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)  # 1 / (4 + 4 - 1)
    assert box_iou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    assert box_iou_score([0, 0, 2, 2], [1, 1, 3, 3]) == 0.0
    assert box_iou_score([0, 0, 2, 2], [1, 1, 3, 3], threshold=None) == pytest.approx(1 / 7)
    assert box_iou_score([0, 0, 4, 4], [0, 0, 4, 2]) == 0.0  # IoU 0.5 is not > 0.5
    assert box_iou_score([0, 0, 4, 4], [0, 0, 4, 3]) == 1.0  # IoU 0.75
    # box L1: (1 + 2 + 3 + 4) / 4 = 2.5
    assert box_l1_score([0, 0, 10, 10], [1, 2, 13, 14], threshold=3) == 1.0
    assert box_l1_score([0, 0, 10, 10], [1, 2, 13, 14], threshold=2.5) == 0.0
    # point L1: (1 + 1 + 2 + 3) / 4 = 1.75
    assert point_l1_score([[0, 0], [10, 10]], [[1, 1], [12, 13]], threshold=2) == 1.0
    assert point_l1_score([[0, 0], [10, 10]], [[1, 1], [12, 13]], threshold=1.75) == 0.0
    assert point_l1_score([[0, 0]], [[0, 0], [1, 1]]) == 0.0
    small = torch.zeros(5, 5, dtype=torch.bool)
    small[1:3, 1:3] = True
    assert points_in_mask_score([(1.5, 1.2), (4, 4), (-1, 0)], small) == pytest.approx(1 / 3)
    assert points_in_mask_score([], small) == 0.0


def _geometry(n, scale=2, points=None):
    # the policy saw 56 x 56, the frame holds the image as 112 x 112: frame = 2 x view
    return [ImageGeometry(view_hw=(112 // scale,) * 2, frame_hw=(112, 112), gt_points=points)] * n


def test_coordinate_rewards_compare_in_the_policy_view():
    gt = torch.zeros(3, 128, 128, dtype=torch.bool)  # padded frame (S = 128) holding 112 x 112
    gt[:, 20:60, 10:50] = True  # frame box [10, 20, 50, 60] -> view box [5, 10, 25, 30]
    geom = _geometry(3, points=[[20.0, 30.0], [40.0, 50.0]])  # view points (10, 15), (20, 25)
    texts = [_answer((5, 10, 25, 30), points=((10, 15), (20, 25))),  # exact
             _answer((5, 10, 25, 34), points=((12, 15), (20, 29))),  # box L1 1, point L1 1.5
             "no answer"]
    build = REWARDS.build
    iou = build(dict(type="BoxIoUReward"))(texts, gt=gt, geometry=geom)
    assert iou.tolist() == [1.0, 1.0, 0.0]  # IoU 400/480 > 0.5
    soft = build(dict(type="BoxIoUReward", threshold=None))(texts, gt=gt, geometry=geom)
    assert soft.tolist() == pytest.approx([1.0, 400 / 480, 0.0])
    l1 = build(dict(type="BoxL1Reward", threshold=1.5))(texts, gt=gt, geometry=geom)
    assert l1.tolist() == [1.0, 1.0, 0.0]
    assert build(dict(type="BoxL1Reward", threshold=1.0))(texts, gt=gt, geometry=geom)[1] == 0
    pl1 = build(dict(type="PointL1Reward", threshold=1.6))(texts, gt=gt, geometry=geom)
    assert pl1.tolist() == [1.0, 1.0, 0.0]
    assert build(dict(type="PointL1Reward", threshold=1.5))(texts, gt=gt, geometry=geom)[1] == 0
    inside = build(dict(type="PointInMaskReward"))(
        [_answer((5, 10, 25, 30), points=((10, 15), (40, 40)))], gt=gt[:1], geometry=geom[:1])
    assert inside.tolist() == [0.5]  # (20, 30) inside, (80, 80) outside in the frame
    fmt = build(dict(type="ThinkFormatReward"))(texts)
    assert fmt.tolist() == [1.0, 1.0, 0.0]
    empty = torch.zeros(1, 128, 128, dtype=torch.bool)
    assert build(dict(type="BoxIoUReward"))(texts[:1], gt=empty, geometry=geom[:1]).item() == 0


def test_coordinate_rewards_say_what_is_missing():
    reward = REWARDS.build(dict(type="BoxIoUReward"))
    with pytest.raises(ValueError, match="geometry"):
        reward(["x"], gt=torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="vision frame"):
        reward([_answer((1, 2, 3, 4))], gt=torch.ones(1, 8, 8), geometry=_geometry(1))
    with pytest.raises(ValueError, match="PointInMaskReward"):
        REWARDS.build(dict(type="PointL1Reward"))([_answer((1, 2, 3, 4))],
                                                  gt=torch.ones(1, 112, 112),
                                                  geometry=_geometry(1))


def test_weighted_sum_hands_geometry_only_to_rewards_that_need_it():
    total = REWARDS.build(dict(type="WeightedSumReward", rewards=[
        dict(reward=dict(type="MaskReward"), weight=0.5),
        dict(reward=dict(type="ThinkFormatReward"), weight=1.0),
        dict(reward=dict(type="BoxIoUReward"), weight=2.0),
    ]))
    assert total.needs_geometry and total.needs_masks
    gt = torch.zeros(1, 112, 112, dtype=torch.bool)
    gt[0, 20:60, 10:50] = True
    probs = gt.float()[:, ::4, ::4]  # 28 x 28: a perfect mask
    value, parts = total.score([_answer((5, 10, 25, 30))], probs, gt, None, _geometry(1))
    assert parts["box_iou"].item() == 1.0 and parts["think_format"].item() == 1.0
    assert value.item() == pytest.approx(0.5 * parts["mask"].item() + 1.0 + 2.0)


def test_token_format():
    assert token_format_score("It is the red circle <SEG>.") == 1.0
    assert token_format_score("It is the red circle.") == 0.0
    assert token_format_score("<SEG><SEG>") == 0.0
    assert token_format_score("<think>a</think><REF_POS>", "<REF_POS>") == 1.0
    out = TokenFormatReward()(["a <SEG>", "b"])
    assert out.tolist() == [1.0, 0.0] and out.dtype == torch.float32
