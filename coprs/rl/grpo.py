"""GRPO math as pure tensor functions (SPEC §4; verl ``core_algos.py`` style).

One GRPO step, in the terms of this module::

    adv = group_advantages(rewards, G)                              # N = B·G rollouts
    pg, stats = policy_loss(logp, old_logp, adv, mask, clip_eps=0.2)
    kl = agg_loss(kl_penalty(logp, ref_logp, "low_var_kl"), mask)
    loss = pg + beta * kl                                           # beta = 0.2 for CoPRS

Shapes: ``N`` rollouts (group-major: rollouts ``i*G … (i+1)*G - 1`` answer prompt ``i``), ``T``
response tokens (right-padded; ``mask`` is 1 on real response tokens, 0 on padding).

Nothing here touches a model, a tokenizer or a registry; the functions are registered by name in
the two small dicts :data:`ADVANTAGE_ESTIMATORS` and :data:`POLICY_LOSSES` so a loop can pick them
from config, as verl does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "LOSS_AGG_MODES",
    "KL_KINDS",
    "masked_mean",
    "agg_loss",
    "group_advantages",
    "policy_loss",
    "kl_penalty",
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
]

LOSS_AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
"""How a per-token loss matrix is reduced to a scalar (see :func:`agg_loss`)."""

KL_KINDS: tuple[str, ...] = ("k1", "low_var_kl", "mse", "abs")
"""KL estimators understood by :func:`kl_penalty`."""


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is non-zero.

    Masked-out positions are replaced by 0 before summing (not multiplied), so ``inf``/``nan``
    there (e.g. padding log-probs) leak neither into the value nor into the gradient. Where a
    reduced slice has no valid position, the result is 0 (not NaN) and the graph stays connected
    to ``x``.

    Args:
        x: tensor of any shape, e.g. N x T.
        mask: same shape as ``x``; bool or 0/1 numbers (treated as binary).
        dim: dimension(s) to reduce; None reduces everything to a scalar.

    Returns:
        Tensor: ``x`` averaged over valid positions; shape of ``x`` with ``dim`` removed.
    """
    valid = mask.bool()
    total = x.masked_fill(~valid, 0).sum() if dim is None else x.masked_fill(~valid, 0).sum(dim)
    count = valid.sum() if dim is None else valid.sum(dim)
    return total / count.clamp_min(1).to(total.dtype)


def agg_loss(loss_mat: Tensor, mask: Tensor, agg: str = "token-mean") -> Tensor:
    """Reduce a per-token loss matrix to a scalar (verl's ``agg_loss``).

    Modes:

    * ``'token-mean'``: Σ over all valid tokens / number of valid tokens (DAPO / verl default);
    * ``'seq-mean-token-mean'``: each sequence's mean over its valid tokens, then the mean over the
      sequences that have at least one valid token (the original GRPO paper);
    * ``'seq-mean-token-sum'``: each sequence's sum over its valid tokens, then the mean over the
      sequences that have at least one valid token (Dr. GRPO-like, without its constant).

    An all-zero mask gives 0 with the graph intact (never NaN).

    Args:
        loss_mat: N x T per-token losses.
        mask: N x T, 1 on response tokens.
        agg: one of :data:`LOSS_AGG_MODES`.

    Returns:
        Tensor: scalar.
    """
    if agg not in LOSS_AGG_MODES:
        raise ValueError(
            f"unknown loss aggregation {agg!r}; valid ones: {', '.join(LOSS_AGG_MODES)}"
        )
    if agg == "token-mean":
        return masked_mean(loss_mat, mask)
    valid = mask.bool()
    has_tokens = valid.any(dim=-1)  # N
    if agg == "seq-mean-token-mean":
        per_seq = masked_mean(loss_mat, valid, dim=-1)  # N
    else:
        per_seq = loss_mat.masked_fill(~valid, 0).sum(dim=-1)  # N
    return masked_mean(per_seq, has_tokens)


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, scale: bool = True,
                     tol: float = 1e-6) -> Tensor:
    """GRPO outcome advantages: each reward normalised within its group (SPEC §4).

    ``A = (r - mean_group) / (std_group + eps)``, or only ``r - mean_group`` with ``scale=False``.
    The std is the **unbiased** one (Bessel's correction, ``torch.std``'s default), as in
    DeepSeekMath's GRPO, verl and TRL; it is undefined for one rollout, so ``group_size`` must be at
    least 2.

    Rewards are continuous, so a group whose rewards are equal up to float noise would otherwise be
    blown up to ±1 by ``std + eps``; a group with ``max - min <= tol`` is detected explicitly and
    gets exactly 0 advantage. The result never contains NaN.

    Computed in at least float32, without gradient (advantages are constants of the loss).

    Args:
        rewards: N rewards, group-major (N = B·G; group i is ``rewards[i*G:(i+1)*G]``).
        group_size: G, rollouts per prompt (≥ 2).
        eps: added to the std.
        scale: divide by ``std + eps`` (False: only centre, as Dr. GRPO does).
        tol: groups whose reward range is at most ``tol`` get advantage 0.

    Returns:
        Tensor: N advantages (float32, or float64 if the rewards are float64).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N = B·G), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 for GRPO (the unbiased std of one reward is undefined), "
            f"got {group_size}; sample at least 2 responses per prompt"
        )
    if rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards cannot be split into groups of {group_size}; pass "
            "B·G rewards laid out group-major"
        )
    r = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))
    if not torch.isfinite(r).all():
        bad = torch.nonzero(~torch.isfinite(r)).flatten().tolist()
        raise ValueError(
            f"non-finite rewards at indices {bad}: every reward must be a finite number"
        )
    r = r.view(-1, group_size)  # B x G
    centred = r - r.mean(dim=1, keepdim=True)
    adv = centred / (r.std(dim=1, keepdim=True) + eps) if scale else centred
    flat = (r.amax(dim=1, keepdim=True) - r.amin(dim=1, keepdim=True)) <= tol  # B x 1
    return adv.masked_fill(flat, 0.0).reshape(-1)


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                clip_eps: float = 0.2, agg: str = "token-mean", log_ratio_clamp: float = 20.0
                ) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate, per token, as GRPO uses it.

    ``ratio = exp(clamp(logp - old_logp, -c, c))`` (c = ``log_ratio_clamp``; the clamp keeps
    ``exp`` finite), ``pg = -min(ratio · A, clip(ratio, 1-ε, 1+ε) · A)`` per token, reduced by
    :func:`agg_loss`. ``old_logp`` and ``advantages`` are treated as constants (detached).
    Computed in at least float32 (bf16 log-probs are upcast; the gradient flows through the cast).

    Args:
        logp: N x T log-probs of the response tokens under the current policy (with grad).
        old_logp: N x T log-probs at rollout time.
        advantages: N advantages, one per rollout, broadcast over its tokens.
        mask: N x T, 1 on response tokens, 0 on padding.
        clip_eps: ε of the clip.
        agg: one of :data:`LOSS_AGG_MODES`.
        log_ratio_clamp: c, bound of the log-ratio before ``exp``.

    Returns:
        tuple: the scalar loss, and statistics as python floats (their names avoid the word
        "loss", which mmengine would sum into the objective), averaged over valid tokens:
        ``clip_frac`` (share where the clipped branch is active), ``approx_kl_old``
        (mean of ½·(logp - old_logp)²) and ``ratio_mean``.
    """
    if agg not in LOSS_AGG_MODES:
        raise ValueError(
            f"unknown loss aggregation {agg!r}; valid ones: {', '.join(LOSS_AGG_MODES)}"
        )
    if logp.dim() != 2 or logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            "logp, old_logp and mask must all be N x T; got "
            f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"advantages must have one value per rollout (N={logp.shape[0]}), "
            f"got shape {tuple(advantages.shape)}"
        )
    valid = mask.bool()
    dtype = torch.promote_types(logp.dtype, torch.float32)  # bf16 log-probs: ratios in fp32
    logp, old_logp = logp.to(dtype), old_logp.detach().to(dtype)
    # where() instead of multiplication: padding may hold -inf log-probs; no NaN in value or grad
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp))  # N x T
    adv = advantages.detach().to(logp.dtype).unsqueeze(-1)  # N x 1
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    pg = torch.maximum(pg_unclipped, pg_clipped)  # N x T
    loss = agg_loss(pg, valid, agg)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((pg_clipped > pg_unclipped).float(), valid).item(),
            "approx_kl_old": masked_mean(0.5 * log_ratio.float() ** 2, valid).item(),
            "ratio_mean": masked_mean(ratio.float(), valid).item(),
        }
    return loss, stats


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "low_var_kl", clamp: float = 10.0
               ) -> Tensor:
    """Per-token KL estimate between the current and the frozen reference policy.

    With ``d = ref_logp - logp`` (the reference is detached; computed in at least float32):

    * ``'k1'``: ``logp - ref_logp`` (unbiased, high variance, can be negative);
    * ``'low_var_kl'`` (Schulman's k3, CoPRS/GRPO's choice): ``exp(d) - d - 1`` with ``d``
      clamped to [-20, 20] before ``exp`` and the result clamped to [-clamp, clamp] (verl's
      choice); k3 is non-negative, so the value lies in [0, clamp];
    * ``'mse'`` (k2): ``½ (logp - ref_logp)²``;
    * ``'abs'``: ``|logp - ref_logp|``.

    Args:
        logp: N x T log-probs under the current policy.
        ref_logp: N x T log-probs under the reference policy.
        kind: one of :data:`KL_KINDS`.
        clamp: bound of the k3 value.

    Returns:
        Tensor: N x T per-token penalties (reduce with :func:`agg_loss` and the response mask).
    """
    dtype = torch.promote_types(logp.dtype, torch.float32)
    logp, ref_logp = logp.to(dtype), ref_logp.detach().to(dtype)
    if kind == "k1":
        return logp - ref_logp
    if kind == "low_var_kl":
        d = (ref_logp - logp).clamp(-20.0, 20.0)
        return (torch.exp(d) - d - 1.0).clamp(-clamp, clamp)
    if kind == "mse":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "abs":
        return (logp - ref_logp).abs()
    raise ValueError(f"unknown KL estimator {kind!r}; valid ones: {', '.join(KL_KINDS)}")


#: advantage estimators by name (config: ``adv_estimator='grpo'``)
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {"grpo": group_advantages}
#: policy losses by name (config: ``policy_loss='ppo_clip'``)
POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, float]]]] = {"ppo_clip": policy_loss}
