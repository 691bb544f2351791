"""The RolloutEngine contract: sample G responses per (image, instruction)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

from PIL import Image

from ..structures import Rollout

__all__ = ["BaseRolloutEngine"]


class BaseRolloutEngine(metaclass=ABCMeta):
    """Samples rollouts with the current policy.

    Args:
        temperature, top_p, top_k: sampling settings (paper: 1.0, 1.0, disabled).
        max_new_tokens: response budget (None: the policy's default).
        min_new_tokens: forbid the end tokens before this many new tokens (None: no minimum;
            benchmarks use it to force a fixed response length).
        greedy: take the most likely token at every step, as evaluation does
            (``test_cfg.generation_engine``); temperature, top-p and top-k are then unused.
            Greedy rollouts are for evaluation: their log-probs, where an engine returns them
            (vLLM's: those of the chosen tokens; the HF engine's rollouts carry none), are not
            those of a sampled distribution, and nothing should rely on them.
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
                 max_new_tokens: int | None = None, min_new_tokens: int | None = None,
                 greedy: bool = False) -> None:
        check_sampling(temperature=temperature, max_new_tokens=max_new_tokens,
                       min_new_tokens=min_new_tokens, greedy=greedy)
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens
        self.greedy = greedy

    def setup(self, policy) -> None:  # noqa: B027 (an optional hook: the default does nothing)
        """Prepare the engine for ``policy`` (default: nothing to prepare).

        The training loop calls it once, before the first rollout and outside any FSDP gather
        (the policy's sharded weights are not gathered then), on every rank at the same time, so
        an engine can allocate what it needs (e.g. a vLLM engine and its GPU memory) while
        memory is at its lowest and run collectives. :meth:`generate` must still work when
        ``setup`` was not called.
        """

    @abstractmethod
    def generate(self, policy, images: list[Image.Image], instructions: list[str],
                 num_samples: int) -> list[list[Rollout]]:
        """B lists of ``num_samples`` rollouts, each with token ids and sampling log-probs."""


def check_sampling(temperature: float = 1.0, max_new_tokens: int | None = None,
                   min_new_tokens: int | None = None, greedy: bool = False, **_) -> None:
    """Raise a ValueError naming the ``train_cfg.rollout_engine`` key when a sampling setting
    cannot work: a token budget below 1 (0 is not "the default": that is None), a minimum above
    the maximum, or a temperature <= 0 (GRPO samples). Other keys are ignored, so a whole
    ``rollout_engine`` dict can be passed."""
    for name, value in (("max_new_tokens", max_new_tokens), ("min_new_tokens", min_new_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"train_cfg.rollout_engine.{name}={value!r}: need a whole number "
                             ">= 1, or None for the default")
    if max_new_tokens is not None and min_new_tokens is not None and (
            min_new_tokens > max_new_tokens):
        raise ValueError(f"train_cfg.rollout_engine.min_new_tokens={min_new_tokens} exceeds "
                         f"max_new_tokens={max_new_tokens}")
    if not greedy and not temperature > 0:
        raise ValueError(f"train_cfg.rollout_engine.temperature={temperature!r}: GRPO samples, "
                         "so it must be > 0")
