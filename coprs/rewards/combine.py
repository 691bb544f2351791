"""Weighted sums of rewards, keeping every reward's value for logging (TRL's reward bank)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..registry import REWARDS
from .base import BaseReward

__all__ = ["WeightedSumReward", "COPRS_REWARD"]

#: CoPRS' reward (SPEC §4): 0.7 · mask score + 0.3 · format score
COPRS_REWARD = dict(
    type="WeightedSumReward",
    rewards=[
        dict(reward=dict(type="MaskReward"), weight=0.7),
        dict(reward=dict(type="FormatReward"), weight=0.3),
    ],
)


@REWARDS.register_module()
class WeightedSumReward(BaseReward):
    """``Σ_k weight_k · reward_k``, with each reward's unweighted value kept in a breakdown.

    Config (CoPRS, :data:`COPRS_REWARD`)::

        dict(type='WeightedSumReward', rewards=[
            dict(reward=dict(type='MaskReward'), weight=0.7),
            dict(reward=dict(type='FormatReward'), weight=0.3)])

    Args:
        rewards: list of ``dict(reward=<REWARDS config or a built BaseReward>, weight=<float>)``.
            The sub-rewards' ``name`` attributes must be distinct (pass ``name=`` in a sub-config
            to tell two rewards of one class apart).
        name: key of this reward in an enclosing breakdown.
    """

    name = "total"

    def __init__(self, rewards: list[dict[str, Any]], name: str | None = None) -> None:
        super().__init__(name)
        if not rewards:
            raise ValueError("WeightedSumReward needs at least one dict(reward=..., weight=...)")
        self.rewards: list[BaseReward] = []
        self.weights: dict[str, float] = {}
        for i, item in enumerate(rewards):
            if not isinstance(item, dict) or set(item) != {"reward", "weight"}:
                raise ValueError(
                    f"rewards[{i}] must be dict(reward=<config>, weight=<float>), got {item!r}"
                )
            reward = item["reward"]
            reward = REWARDS.build(reward) if isinstance(reward, dict) else reward
            if not isinstance(reward, BaseReward):
                raise TypeError(f"rewards[{i}] built {type(reward).__name__}, not a BaseReward")
            if reward.name in self.weights:
                raise ValueError(
                    f"two rewards are named {reward.name!r}; give one a distinct name= in its "
                    "config so their values can be told apart in the logs"
                )
            self.rewards.append(reward)
            self.weights[reward.name] = float(item["weight"])
        self.needs_masks = any(r.needs_masks for r in self.rewards)
        self.needs_geometry = any(r.needs_geometry for r in self.rewards)

    def score(self, responses: list[str], pred_probs: Tensor | None = None,
              gt: Tensor | None = None, valid: Tensor | None = None, geometry: list | None = None
              ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total and breakdown of N rollouts (args: see :meth:`BaseReward.__call__`;
        ``geometry`` is handed only to the sub-rewards that set ``needs_geometry``).

        Returns:
            tuple: the N weighted totals, and ``{name: N unweighted values}`` for every sub-reward
            (log them as ``reward/<name>``; the weights are in :attr:`weights`).
        """
        device = self._out_device(pred_probs)
        breakdown: dict[str, Tensor] = {}
        total = torch.zeros(len(responses), dtype=torch.float32, device=device)
        for reward in self.rewards:
            extra = {"geometry": geometry} if reward.needs_geometry else {}
            values = reward(responses, pred_probs, gt, valid, **extra)
            if not isinstance(values, Tensor):
                raise TypeError(
                    f"reward {reward.name!r} returned a {type(values).__name__}; a reward returns "
                    f"a tensor of one value per response (torch.tensor(values))")
            values = values.to(device=device, dtype=torch.float32)
            if values.shape != total.shape:
                raise ValueError(
                    f"reward {reward.name!r} returned shape {tuple(values.shape)} for "
                    f"{len(responses)} responses; a reward gives one value per response"
                )
            breakdown[reward.name] = values
            total = total + self.weights[reward.name] * values
        return total, breakdown

    def __call__(self, responses: list[str], pred_probs: Tensor | None = None,
                 gt: Tensor | None = None, valid: Tensor | None = None,
                 geometry: list | None = None) -> Tensor:
        """The N weighted totals (see :meth:`score` for the breakdown)."""
        return self.score(responses, pred_probs, gt, valid, geometry)[0]

    def __repr__(self) -> str:
        terms = " + ".join(f"{w:g}·{n}" for n, w in self.weights.items())
        return f"{type(self).__name__}({terms})"
