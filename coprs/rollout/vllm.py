"""Rollouts through vLLM on GPUs (optional extra: ``pip install -e .[vllm]``)."""

from __future__ import annotations

import torch
from PIL import Image

from ..registry import ROLLOUT_ENGINES
from ..structures import Rollout
from .base import BaseRolloutEngine

__all__ = ["VLLMRolloutEngine", "import_vllm"]


def import_vllm():
    """Import vllm lazily, naming the extra when it is missing."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "VLLMRolloutEngine needs vLLM, an optional GPU extra: pip install -e '.[vllm]' "
            "(or use the default HFRolloutEngine, which runs anywhere)"
        ) from exc
    return vllm


@ROLLOUT_ENGINES.register_module()
class VLLMRolloutEngine(BaseRolloutEngine):
    """The :class:`BaseRolloutEngine` contract on vLLM (paper: bf16, up to 64 sequences,
    17,408 batched tokens, chunked prefill, tensor parallel 4).

    The engine is created on first use from the policy's local ``model_path``; before each
    rollout the current policy weights are pushed into it (``sync_weights``), so rollouts come
    from the policy being trained. Log-probs are vLLM's sampled-token log-probs.

    Args:
        tensor_parallel_size, gpu_memory_utilization, max_num_seqs, max_num_batched_tokens,
        enable_chunked_prefill, dtype: passed to ``vllm.LLM``.
        seed_requests: give every request its own sampling seed, drawn from torch's random
            stream (which the training loop seeds per (seed, rank, iteration)), so vLLM
            rollouts are reproducible and a resumed run samples the uninterrupted run's
            rollouts. Off by default: vLLM then samples from its own generator, and per-request
            generators may cost vLLM some sampling speed (not measured here).
        temperature, top_p, top_k, max_new_tokens, min_new_tokens: see
            :class:`BaseRolloutEngine`.
    """

    def __init__(self, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.4,
                 max_num_seqs: int = 64, max_num_batched_tokens: int = 17408,
                 enable_chunked_prefill: bool = True, dtype: str = "bfloat16",
                 seed_requests: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed_requests = seed_requests
        self.llm_kwargs = dict(tensor_parallel_size=tensor_parallel_size,
                               gpu_memory_utilization=gpu_memory_utilization,
                               max_num_seqs=max_num_seqs,
                               max_num_batched_tokens=max_num_batched_tokens,
                               enable_chunked_prefill=enable_chunked_prefill, dtype=dtype,
                               limit_mm_per_prompt={"image": 1})
        self._llm = None

    def sampling_params(self, num_samples: int, policy, seed: int | None = None):
        """vLLM ``SamplingParams`` equal to the HF engine's sampling (``seed``: the request's)."""
        vllm = import_vllm()
        return vllm.SamplingParams(
            n=num_samples, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k or -1, max_tokens=self.max_new_tokens or policy.max_new_tokens,
            min_tokens=self.min_new_tokens or 0,
            logprobs=0, stop_token_ids=list(policy.stop_token_ids),
            skip_special_tokens=False, seed=seed,
        )

    def request_params(self, num_prompts: int, num_samples: int, policy):
        """The ``SamplingParams`` of one ``generate`` call: one for all requests, or with
        ``seed_requests`` one per request with consecutive seeds from torch's random stream."""
        if not self.seed_requests:
            return self.sampling_params(num_samples, policy)
        first = int(torch.randint(0, 2 ** 31 - num_prompts, ()))
        return [self.sampling_params(num_samples, policy, seed=first + i)
                for i in range(num_prompts)]

    @staticmethod
    def build_requests(policy, images: list[Image.Image], instructions: list[str]) -> list[dict]:
        """One vLLM request per prompt: the chat-templated text and its image."""
        return [
            {"prompt": policy.processor.apply_chat_template(
                policy.build_messages(ins), add_generation_prompt=True, tokenize=False),
             "multi_modal_data": {"image": img}}
            for img, ins in zip(images, instructions)
        ]

    @staticmethod
    def to_rollouts(policy, outputs) -> list[list[Rollout]]:
        """vLLM ``RequestOutput`` list → B lists of rollouts (token ids, log-probs, text)."""
        groups = []
        for req in outputs:
            group = []
            for comp in req.outputs:
                ids = list(comp.token_ids)
                logps = None
                if comp.logprobs is not None:
                    logps = [float(step[tok].logprob) for step, tok in zip(comp.logprobs, ids)]
                group.append(Rollout(text=policy.decode(ids), token_ids=ids, logprobs=logps))
            groups.append(group)
        return groups

    def sync_weights(self, policy) -> None:
        """Push the policy's current weights into the vLLM engine."""
        from ..engine.fsdp import is_fsdp, plain_state

        model = self._llm.llm_engine.model_executor.driver_worker.model_runner.model
        # under FSDP (inside the loop's full_params block) the gathered weights, without
        # FSDP's name prefixes and without running its state-dict hooks
        state = (plain_state(policy.model, buffers=False) if is_fsdp(policy.model)
                 else policy.model.state_dict())
        model.load_weights(state.items())

    def generate(self, policy, images, instructions, num_samples):
        vllm = import_vllm()
        if self._llm is None:
            self._llm = vllm.LLM(model=policy.model_path, **self.llm_kwargs)
        self.sync_weights(policy)
        outputs = self._llm.generate(self.build_requests(policy, images, instructions),
                                     self.request_params(len(images), num_samples, policy),
                                     use_tqdm=False)
        return self.to_rollouts(policy, outputs)
