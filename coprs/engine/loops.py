"""The training loop: supervised warm-up and GRPO + segmentation stages (LOOPS registry)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop
from PIL import Image

from ..models.micro_batch import check_train_cfg as check_micro_batches
from ..models.micro_batch import micro_batch_slices
from ..registry import LOOPS, REWARDS, ROLLOUT_ENGINES
from ..utils import fork_rng, on_any_rank, repeat_each
from .fsdp import full_params, plain_copy

__all__ = ["ReasoningSegTrainLoop", "STAGE_KINDS", "STAGE_KEYS", "check_train_cfg", "grpo_start", "rollout_seed"]

#: the kinds of training stage a loop can chain
STAGE_KINDS = ("sft", "grpo")
#: what a stage of ``train_cfg.stages`` may set
STAGE_KEYS = ("kind", "iters", "batch_size")


def check_train_cfg(train_cfg: dict) -> None:
    """Check a ``ReasoningSegTrainLoop`` training config before anything is built: its keys
    (a misspelt one would be ignored or fail after the model is built), every stage's kind,
    keys and iterations, and the micro-batch sizes against the GRPO group size. Other loop
    types are left to their own checks. Raises ValueError naming the key and what to do."""
    import inspect

    loop = train_cfg.get("type", "ReasoningSegTrainLoop")
    if loop is not ReasoningSegTrainLoop and str(loop).split(".")[-1] != "ReasoningSegTrainLoop":
        return
    known = set(inspect.signature(ReasoningSegTrainLoop.__init__).parameters) - {
        "self", "runner", "dataloader"}
    unknown = sorted(set(train_cfg) - known - {"type"})
    if unknown:
        hint = _closest(unknown[0], known)
        raise ValueError(f"train_cfg.{unknown[0]} is not an option of ReasoningSegTrainLoop"
                         f"{hint}; it takes {', '.join(sorted(known))}")
    stages = train_cfg.get("stages")
    if not stages:
        raise ValueError("train_cfg.stages is empty: give a list of dict(kind='sft'|'grpo', "
                         "iters=N)")
    for i, stage in enumerate(stages):
        where = f"train_cfg.stages.{i}"
        if not isinstance(stage, dict):
            raise ValueError(f"{where}={stage!r}: a stage is dict(kind='sft'|'grpo', iters=N)")
        for key in stage:
            if key not in STAGE_KEYS:
                raise ValueError(f"{where}.{key} is not a stage key{_closest(key, STAGE_KEYS)}; "
                                 f"a stage takes {', '.join(STAGE_KEYS)}")
        if stage.get("kind") not in STAGE_KINDS:
            raise ValueError(f"{where}.kind={stage.get('kind')!r}: need one of {STAGE_KINDS}")
        for key in ("iters", "batch_size"):
            value = stage.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}.{key}={value!r}: need a whole number >= 1")
    if any(s["kind"] == "grpo" for s in stages) and int(train_cfg.get("group_size", 8)) < 2:
        raise ValueError(f"GRPO needs train_cfg.group_size >= 2 (got "
                         f"{train_cfg.get('group_size')})")
    check_micro_batches(train_cfg)
    from ..rollout.base import check_sampling

    check_sampling(**dict(train_cfg.get("rollout_engine") or {}))


def check_trainable_dtypes(model: torch.nn.Module) -> None:
    """Refuse to train parameters stored in bfloat16 or float16.

    No optimiser here keeps a float32 master copy, and AdamW's updates at the paper's learning
    rate (1.6e-6) are far below bfloat16's resolution near typical weights (about 1e-4 at
    0.02), so such weights would barely move in a whole run. Raises ``ValueError`` naming the
    parameters and the fix.
    """
    low = [(n, p.dtype) for n, p in model.named_parameters()
           if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    if low:
        raise ValueError(
            f"{len(low)} trainable parameters are stored in low precision (e.g. {low[0][0]}, "
            f"{low[0][1]}); AdamW updates at fine-tuning learning rates "
            "are below its resolution and would be lost. Train float32 weights with bf16 "
            "compute: --cfg-options model.policy.torch_dtype=float32 and `coprs train --amp` "
            "(the 8-GPU FSDP config does this), or train LoRA adapters (model.policy.lora), which "
            "are kept in float32 over a bf16 base")


def dry_run_reward(reward) -> None:
    """Score a dummy batch with ``reward`` (the loop's ``WeightedSumReward``) before training.

    Three responses, a well-formed one, an empty one and one without the format, over 16 x 16
    masks (with geometry for the rewards that read coordinates): a reward that raises, or
    returns something other than one value per response, is a ``ValueError`` now rather than at
    the first GRPO iteration, after the whole warm-up. A non-finite value is only warned about
    (the loop skips such steps).
    """
    from mmengine.logging import print_log

    from ..structures import ImageGeometry

    responses = ["<think>the red square</think><REF_POS>", "", "no reasoning at all"]
    n, m = len(responses), 16
    gt = torch.zeros(n, m, m, dtype=torch.bool)
    gt[:, 4:10, 4:10] = True
    try:
        total, breakdown = reward.score(
            responses, torch.full((n, m, m), 0.5), gt, torch.ones(n, m, m, dtype=torch.bool),
            geometry=[ImageGeometry((m, m), (m, m)) for _ in range(n)])
    except Exception as exc:  # noqa: BLE001 - any failure of a user reward, named
        raise ValueError(
            f"train_cfg.reward {reward!r} failed on a dummy batch before training ({n} "
            f"responses: a well-formed one, an empty one, one without the format): "
            f"{type(exc).__name__}: {exc}. A reward must score any response, malformed ones "
            "included (a malformed response is a low score, not an exception)") from exc
    bad = _nonfinite_rewards(total, breakdown)
    if bad is not None:
        print_log(f"train_cfg.reward gave a non-finite {bad} on a dummy batch before training; "
                  "GRPO steps with non-finite rewards are skipped", logger="current",
                  level=logging.WARNING)


def grpo_start(stages) -> int | None:
    """The iteration at which the first GRPO stage of ``stages`` (``train_cfg.stages``) starts;
    None without one."""
    begin = 0
    for stage in stages or []:
        if stage.get("kind") == "grpo":
            return begin
        begin += int(stage.get("iters", 0))
    return None


def _closest(word: str, options) -> str:
    import difflib

    match = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


def rollout_seed(seed: int, rank: int, iteration: int) -> int:
    """The seed of the rollouts sampled on ``rank`` at ``iteration`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(1)[0])


@LOOPS.register_module()
class ReasoningSegTrainLoop(IterBasedTrainLoop):
    """Iteration-based training through a chain of stages, each a number of iterations.

    * ``sft`` (supervised warm-up): teacher-forces the dataset's gold response
      (``response_key``, e.g. ``<think>gold CoT</think><REF_POS>``) with token cross-entropy +
      L_SEG. Random-initialised tiny policies need it; real Qwen2.5-VL checkpoints can skip it.
    * ``grpo``: per batch, the named, timed phases of paper Alg./Sec. 3.2 —
      ``rollout`` (G sampled responses per sample, with their log-probs) → ``reward`` (no-grad
      decode of every rollout's mask, rewards) → advantages (group-relative) → ``reference``
      (log-probs under the frozen reference policy, if β > 0) → ``actor`` (the model's
      ``train_step``: GRPO loss + β·KL + λ_SEG·L_SEG, one backward, one optimiser step).

    The reference policy is the policy as it is when the first GRPO stage starts (after the
    warm-up, if any). It is snapshotted to ``<work_dir>/reference_policy.pth`` so a resumed run
    uses the same one. With LoRA adapters it is no copy of the base model: the base with the
    adapters disabled while they are untrained, else with a frozen second adapter that holds the
    adapters as GRPO began (a warm-up stage came first, or a LoRA checkpoint was loaded); the
    snapshot holds them.

    Rollouts are sampled from a random stream of their own, seeded by (the runner's seed, the
    rank, the iteration) and forked from the global one (:func:`rollout_seed`): a run resumed
    from a checkpoint samples the same rollouts as the uninterrupted run on every rank, although
    a checkpoint holds only rank 0's random state.

    Before any compute of a step, in both kinds of stage, the samples whose prompt is longer than
    the policy's cap (``model.policy.max_prompt_tokens``; paper: 1300 tokens) are dropped from
    the batch, with a warning naming them; ``data/overlong_dropped`` logs how many so far. A
    step left without samples is skipped (``overlong_step`` logged) and the run goes on. In a
    distributed run the ranks keep equal batches (``data/equalised_dropped``: the samples within
    the cap dropped for it), and rank 0 names the samples of every rank.

    Args:
        runner: the Runner.
        dataloader: the train dataloader (config).
        stages: list of ``dict(kind='sft'|'grpo', iters=N[, batch_size=B])``; ``max_iters`` is
            their sum; ``batch_size`` (optional) uses only the first B samples of each loader
            batch in that stage (e.g. fewer prompts per GRPO step, each with G rollouts).
        group_size: G, responses per sample in GRPO stages (paper: 8).
        rollout_engine: ROLLOUT_ENGINES config (sampling settings live there).
        reward: REWARDS config; its ``score`` gives the total and a per-reward breakdown.
        response_key: data_sample key with the gold response for ``sft`` stages.
        max_nonfinite_steps: raise after this many non-finite losses in a row (each one is
            skipped and logged).
        reference_dtype: dtype of the reference policy's weights, e.g. ``'bfloat16'`` (half the
            memory of an fp32 copy; its log-probs are computed in bf16 under autocast anyway);
            default: the policy's dtype.
        actor_micro_batch: sequences per forward/backward of the update (paper: 2); the
            gradients of the parts add up to the whole batch's before one optimiser step
            (:func:`coprs.models.micro_batch.run_train_step`). A divisor or a multiple of
            ``group_size``; None: the whole batch at once.
        experience_micro_batch: sequences per no-grad forward when the rollouts' masks are
            scored and the reference log-probs computed (paper: 8); same rule; None: all at
            once.
        scale_advantages: divide each group's centred rewards by the group's std (GRPO, the
            paper); False only centres them (Dr. GRPO), so groups with small reward spreads
            weigh less.
        rollout_log_interval: every this many GRPO iterations (from the first), append each
            rollout of the iteration (instruction, response, reward breakdown, advantage) as a
            JSON line to ``<work_dir>/rollouts.jsonl`` (``rollouts.rank<k>.jsonl`` per rank in
            distributed runs); 0: off.
        rollout_log_panels: at those iterations, also draw the first prompt's best- and
            worst-rewarded rollouts (image | heatmap | mask | response, with their rewards) to
            the visualizer's backends as ``rollouts_<sample id>`` (LocalVisBackend:
            ``vis_data/vis_image/rollouts_<id>_<iter>.png``; TensorBoard: an image), from rank 0.
        val_begin, val_interval: as ``IterBasedTrainLoop``.
    """

    #: why this iteration's update is skipped (non-finite rewards), None when it is not
    _skip_reason: str | None = None
    #: whether the rollout engine's setup() ran (before the first rollout)
    _engine_ready: bool = False
    #: samples dropped so far for a prompt over the policy's cap (None: not counted yet)
    _overlong_dropped: int | None = None
    #: samples within the cap dropped so far to keep as many on every rank
    _equalised_dropped: int = 0

    def __init__(self, runner, dataloader, stages: list[dict], group_size: int = 8,
                 rollout_engine: dict | None = None, reward: dict | None = None,
                 response_key: str = "response_coprs", max_nonfinite_steps: int = 5,
                 reference_dtype: str | None = None, actor_micro_batch: int | None = None,
                 experience_micro_batch: int | None = None, scale_advantages: bool = True,
                 rollout_log_interval: int = 0, rollout_log_panels: bool = False,
                 val_begin: int = 1, val_interval: int = 10 ** 9) -> None:
        self.reference_dtype = None
        if reference_dtype is not None:
            self.reference_dtype = getattr(torch, str(reference_dtype), None)
            if not (isinstance(self.reference_dtype, torch.dtype)
                    and self.reference_dtype.is_floating_point):
                raise ValueError(f"train_cfg.reference_dtype={reference_dtype!r} is not a "
                                 "floating-point torch dtype; use e.g. 'bfloat16', 'float16' or "
                                 "'float32', or leave it unset for the policy's dtype")
        stages = [dict(s) for s in stages]
        check_train_cfg(dict(stages=stages, group_size=group_size,
                             actor_micro_batch=actor_micro_batch,
                             experience_micro_batch=experience_micro_batch))
        self.actor_micro_batch = actor_micro_batch
        if int(rollout_log_interval) < 0:
            raise ValueError(f"train_cfg.rollout_log_interval={rollout_log_interval}: need a "
                             "number of GRPO iterations >= 1, or 0 for no rollout log")
        self.rollout_log_interval = int(rollout_log_interval)
        self.scale_advantages = bool(scale_advantages)
        self.rollout_log_panels = bool(rollout_log_panels)
        self.experience_micro_batch = experience_micro_batch
        from ..rewards.base import BaseReward
        from ..rewards.combine import COPRS_REWARD, WeightedSumReward

        built = REWARDS.build(reward or COPRS_REWARD)
        if not isinstance(built, BaseReward):
            raise TypeError(f"train_cfg.reward built {type(built).__name__}, which is not a "
                            "coprs.rewards.BaseReward; register a BaseReward subclass in REWARDS")
        # a single reward scores like a weighted sum of one: total = its value, and the
        # breakdown logs it as reward/<name>
        self.reward = (built if isinstance(built, WeightedSumReward)
                       else WeightedSumReward([dict(reward=built, weight=1.0)]))
        self.stages = stages
        super().__init__(runner, dataloader, max_iters=sum(int(s["iters"]) for s in stages),
                         val_begin=val_begin, val_interval=val_interval)
        self.group_size = group_size
        self.rollout_engine = ROLLOUT_ENGINES.build(rollout_engine or dict(type="HFRolloutEngine"))
        self.response_key = response_key
        self.max_nonfinite_steps = max_nonfinite_steps
        self._nonfinite_run = 0
        self._reference = None

    # ------------------------------------------------------------------ stages
    def stage_at(self, it: int) -> dict:
        """The stage that iteration ``it`` (0-based) belongs to."""
        end = 0
        for s in self.stages:
            end += int(s["iters"])
            if it < end:
                return s
        return self.stages[-1]

    def grpo_start(self) -> int | None:
        """Iteration at which the first GRPO stage starts."""
        return grpo_start(self.stages)

    @property
    def unwrapped(self):
        m = self.runner.model
        return m.module if is_model_wrapper(m) else m

    def run(self) -> torch.nn.Module:
        check_trainable_dtypes(self.runner.model)
        if self.grpo_start() is not None:
            dry_run_reward(self.reward)
            self._warn_lora_dropout()
        return super().run()

    def _warn_lora_dropout(self) -> None:
        """LoRA dropout is on in the training forward (the runner's ``train()`` mode) and off in
        the rollouts, so in GRPO the actor's log-probs are those of a randomly thinned policy:
        the PPO ratio against the rollout log-probs, and the KL to the reference, carry that
        noise. Said once, before the first iteration."""
        from ..policies.adapters import lora_config

        peft_cfg = lora_config(getattr(self.unwrapped, "policy", None))
        if peft_cfg is not None and getattr(peft_cfg, "lora_dropout", 0.0) > 0:
            self.runner.logger.warning(
                f"model.policy.lora.dropout={peft_cfg.lora_dropout}: the adapters' dropout is "
                "on in the actor forward and off in the rollouts, so the GRPO stage's PPO "
                "ratio and KL to the reference carry dropout noise; RL usually trains with "
                "model.policy.lora.dropout=0.0 (the default)")

    # --------------------------------------------------------------- iteration
    def run_iter(self, data_batch) -> None:
        self.runner.call_hook("before_train_iter", batch_idx=self._iter, data_batch=data_batch)
        stage = self.stage_at(self._iter)
        if stage.get("batch_size"):  # a stage may use fewer samples per step than the loader
            n = int(stage["batch_size"])
            data_batch = {k: v[:n] for k, v in data_batch.items()}
        timings: dict[str, float] = {}
        data_batch, extra = self._drop_overlong(data_batch)
        empty = not data_batch["data_samples"]  # every prompt over the cap (or another rank's)
        if stage["kind"] == "sft":
            for s in data_batch["data_samples"]:
                if self.response_key not in s:
                    raise KeyError(f"sft stage needs '{self.response_key}' in every sample "
                                   f"(sample {s.get('sample_id')}); use a dataset with gold "
                                   "responses or start with a grpo stage")
                s["response"] = s[self.response_key]
        elif not empty:
            extra.update(self._prepare_grpo(data_batch, timings))
        else:  # the reference is the policy at the start of GRPO, skipped step or not
            self._snapshot_reference(self.unwrapped)
        count = self.runner.optim_wrapper._inner_count
        if empty:  # nothing to learn from: the update is skipped, as for non-finite rewards
            outputs = {"overlong_step": 1.0}
        elif self._skip_reason is None:
            t0 = time.perf_counter()
            micro = {} if self.actor_micro_batch is None else {
                "micro_batch": self.actor_micro_batch}
            outputs = self.runner.model.train_step(
                data_batch, optim_wrapper=self.runner.optim_wrapper, **micro)
            timings["actor"] = time.perf_counter() - t0
        else:  # non-finite rewards: no advantages to learn from, the update is skipped
            outputs = {"nonfinite_step": 1.0}
        if self.runner.optim_wrapper._inner_count == count:  # no backward counted this step
            self._count_skipped_step()
        outputs = dict(outputs)
        outputs.update(extra)
        outputs.update({f"time/{k}": v for k, v in timings.items()})
        outputs["stage_grpo"] = float(stage["kind"] == "grpo")
        if not empty:  # a step with nothing to compute neither adds to nor ends a non-finite run
            self._check_nonfinite(outputs)
        self._skip_reason = None
        self.runner.call_hook("after_train_iter", batch_idx=self._iter, data_batch=data_batch,
                              outputs=outputs)
        self._iter += 1

    def _count_skipped_step(self) -> None:
        """Count a step whose update was skipped (over-long prompts, non-finite rewards or
        loss) in the optimiser wrapper's gradient accumulation, as a backward would.

        mmengine's ``OptimWrapper`` counts backwards, and a resumed run sets the count to the
        iteration: uncounted skipped steps would shift the accumulation windows of an
        uninterrupted run against a resumed one's, and leave the last window's gradients
        unapplied. A skipped step that ends a window (``optim_wrapper.accumulative_counts``)
        applies the gradients accumulated in it so far (:func:`_apply_pending_grads`)."""
        wrapper = self.runner.optim_wrapper
        wrapper._inner_count += 1
        if wrapper.should_update():
            _apply_pending_grads(wrapper, self.runner.model, self.runner.logger,
                                 f"iteration {self._iter + 1}")

    def _drop_overlong(self, data_batch: dict) -> tuple[dict, dict]:
        """The batch without the samples whose prompt is longer than the policy's cap
        (``model.policy.max_prompt_tokens``, :meth:`~coprs.policies.BasePolicy.overlong_prompts`),
        and the running counts of dropped samples to log (over all ranks). Nothing changes for
        a policy without a cap.

        ``data/overlong_dropped`` counts the samples over the cap; every one is named in a
        warning. In a distributed run every rank keeps as many samples as the rank that keeps
        fewest: the actor's forwards are collectives (FSDP, DDP buffers) and with micro-batches
        their number follows the batch size. So a rank that keeps none empties the batch
        everywhere, and every rank skips the step; ``data/equalised_dropped`` counts the samples
        within the cap dropped so. The names are gathered and warned about from rank 0 (the
        only rank whose warnings mmengine prints), with their ranks.
        """
        policy = self.unwrapped.policy
        cap = policy.max_prompt_tokens
        if cap is None:
            return data_batch, {}
        samples, images = data_batch["data_samples"], data_batch["inputs"]
        instructions = [s["instruction"] for s in samples]
        over = policy.overlong_prompts(images, instructions)
        keep = sorted(set(range(len(samples))) - set(over))
        counts = _per_rank(len(keep), len(over), len(samples))  # world size x 3
        fewest, dropped = int(counts[:, 0].min()), int(counts[:, 1].sum())
        evened = int((counts[:, 0] - fewest).sum())  # within the cap, dropped to equalise
        if self._overlong_dropped is None:  # a resumed run counts on from its checkpoint
            self._overlong_dropped = self._logged_total("data/overlong_dropped")
            self._equalised_dropped = self._logged_total("data/equalised_dropped")
        self._overlong_dropped += dropped
        self._equalised_dropped += evened
        if dropped or evened:  # the same on every rank: they gather the names together
            self._warn_dropped(samples, over, keep[fewest:], counts, cap)
        if over or len(keep) > fewest:
            keep = keep[:fewest]
            data_batch = {k: [v[i] for i in keep] for k, v in data_batch.items()}
        extra = {"data/overlong_dropped": float(self._overlong_dropped)}
        if len(counts) > 1:
            extra["data/equalised_dropped"] = float(self._equalised_dropped)
        return data_batch, extra

    def _logged_total(self, key: str) -> int:
        """The last value of the running count ``key`` in the message hub (0 if none)."""
        logged = self.runner.message_hub.log_scalars.get(f"train/{key}")
        return int(logged.current()) if logged is not None else 0

    def _warn_dropped(self, samples: list, over: dict, cut: list[int], counts: torch.Tensor,
                      cap: int) -> None:
        """Warn, from rank 0, about the samples of every rank dropped by :meth:`_drop_overlong`:
        ``over`` (index: prompt length) over the cap, ``cut`` (indices) to equalise the ranks;
        ``counts``: each rank's kept, over-long and given samples."""
        def name(i):
            return str(samples[i].get("sample_id", f"#{i}"))

        ranks = all_gather_object(([(name(i), n) for i, n in over.items()],
                                   [name(i) for i in cut]))
        if not is_main_process():
            return
        many = len(ranks) > 1
        where = f"iteration {self._iter + 1}"  # mmengine logs iterations from 1
        dropped, fewest = int(counts[:, 1].sum()), int(counts[:, 0].min())
        if dropped:
            named = ", ".join(f"{sid} ({n} tokens{f', rank {r}' if many else ''})"
                              for r, (long, _) in enumerate(ranks) for sid, n in long)
            self.runner.logger.warning(
                f"{where}: dropped {dropped} of {int(counts[:, 2].sum())} samples whose prompt is "
                f"longer than model.policy.max_prompt_tokens={cap}: {named}. To train on them, "
                "raise model.policy.max_prompt_tokens or lower model.policy.max_pixels (fewer "
                "image tokens)")
        if not fewest:
            empty = ", ".join(str(r) for r in range(len(ranks)) if not counts[r, 0])
            whose = f"the batch of rank {empty} has no" if many else "the batch has no"
            self.runner.logger.warning(f"{where}: {whose} sample with a prompt within model."
                                       f"policy.max_prompt_tokens={cap}; step skipped")
        elif many and int((counts[:, 0] - fewest).sum()):
            named = ", ".join(f"{sid} (rank {r})" for r, (_, evened) in enumerate(ranks)
                              for sid in evened)
            self.runner.logger.warning(
                f"{where}: dropped {int((counts[:, 0] - fewest).sum())} more samples (prompts "
                f"within the cap) to keep as many on every rank as the rank with the fewest "
                f"({fewest}): the ranks step together: {named}")

    def _check_nonfinite(self, outputs: dict) -> None:
        """Count skipped steps (``nonfinite_step``), warn with what was not finite, and drop
        the non-finite values from ``outputs``: the logger averages each key over a window of
        iterations, and one skipped step's NaN would show as ``loss: nan`` for the whole window.
        """
        if float(outputs.get("nonfinite_step", 0.0)) > 0:
            self._nonfinite_run += 1
            bad = {k: float(v) for k, v in outputs.items() if _is_number(v)
                   and not math.isfinite(float(v))}
            for k in bad:
                del outputs[k]
            what = ", ".join(f"{k}={v}" for k, v in bad.items()) if bad else \
                "gradient (every loss was finite)"
            if self._skip_reason is not None:
                what = self._skip_reason
            # mmengine logs iterations from 1: Iter(train) [k/N] is self._iter == k - 1
            self.runner.logger.warning(
                f"iteration {self._iter + 1}: non-finite {what}; update skipped "
                f"({self._nonfinite_run} in a row, limit train_cfg.max_nonfinite_steps="
                f"{self.max_nonfinite_steps})")
            if self._nonfinite_run >= self.max_nonfinite_steps:
                advice = ("make the reward terms named return finite values" if
                          what.startswith("reward") else
                          "lower the learning rate or check the data")
                raise FloatingPointError(
                    f"{self._nonfinite_run} non-finite training steps in a row (the last at "
                    f"iteration {self._iter + 1}: {what}), the limit train_cfg.max_nonfinite_"
                    f"steps={self.max_nonfinite_steps}; {advice}, then resume from the last "
                    "checkpoint")
        else:
            self._nonfinite_run = 0

    def _prepare_grpo(self, data_batch: dict, timings: dict) -> dict:
        """Rollouts, rewards, advantages and reference log-probs into the batch's samples."""
        from ..rl.grpo import group_advantages

        model, g = self.unwrapped, self.group_size
        samples, images = data_batch["data_samples"], data_batch["inputs"]
        instructions = [s["instruction"] for s in samples]
        pil = [Image.fromarray(im) for im in images]

        if not self._engine_ready:  # once, outside any gather: an engine may allocate here
            self.rollout_engine.setup(model.policy)
            self._engine_ready = True
        self._snapshot_reference(model)
        with full_params(self.runner.model):
            t0 = time.perf_counter()
            groups = self._sample_rollouts(model.policy, pil, instructions, g)
            rollouts = [r for grp in groups for r in grp]
            timings["rollout"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            probs = torch.cat([  # N x m x m
                model.score_rollouts([images[i] for i in idx], [samples[i] for i in idx], part, k)
                for idx, part, k in self._experience_parts(groups)])
            gt, valid = model.vision_targets(samples)  # B x S x S; the reward resizes them to m x m
            extra_args = {}
            if getattr(self.reward, "needs_geometry", False):  # coordinates in the text (Seg-Zero)
                extra_args["geometry"] = repeat_each(
                    model.image_geometry([im.shape[:2] for im in images], samples), g)
            total, breakdown = self.reward.score([r.text for r in rollouts], probs,
                                                 gt.repeat_interleave(g, 0) > 0.5,
                                                 valid.repeat_interleave(g, 0) > 0.5, **extra_args)
            reason = _nonfinite_rewards(total, breakdown)
            if on_any_rank(reason is not None):  # every rank skips the step together
                self._skip_reason = reason or "a reward on another rank"
                return {}
            adv = group_advantages(total.float().cpu(), g, scale=self.scale_advantages)
            timings["reward"] = time.perf_counter() - t0
            log_now = self.rollout_log_interval and (
                (self._iter - self.grpo_start()) % self.rollout_log_interval == 0)
            panel = None
            if log_now and self.rollout_log_panels:  # every rank decodes (FSDP gathers)
                order = [int(total[:g].argmax()), int(total[:g].argmin())]
                panel = (order, model.rollout_maps(images[0], samples[0],
                                                   [groups[0][j] for j in order]))

            ref_logps = None
            if model.rl["kl_coef"] > 0:
                t0 = time.perf_counter()
                ref_logps = [lp for idx, part, k in self._experience_parts(groups)
                             for lp in self._reference_logprobs(
                                 model, [pil[i] for i in idx], [instructions[i] for i in idx],
                                 part, k)]
                timings["reference"] = time.perf_counter() - t0

        for i, s in enumerate(samples):
            s["rollouts"] = rollouts[i * g:(i + 1) * g]
            s["advantages"] = adv[i * g:(i + 1) * g]
            s["ref_logprobs"] = None if ref_logps is None else ref_logps[i * g:(i + 1) * g]
        if log_now:
            self._log_rollouts(samples, groups, total, breakdown, adv)
        if panel is not None and is_main_process():
            self._draw_rollouts(images[0], samples[0], groups[0], total[:g], *panel)
        extra = {"reward/total": float(total.mean())}
        extra.update({f"reward/{k}": float(v.float().mean()) for k, v in breakdown.items()})
        extra["reward/group_std"] = float(total.view(-1, g).std(dim=1).mean())
        # groups whose rollouts all got the same reward: advantage 0, nothing to learn from
        extra["adv/zero_group_frac"] = float((adv.view(-1, g) == 0).all(dim=1).float().mean())
        extra["rollout/response_tokens"] = float(np.mean([len(r.token_ids) for r in rollouts]))
        extra["rollout/distinct_frac"] = float(np.mean(  # distinct responses per group / G
            [len({tuple(r.token_ids) for r in grp}) / g for grp in groups]))
        return extra

    def rollout_log_path(self) -> Path:
        """``<work_dir>/rollouts.jsonl``, or ``rollouts.rank<k>.jsonl`` in distributed runs."""
        name = "rollouts.jsonl" if get_world_size() == 1 else f"rollouts.rank{get_rank()}.jsonl"
        return Path(self.runner.work_dir) / name

    def _log_rollouts(self, samples, groups, total, breakdown, adv) -> None:
        """Append one JSON line per rollout of this iteration (see ``rollout_log_interval``)."""
        g = self.group_size
        lines = []
        for i, s in enumerate(samples):
            for j, r in enumerate(groups[i]):
                n = i * g + j
                rec = {"iter": self._iter + 1, "sample_id": s.get("sample_id"),
                       "instruction": s["instruction"], "rollout": j, "response": r.text,
                       "tokens": len(r.token_ids), "reward": float(total[n]),
                       **{f"reward/{k}": float(v[n]) for k, v in breakdown.items()},
                       "advantage": float(adv[n])}
                lines.append(json.dumps(rec, default=str) + "\n")
        path = self.rollout_log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(lines)

    def _draw_rollouts(self, image, sample: dict, group: list, rewards, order: list[int],
                       maps: list) -> None:
        """The best- and worst-rewarded rollouts of one prompt (``order``, with their
        :meth:`~coprs.models.ReasoningSegmentor.rollout_maps`), one panel each, stacked."""
        import re

        from ..visualization import render_panel

        panels = [render_panel(image, f"{sample['instruction']}  [{label} of {len(group)}: "
                               f"reward {float(rewards[j]):.3f}]", heat, mask, group[j].text,
                               format_ok=ok)
                  for label, j, (heat, mask, ok) in zip(("best", "worst"), order, maps)]
        width = max(p.shape[1] for p in panels)
        panel = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)),
                                       constant_values=255) for p in panels])
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(sample.get("sample_id", "sample")))
        self.runner.visualizer.add_image(f"rollouts_{stem}", panel, step=self._iter + 1)

    def _experience_parts(self, groups: list[list]) -> list[tuple[list[int], list, int]]:
        """The no-grad forwards over a batch's rollout groups (``experience_micro_batch``
        sequences each; all at once by default): (sample indices, their rollouts in order,
        rollouts per sample) of each."""
        g = self.group_size
        size = self.experience_micro_batch or g * len(groups)
        return [([i for i, _, _ in part], [r for i, lo, hi in part for r in groups[i][lo:hi]],
                 part[0][2] - part[0][1])
                for part in micro_batch_slices(len(groups), g, size)]

    def _sample_rollouts(self, policy, pil, instructions, g) -> list[list]:
        """G rollouts per prompt, from the random stream of (seed, rank, iteration)."""
        with fork_rng():
            torch.manual_seed(rollout_seed(self.runner.seed or 0, get_rank(), self._iter))
            return self.rollout_engine.generate(policy, pil, instructions, g)

    # --------------------------------------------------------------- reference
    def reference_path(self) -> Path:
        return Path(self.runner.work_dir) / "reference_policy.pth"

    def _snapshot_reference(self, model) -> None:
        """Make the reference policy (if β > 0) unless made already: at the first GRPO
        iteration, even one skipped for over-long prompts (a later one would take the run for a
        resumed one and look for the snapshot)."""
        # Outside the training forward, FSDP-sharded weights are gathered (full_params). The
        # reference copy reads them directly, so it is made in a block of its own before any
        # FSDP unit runs a forward (a unit's forward reshards it, also inside the block).
        if model.rl["kl_coef"] > 0 and self._reference is None:
            # under LoRA the reference adapter is written: back into the shards (FSDP)
            lora = getattr(model.policy, "uses_adapters", False)
            with full_params(self.runner.model, writeback=lora):
                self._reference_model(model)

    def _reference_model(self, model):
        """The frozen reference policy (built once, at the first GRPO iteration)."""
        if self._reference is not None:
            return self._reference
        policy = model.policy
        if getattr(policy, "uses_adapters", False):
            self._reference = self._adapter_reference(policy)
            return self._reference
        # under FSDP: rebuilt from the gathered weights
        ref = plain_copy(policy.model, dtype=self.reference_dtype)
        state = self._load_reference_snapshot()
        if state is not None:
            ref.load_state_dict(state)
        elif is_main_process():  # the first GRPO iteration: snapshot the policy as it is now
            self._save_reference_snapshot(ref.state_dict())
        self._reference = ref
        return ref

    def _load_reference_snapshot(self, required: bool = True) -> dict | None:
        """The snapshot taken at the start of the GRPO stage when this run resumed inside it,
        else None (the first GRPO iteration). A missing file is an error when ``required``."""
        if self._iter <= self.grpo_start():
            return None
        path = self.reference_path()
        if not path.is_file():
            if not required:
                return None
            raise FileNotFoundError(
                f"resuming a GRPO stage needs its reference policy snapshot {path}; copy the "
                "first run's reference_policy.pth into the work dir")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated or not a checkpoint: name it
            raise ValueError(f"cannot read the reference policy snapshot {path} "
                             f"({type(exc).__name__}: {exc})") from exc

    def _save_reference_snapshot(self, state: dict) -> None:
        path = self.reference_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def _adapter_reference(self, policy) -> str:
        """Under LoRA the reference is the policy at the start of GRPO without a second copy of
        the base: the base with the adapters off while they are untrained (all ``lora_B`` zero
        and the token rows as loaded: fresh adapters), else the base with the policy's frozen
        ``reference`` adapter, into which the trained adapters are copied as GRPO begins (after
        a warm-up stage, or from a LoRA checkpoint). Called inside ``full_params(model, writeback=True)``.

        ``reference_policy.pth`` holds that copy (empty for adapters off), so a resumed run
        uses the same reference. A run resumed without the file (one from before adapter
        snapshots) keeps the adapters off and says so."""
        state = self._load_reference_snapshot(required=False)
        if state is None and self._iter > self.grpo_start():
            self.runner.logger.warning(
                f"LoRA GRPO resumed without {self.reference_path()}: the KL reference is the "
                "base model with the adapters off, which is the policy at the start of GRPO only "
                "if its adapters were untrained then")
            return "adapters-disabled"
        if state is None:  # the first GRPO iteration
            state = policy.adapter_state() if policy.adapters_trained() else {}
            # fresh adapters ({}): the base with the adapters off is the policy
            if is_main_process():
                self._save_reference_snapshot(state)
            if state:
                start = self.grpo_start()
                why = (f"trained in the {start}-iteration warm-up before it" if start else
                       "loaded trained")
                self.runner.logger.info(
                    "LoRA GRPO: the KL reference is the base model with a copy of the adapters "
                    f"at the start of GRPO ({why}), {self.reference_path()}")
        if not state:
            return "adapters-disabled"
        policy.set_reference_adapters(state)
        return "reference-adapters"

    @torch.no_grad()
    def _reference_logprobs(self, model, pil, instructions, rollouts, g) -> list[list[float]]:
        ref = self._reference_model(model)
        policy = model.policy
        images, instructions = repeat_each(pil, g), repeat_each(instructions, g)
        if isinstance(ref, str):  # LoRA: the adapters off, or the reference adapter on
            swap = policy.disable_adapter() if ref == "adapters-disabled" else (
                policy.reference_adapters())
            with swap:
                fwd = policy.forward_responses(images, instructions, rollouts)
                logp, mask = policy.response_logprobs(fwd)
        else:
            fwd = policy.forward_responses(images, instructions, rollouts, model=ref)
            logp, mask = policy.response_logprobs(fwd)
        return [logp[i, : int(mask[i].sum())].tolist() for i in range(len(rollouts))]


def _per_rank(*counts: int) -> torch.Tensor:
    """``counts`` of every rank, world size x len(counts) (one all_gather when distributed)."""
    mine = torch.tensor(counts, dtype=torch.long)
    if get_world_size() == 1:
        return mine[None]
    from mmengine.dist import all_gather
    from mmengine.dist.utils import get_comm_device

    return torch.stack(all_gather(mine.to(get_comm_device()))).cpu()


def average_grads_over_ranks(params) -> None:
    """Replace each parameter's gradient by its mean over the ranks, in place (one all-reduce
    per tensor; every rank takes part for the gradients that any rank holds, in one order; a
    rank without one takes part with zeros)."""
    from mmengine.dist import all_reduce

    held = torch.tensor([float(p.grad is not None) for p in params])
    all_reduce(held)
    for p, n in zip(params, held.tolist()):
        if n:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            all_reduce(p.grad, op="mean")


def _apply_pending_grads(wrapper, model, logger, where: str) -> None:
    """Step ``wrapper`` with the gradients accumulated since its last step, at the end of an
    accumulation window whose last step had no backward, then zero them.

    Nothing happens without such gradients (an optimiser step on none would still move
    AdamW's weights). The earlier steps of the window ran their backward without the gradient
    all-reduce (mmengine's ``optim_context``: ``no_sync``), so under DDP they are averaged over
    the ranks here, as DDP would have. Under FSDP each backward reduce-scattered them
    (:meth:`~coprs.engine.wrappers.CoprsFullyShardedDataParallel.no_sync`), so the sharded
    gradients are stepped on as they are; unsharded ones (FSDP's own ``no_sync``, kept for a
    backward that reduces them) are dropped with a warning, as are gradients that are not
    finite (a loss scaler, fp16, keeps its own handling of those).
    """
    from ..models.segmentor import _grads_finite
    from .fsdp import is_fsdp

    params = [p for group in wrapper.optimizer.param_groups for p in group["params"]]
    if not on_any_rank(any(p.grad is not None for p in params)):
        return
    why = None
    if is_fsdp(model):
        if on_any_rank(any(p.grad is not None and p.grad.shape != p.shape for p in params)):
            why = ("under FSDP they were kept unsharded and unreduced (FSDP's no_sync) for a "
                   "backward that did not come")
    elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
        average_grads_over_ranks(params)
    scaler = getattr(wrapper, "loss_scaler", None)
    if why is None and not (scaler is not None and scaler.is_enabled()) and \
            on_any_rank(not _grads_finite(wrapper)):
        why = "they are not finite"
    if why is None:
        wrapper.step()
    else:
        logger.warning(f"{where}: the step ends a gradient accumulation window (optim_wrapper."
                       f"accumulative_counts) without a backward; the gradients accumulated "
                       f"in it are dropped: {why}")
    wrapper.zero_grad()


def _is_number(value) -> bool:
    """A log value that is one number (a float, an int or a one-element tensor)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nonfinite_rewards(total: torch.Tensor, breakdown: dict) -> str | None:
    """None when every rollout's reward is finite, else what was not (for the warning)."""
    bad = ~torch.isfinite(total.float())
    if not bool(bad.any()):
        return None
    terms = [k for k, v in breakdown.items()
             if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v.float()).all())]
    return (f"reward for {int(bad.sum())} of {bad.numel()} rollouts (terms: "
            f"{', '.join(terms) if terms else 'the combined total'})")
