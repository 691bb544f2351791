"""Micro-batched training steps: one optimiser step over a batch forwarded in parts.

The paper's actor forwards 2 sequences at a time for its update and 8 for experience collection
(Appendix B.3): a GRPO batch of 2 prompts x 8 rollouts per GPU is 16 sequences of up to 3,300
tokens, whose activations and vocabulary-wide logits would not fit at once. Here a batch is cut
into micro-batches of whole groups or equal slices of groups; each part's loss is weighted by its
share of the batch's normaliser (its tokens for token-mean losses, its sequences for per-sequence
means, its images for the segmentation loss), so the gradients summed over the parts equal the
gradient of the whole batch's loss, and one optimiser step follows.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import nullcontext

import torch

__all__ = ["micro_batch_slices", "check_micro_batch", "check_train_cfg", "split_batch",
           "run_train_step", "WHOLE_BATCH"]

#: the whole batch's samples while its micro-batches are forwarded (None otherwise), for checks
#: that concern the batch rather than one part of it
WHOLE_BATCH: contextvars.ContextVar = contextvars.ContextVar("coprs_whole_batch", default=None)


def check_micro_batch(size: int, group_size: int, what: str = "actor_micro_batch") -> None:
    """Raise a clear error unless ``size`` sequences cut groups of ``group_size`` evenly."""
    if int(size) != size or size < 1:
        raise ValueError(f"train_cfg.{what}={size!r}: need a positive number of sequences")
    if group_size % size if size < group_size else size % group_size:
        relation = ("does not divide" if size < group_size else "is not a multiple of")
        raise ValueError(f"train_cfg.{what}={size} {relation} group_size={group_size}: a "
                         "micro-batch holds a whole number of groups or an equal slice of one; "
                         f"use a divisor of {group_size} or a multiple of it")


def check_train_cfg(train_cfg: dict) -> None:
    """Check ``train_cfg.actor_micro_batch`` and ``experience_micro_batch`` against the group
    size of its GRPO stages (a warm-up alone takes any size: one sequence per sample)."""
    grpo = any(s.get("kind") == "grpo" for s in train_cfg.get("stages") or [])
    group_size = int(train_cfg.get("group_size", 8)) if grpo else 1
    for what in ("actor_micro_batch", "experience_micro_batch"):
        if train_cfg.get(what) is not None:
            check_micro_batch(train_cfg[what], group_size, what)


def micro_batch_slices(num_samples: int, group_size: int, size: int
                       ) -> list[list[tuple[int, int, int]]]:
    """Cut ``num_samples`` groups of ``group_size`` sequences into parts of ``size`` sequences.

    Returns:
        One list per part of ``(sample index, first sequence, end sequence)``; every entry of a
        part has the same number of sequences (whole groups when ``size >= group_size``, else
        ``size`` consecutive sequences of one group). The last part may hold fewer groups.
    """
    check_micro_batch(size, group_size)
    if size >= group_size:
        per = size // group_size
        return [[(i, 0, group_size) for i in range(start, min(start + per, num_samples))]
                for start in range(0, num_samples, per)]
    return [[(i, lo, lo + size)] for i in range(num_samples) for lo in range(0, group_size, size)]


def _slice_sample(sample: dict, lo: int, hi: int) -> dict:
    if "rollouts" not in sample:
        return sample
    part = dict(sample)
    part["rollouts"] = sample["rollouts"][lo:hi]
    part["advantages"] = sample["advantages"][lo:hi]
    if sample.get("ref_logprobs") is not None:
        part["ref_logprobs"] = sample["ref_logprobs"][lo:hi]
    return part


def split_batch(module, data: dict, size: int) -> list[tuple[dict, dict[str, float]]]:
    """A preprocessed batch as micro-batches of ``size`` sequences, each with its loss shares.

    Args:
        module: the segmentor (for :meth:`~coprs.models.ReasoningSegmentor.loss_normalizers`).
        data: ``dict(inputs=..., data_samples=...)``; GRPO samples carry ``rollouts``,
            ``advantages`` and ``ref_logprobs``, supervised samples one response each.
        size: sequences per micro-batch.

    Returns:
        ``(part, shares)`` pairs: ``shares[key]`` is the part's share of the batch normaliser of
        the loss ``key``; ``shares['_seqs']`` its share of the sequences (for the other losses
        and the logged statistics).
    """
    samples, inputs = data["data_samples"], data["inputs"]
    g = len(samples[0]["rollouts"]) if "rollouts" in samples[0] else 1
    whole = module.loss_normalizers(samples)
    parts = []
    for chunk in micro_batch_slices(len(samples), g, size):
        sub = [_slice_sample(samples[i], lo, hi) for i, lo, hi in chunk]
        images = [inputs[i] for i, _, _ in chunk]
        if isinstance(inputs, torch.Tensor):
            images = torch.stack(images)
        counts = module.loss_normalizers(sub)
        shares = {k: counts[k] / whole[k] if whole[k] else 0.0 for k in whole}
        parts.append(({**data, "inputs": images, "data_samples": sub}, shares))
    return parts


def _merge_logs(merged: dict, log_vars: dict, share: float) -> None:
    """Losses (already weighted) add up over the parts; other statistics are averaged by the
    parts' shares of the sequences. Values are detached: a part's graph is freed after its
    backward."""
    for k, v in log_vars.items():
        v = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        add = v if "loss" in k else v * share
        merged[k] = merged[k] + add if k in merged else add


def run_train_step(model, module, data: dict, optim_wrapper, micro_batch: int | None = None
                   ) -> dict:
    """mmengine's train step (forward, backward, optimiser step) with optional micro-batches.

    Args:
        model: what runs the forward (the segmentor, or its DDP/FSDP wrapper).
        module: the segmentor itself.
        data: the loader's batch.
        optim_wrapper: mmengine optimiser wrapper. One training iteration is one count of its
            gradient accumulation (``accumulative_counts``), however many micro-batches.
        micro_batch: sequences per forward/backward (``train_cfg.actor_micro_batch``); None:
            the whole batch at once.

    Returns:
        The log variables; a non-finite loss in any part skips the update on every rank
        (``nonfinite_step``).
    """
    from .segmentor import apply_update

    with optim_wrapper.optim_context(model):
        data = module.data_preprocessor(data, True)
    parts = split_batch(module, data, micro_batch) if micro_batch else []
    if len(parts) <= 1:
        with optim_wrapper.optim_context(model):
            losses = model._run_forward(data, mode="loss")
        parsed, log_vars = module.parse_losses(losses)
        return apply_update(parsed, log_vars, optim_wrapper)
    # DDP all-reduces the gradients once, at the last part; FSDP reduce-scatters at every
    # backward (its no_sync would keep unsharded gradients, the memory micro-batches save)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    merged: dict = {}
    bad, backward_seconds = False, 0.0
    whole = WHOLE_BATCH.set(data["data_samples"])
    try:
        for j, (part, shares) in enumerate(parts):
            last = j == len(parts) - 1
            with model.no_sync() if ddp and not last else nullcontext():
                with optim_wrapper.optim_context(model):
                    losses = model._run_forward(part, mode="loss")
                losses = {k: v * shares.get(k, shares["_seqs"]) if "loss" in k else v
                          for k, v in losses.items()}
                parsed, log_vars = module.parse_losses(losses)
                _merge_logs(merged, log_vars, shares["_seqs"])
                if not last:  # every rank runs every backward (FSDP's collectives need them all)
                    bad = bad or not bool(torch.isfinite(parsed))
                    t0 = time.perf_counter()
                    optim_wrapper.backward(optim_wrapper.scale_loss(parsed))
                    backward_seconds += time.perf_counter() - t0
                    optim_wrapper._inner_count -= 1  # the last part's backward counts the step
    finally:
        WHOLE_BATCH.reset(whole)
    log_vars = apply_update(parsed, merged, optim_wrapper, nonfinite=bad)
    if "time/backward_step" in log_vars:  # every part's backward, and the step
        log_vars["time/backward_step"] += backward_seconds
    return log_vars
