"""Pure RL math (advantages, clipped policy loss, KL estimators)."""

from .grpo import (
    ADVANTAGE_ESTIMATORS,
    KL_KINDS,
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    agg_loss,
    group_advantages,
    kl_penalty,
    masked_mean,
    policy_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "POLICY_LOSSES", "LOSS_AGG_MODES", "KL_KINDS", "agg_loss",
    "group_advantages", "kl_penalty", "masked_mean", "policy_loss",
]
