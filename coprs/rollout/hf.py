"""The default rollout engine: transformers ``generate`` with a shared prompt prefill."""

from __future__ import annotations

import torch
from PIL import Image

from ..registry import ROLLOUT_ENGINES
from ..structures import Rollout
from .base import BaseRolloutEngine

__all__ = ["HFRolloutEngine"]


@ROLLOUT_ENGINES.register_module()
class HFRolloutEngine(BaseRolloutEngine):
    """Samples G responses per prompt with transformers, encoding each image once per group.

    With ``share_prefill`` (default) the B prompts are run through the model once — the vision
    tower encodes each image once and the prompt's key/value cache is computed once — and the
    cache is repeated G times before sampling continues (SPEC §7: naive G-fold generation spends
    most of its time re-encoding and re-prefilling). The sampled tokens equal naive
    ``generate(num_return_sequences=G)`` with the same seed.

    Args:
        share_prefill: share the prompt prefill across the group (False: naive generation).
        temperature, top_p, top_k, max_new_tokens: see :class:`BaseRolloutEngine`.
    """

    def __init__(self, share_prefill: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.share_prefill = share_prefill

    @torch.no_grad()
    def generate(self, policy, images: list[Image.Image], instructions: list[str],
                 num_samples: int) -> list[list[Rollout]]:
        model = policy.model
        was_training = model.training
        model.eval()
        try:
            batch = policy.encode_prompts(images, instructions)
            kwargs = policy.generation_kwargs(True, self.temperature, self.top_p, self.top_k,
                                              self.max_new_tokens)
            prompt_len = batch["input_ids"].shape[1]
            if not self.share_prefill or prompt_len < 2:
                out = model.generate(**batch, num_return_sequences=num_samples, **kwargs)
            else:
                out = model.generate(**self._shared_prefill(model, batch, num_samples), **kwargs)
            return policy.rollouts_from_generate(out, prompt_len, num_samples,
                                                 with_logprobs=True)
        finally:
            model.train(was_training)

    @staticmethod
    def _shared_prefill(model, batch: dict, g: int) -> dict:
        """Prefill the prompts minus their last token once, then repeat the cache G times.

        Left padding puts every prompt's last token in the last column, so one slice serves the
        whole batch; ``generate`` then feeds that last token itself.
        """
        pre = model(
            input_ids=batch["input_ids"][:, :-1],
            attention_mask=batch["attention_mask"][:, :-1],
            mm_token_type_ids=batch["mm_token_type_ids"][:, :-1],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            use_cache=True,
        )
        cache = pre.past_key_values
        cache.batch_repeat_interleave(g)
        model.model.rope_deltas = model.model.rope_deltas.repeat_interleave(g, 0)
        return dict(
            input_ids=batch["input_ids"].repeat_interleave(g, 0),
            attention_mask=batch["attention_mask"].repeat_interleave(g, 0),
            mm_token_type_ids=batch["mm_token_type_ids"].repeat_interleave(g, 0),
            cache=cache,
        )
