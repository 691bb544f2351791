"""Hand-checked tests of coprs.rl.grpo (SPEC §4: group advantages, PPO clip, k3 KL)."""

from __future__ import annotations

import math

import pytest
import torch

from coprs.rl import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    agg_loss,
    group_advantages,
    kl_penalty,
    masked_mean,
    policy_loss,
)

# --- masked_mean / agg_loss ----------------------------------------------------------------------


def test_masked_mean_all_and_per_row():
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, float("inf"), float("nan")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4) / 3)
    assert masked_mean(x, mask, dim=-1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_mean_empty_rows_give_zero_not_nan():
    x = torch.ones(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    out = masked_mean(x, mask)
    assert out.item() == 0.0 and out.requires_grad
    assert masked_mean(x, mask, dim=1).tolist() == [0.0, 0.0]


def test_agg_loss_modes_by_hand():
    loss = torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # third sequence has no token
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx((1 + 3 + 2) / 3)
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 2) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((4 + 2) / 2)


def test_agg_loss_unknown_mode_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        agg_loss(torch.zeros(1, 1), torch.ones(1, 1), "mean")
    for mode in LOSS_AGG_MODES:
        assert mode in str(err.value)


# --- group_advantages -----------------------------------------------------------------------------


def test_group_advantages_by_hand_and_all_equal_group_is_exactly_zero():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = group_advantages(rewards, group_size=3, eps=0.0)
    # group 0: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1
    assert adv[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]


def test_group_advantages_unbiased_std():
    adv = group_advantages(torch.tensor([0.0, 1.0]), group_size=2, eps=0.0)
    # mean 0.5; unbiased std = sqrt((0.25 + 0.25) / (2 - 1)) = 1/sqrt(2) (biased would give ±1)
    assert adv.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)])
    r = torch.tensor([0.1, 0.9, 0.4, 0.3])
    manual = (r - r.mean()) / (torch.sqrt(((r - r.mean()) ** 2).sum() / 3) + 1e-6)
    assert torch.allclose(group_advantages(r, 4), manual)


def test_group_advantages_float_noise_group_is_zero():
    r = torch.tensor([0.7, 0.7 + 1e-7, 0.7 - 1e-7, 0.7], dtype=torch.float32)
    assert torch.equal(group_advantages(r, 4), torch.zeros(4))
    # without the explicit check, std + eps would turn the noise into sizeable advantages
    naive = (r - r.mean()) / (r.std() + 1e-6)
    assert naive.abs().max() > 0.05
    # a real spread just above tol is still normalised
    assert group_advantages(torch.tensor([0.0, 1e-3]), 2, tol=1e-6).abs().min() > 0.5


def test_group_advantages_scale_false_only_centres():
    adv = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2, scale=False)
    assert adv.tolist() == [-1.0, 1.0, 0.0, 0.0]


def test_group_advantages_keeps_float64_and_never_nan():
    adv = group_advantages(torch.zeros(4, dtype=torch.float64), 2)
    assert adv.dtype == torch.float64 and torch.equal(adv, torch.zeros(4, dtype=torch.float64))
    bf16 = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert group_advantages(bf16, 2).dtype == torch.float32


def test_group_advantages_is_detached():
    r = torch.tensor([0.0, 1.0], requires_grad=True)
    assert not group_advantages(r, 2).requires_grad


@pytest.mark.parametrize(
    "rewards, group_size, match",
    [
        (torch.zeros(4), 1, ">= 2"),
        (torch.zeros(5), 2, "groups of 2"),
        (torch.zeros(2, 2), 2, "1-D"),
        (torch.tensor([0.0, float("nan")]), 2, "non-finite"),
    ],
)
def test_group_advantages_errors(rewards, group_size, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size)


# --- policy_loss ----------------------------------------------------------------------------------

RATIOS = torch.tensor([[1.5, 1.0, 0.5], [0.7, 1.1, 2.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
ADV = torch.tensor([1.0, -1.0])
# per-token pg = -min(r·A, clip(r, 0.8, 1.2)·A):
#   row 0 (A=+1): r=1.5 → -1.2 (clipped), r=1.0 → -1.0, (masked)
#   row 1 (A=-1): r=0.7 → 0.8 (clipped), r=1.1 → 1.1, r=2.0 → 2.0 (unclipped branch is larger)
PG = [[-1.2, -1.0], [0.8, 1.1, 2.0]]


def _inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -2.5]])
    logp = (old + RATIOS.log()).requires_grad_(True)
    return logp, old


@pytest.mark.parametrize(
    "agg, expected",
    [
        ("token-mean", (-1.2 - 1.0 + 0.8 + 1.1 + 2.0) / 5),
        ("seq-mean-token-mean", ((-1.2 - 1.0) / 2 + (0.8 + 1.1 + 2.0) / 3) / 2),
        ("seq-mean-token-sum", ((-1.2 - 1.0) + (0.8 + 1.1 + 2.0)) / 2),
    ],
)
def test_policy_loss_each_aggregation_by_hand(agg, expected):
    logp, old = _inputs()
    loss, _ = policy_loss(logp, old, ADV, MASK, clip_eps=0.2, agg=agg)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_policy_loss_stats_and_gradient():
    logp, old = _inputs()
    loss, stats = policy_loss(logp, old, ADV, MASK)
    assert set(stats) == {"clip_frac", "approx_kl_old", "ratio_mean"}
    assert all(isinstance(v, float) and "loss" not in k for k, v in stats.items())
    assert stats["clip_frac"] == pytest.approx(2 / 5)  # r=1.5 (A>0) and r=0.7 (A<0)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 1.0 + 0.7 + 1.1 + 2.0) / 5, abs=1e-6)
    logs = [math.log(r) for r in (1.5, 1.0, 0.7, 1.1, 2.0)]
    assert stats["approx_kl_old"] == pytest.approx(sum(0.5 * x * x for x in logs) / 5, abs=1e-6)
    loss.backward()
    # d/dlogp of -A·r/5 where the unclipped branch is active, 0 where clipped or masked
    expected = torch.tensor([[0.0, -1.0 / 5, 0.0], [0.0, 1.1 / 5, 2.0 / 5]])
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_policy_loss_ignores_inf_padding():
    logp, old = _inputs()
    with torch.no_grad():
        logp[0, 2] = float("-inf")
    old = old.clone()
    old[0, 2] = float("-inf")
    loss, stats = policy_loss(logp, old, ADV, MASK)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logp.grad).all()
    assert all(math.isfinite(v) for v in stats.values())


def test_policy_loss_all_zero_mask_is_zero_with_graph():
    logp, old = _inputs()
    loss, stats = policy_loss(logp, old, ADV, torch.zeros_like(MASK))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert stats == {"clip_frac": 0.0, "approx_kl_old": 0.0, "ratio_mean": 0.0}


def test_policy_loss_clamps_log_ratio():
    logp = torch.tensor([[100.0]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)
    assert stats["ratio_mean"] == pytest.approx(math.exp(20.0), rel=1e-5)


def test_policy_loss_no_grad_through_old_logp_or_advantages():
    logp, old = _inputs()
    old.requires_grad_(True)
    adv = ADV.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, MASK)
    loss.backward()
    assert old.grad is None and adv.grad is None


def test_policy_loss_errors():
    logp, old = _inputs()
    with pytest.raises(ValueError, match="token-mean"):
        policy_loss(logp, old, ADV, MASK, agg="sum")
    with pytest.raises(ValueError, match="one value per rollout"):
        policy_loss(logp, old, ADV[:1], MASK)
    with pytest.raises(ValueError, match="N x T"):
        policy_loss(logp, old[:, :2], ADV, MASK)


# --- kl_penalty -----------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp = torch.tensor([[0.0, -1.0]])
    ref = torch.tensor([[math.log(2.0), -1.5]])
    assert kl_penalty(logp, ref, "k1").tolist()[0] == pytest.approx([-math.log(2.0), 0.5])
    # k3 = exp(d) - d - 1 with d = ref - logp
    d = [math.log(2.0), -0.5]
    k3 = [math.exp(x) - x - 1 for x in d]
    assert kl_penalty(logp, ref, "low_var_kl").tolist()[0] == pytest.approx(k3)
    mse = [0.5 * math.log(2) ** 2, 0.125]
    assert kl_penalty(logp, ref, "mse").tolist()[0] == pytest.approx(mse)
    assert kl_penalty(logp, ref, "abs").tolist()[0] == pytest.approx([math.log(2.0), 0.5])


def test_k3_clamps_log_ratio_and_value():
    logp = torch.tensor([0.0, 30.0])
    ref = torch.tensor([30.0, 0.0])
    assert kl_penalty(logp, ref).tolist() == [10.0, 10.0]
    # the inner clamp: d = -30 is clamped to -20, so the value is exp(-20) + 19, not 29
    assert kl_penalty(logp[1:], ref[1:], clamp=1e9).item() == pytest.approx(19.0, abs=1e-6)
    assert torch.isfinite(kl_penalty(logp, ref, clamp=1e30)).all()


def test_k3_is_non_negative_and_grad_flows_to_logp_only():
    logp = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ref = torch.randn(4, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    kl = kl_penalty(logp, ref)
    assert (kl >= 0).all()
    kl.sum().backward()
    assert logp.grad is not None and ref.grad is None


def test_kl_unknown_kind():
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k2")


def test_registered_by_name():
    assert ADVANTAGE_ESTIMATORS["grpo"] is group_advantages
    assert POLICY_LOSSES["ppo_clip"] is policy_loss


def test_bf16_log_probs_are_upcast():
    logp = torch.zeros(1, 2, dtype=torch.bfloat16, requires_grad=True)
    old = torch.full((1, 2), -0.1, dtype=torch.bfloat16)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logp.grad.dtype == torch.bfloat16
    assert kl_penalty(logp, old).dtype == torch.float32
