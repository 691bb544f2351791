"""Rollouts through vLLM on GPUs (optional extra: ``pip install -e .[vllm]``, vLLM 0.33).

Line references ``vllm/...:N`` in the comments are to the vLLM 0.33.0 wheel's sources.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
from collections.abc import Iterator

import torch
from PIL import Image

from ..registry import ROLLOUT_ENGINES
from ..structures import Rollout
from .base import BaseRolloutEngine

__all__ = ["ENGINE_SET_KWARGS", "VLLMRolloutEngine", "import_vllm", "tp_group_ranks", "vllm_weights"]

#: the sleep levels of ``vllm.LLM.sleep``: 1 offloads the weights to CPU memory and drops the
#: KV cache, 2 drops both (vllm/entrypoints/llm.py:839)
_SLEEP_LEVELS = (1, 2)

#: the ``vllm.LLM`` arguments the engine sets itself (:meth:`VLLMRolloutEngine.engine_kwargs`),
#: which ``llm_kwargs`` may not override, and what sets each instead
ENGINE_SET_KWARGS = {
    **{k: f"the engine argument {k}" for k in (
        "tensor_parallel_size", "gpu_memory_utilization", "max_num_seqs",
        "max_num_batched_tokens", "enable_chunked_prefill", "dtype")},
    "enable_sleep_mode": "the engine argument sleep_level (None: no sleep mode)",
    "model": "model.policy.model_path",
    "tokenizer": "the policy's tokenizer (model.policy), which the engine hands to vLLM",
    "load_format": "nothing: the policy's weights are pushed into the engine",
    "distributed_executor_backend": "nothing: one in-process engine per rank (external_launcher)",
    "logprobs_mode": "nothing: rollout log-probs are those of the sampled distribution",
    "generation_config": "the engine arguments temperature, top_p, top_k and max_new_tokens",
    "mm_processor_kwargs": "model.policy.min_pixels and model.policy.max_pixels",
    "limit_mm_per_prompt": "nothing: one image per prompt",
    "seed": "the run's seed (randomness.seed) with the engine argument seed_requests=True",
}


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


def tp_group_ranks(world_size: int, tensor_parallel_size: int) -> list[list[int]]:
    """The tensor-parallel groups vLLM forms over a torchrun world: consecutive ranks, e.g.
    ``[[0, 1, 2, 3], [4, 5, 6, 7]]`` for 8 ranks and ``tensor_parallel_size=4`` (the layout
    ExternalDP x DP x PP x PCP x TP of vllm/distributed/parallel_state.py:2149, with data,
    pipeline and context parallelism 1)."""
    tp = tensor_parallel_size
    if world_size % tp:
        raise ValueError(
            f"train_cfg.rollout_engine.tensor_parallel_size={tp} does not divide the "
            f"{world_size} ranks of the run: vLLM groups consecutive ranks by {tp}")
    return [list(range(start, start + tp)) for start in range(0, world_size, tp)]


def vllm_weights(policy) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights the policy's forward uses, as ``(name, tensor)`` under the plain transformers
    names vLLM's loader takes (``model.language_model.…``, ``model.visual.…``, ``lm_head.…``).

    Parameters only (vLLM computes its buffers itself), read through
    :func:`coprs.engine.fsdp.plain_state`: under FSDP (inside the loop's ``full_params`` block)
    the gathered tensors without FSDP's name prefixes, and no copy of any tensor. With LoRA
    adapters the names peft gives (``….base_layer.weight``, ``lora_A``, ``lora_B``, trained
    token rows), which vLLM rejects, are replaced: each adapted weight is yielded with its
    active adapters merged in (a new tensor, made when it is reached, so at most one merged
    matrix exists at a time) under the base layer's plain name, and the adapter tensors are left
    out. The merge equals
    ``policy.merged_state_dict()``, without merging into the policy's own weights and without
    copying the others.
    """
    from ..engine.fsdp import plain_state

    state = plain_state(policy.model, buffers=False)
    if not getattr(policy, "uses_adapters", False):
        yield from state.items()
        return
    from ..policies.adapters import merged_weights

    yield from merged_weights(policy.model, state.items())


@contextlib.contextmanager
def _kept_random_state():
    """A block after which Python's, numpy's and torch's (CPU and the current CUDA device)
    global random states are as before it: building a vLLM engine reseeds them all with the
    engine's seed (``set_random_seed``, vllm/utils/torch_utils.py:528), which would make every
    rank's training stream equal and depend on when the engine was built."""
    import numpy as np

    from ..utils import fork_rng

    py, npy = random.getstate(), np.random.get_state()
    try:
        with fork_rng():  # torch's, as the loop's rollouts and validation keep it
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _single_process_launch_env() -> None:
    """The torchrun variables vLLM's ``external_launcher`` reads (``RANK``, ``LOCAL_RANK``;
    vllm/v1/executor/uniproc_executor.py:186), and those of the ``env://`` process group it then
    creates, for a run started without torchrun (one process, one GPU). Variables already set
    are kept."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)


@ROLLOUT_ENGINES.register_module()
class VLLMRolloutEngine(BaseRolloutEngine):
    """The :class:`BaseRolloutEngine` contract on vLLM (paper: bf16, up to 64 sequences,
    17,408 batched tokens, chunked prefill, tensor parallel 4).

    Every training process (torchrun rank) runs its own vLLM engine in-process (vLLM's
    ``external_launcher`` backend), on its own GPU; with ``tensor_parallel_size`` > 1, vLLM
    splits the model over groups of consecutive ranks (:func:`tp_group_ranks`). The ranks of a
    group must give their engines identical requests, so each rank sends its prompts to the
    others of its group, all of them generate the group's prompts, and each keeps its own.

    The engine is created by :meth:`setup` (or on the first :meth:`generate`) from the
    policy's ``model_path``, with the policy's tokenizer (which holds the tokens the policy
    adds, e.g. ``<think>`` and ``<REF_POS>``) and the policy's pixel budget, so vLLM's prompt
    and image tokens are the training forward's. Its weights are placeholders until the first
    rollout (``load_format='dummy'``): before each rollout the policy's current weights are
    pushed into it (:meth:`sync_weights`, LoRA adapters merged in) and its prefix and encoder
    caches are cleared, so rollouts come from the policy being trained. With ``sleep_level``
    the engine releases its GPU memory after each rollout (vLLM's sleep mode), so the actor's
    step has it; it wakes for the next weight sync.

    Sampling matches :class:`HFRolloutEngine`: the policy's vision tokens are forbidden
    (``logit_bias`` -inf), responses stop at exactly the policy's stop tokens, and a rollout's
    log-probs are those of the distribution its tokens were drawn from (vLLM's
    ``processed_logprobs``: after the forbidden tokens, temperature, top-k and top-p).

    Args:
        tensor_parallel_size, gpu_memory_utilization, max_num_seqs, max_num_batched_tokens,
        enable_chunked_prefill, dtype: passed to ``vllm.LLM`` (``gpu_memory_utilization``: the
            share of each GPU's memory vLLM may hold while awake, weights and KV cache).
        seed_requests: give every request its own sampling seed, drawn from torch's random
            stream (which the training loop seeds per (seed, rank, iteration)), so vLLM
            rollouts are reproducible and a resumed run samples the uninterrupted run's
            rollouts; the G samples of a request get the seeds ``seed`` … ``seed + G - 1``
            (vLLM's parallel sampling), so requests' seeds are G apart. Off by default: vLLM
            then samples from its own generator, and per-request generators may cost vLLM some
            sampling speed (not measured here). With ``tensor_parallel_size`` > 1 requests are
            always seeded, since the ranks of a group must sample identically.
        sleep_level: vLLM sleep level after each rollout (1: keep the weights in CPU memory, 2:
            drop them; the next sync rewrites all of them either way), or None to keep the
            engine awake (no sleep mode).
        llm_kwargs: further ``vllm.LLM`` keyword arguments (e.g. ``max_model_len``,
            ``enforce_eager``). The arguments the engine sets itself
            (:data:`ENGINE_SET_KWARGS`: ``tensor_parallel_size``, ``model``, ``seed``, …) are a
            ``ValueError`` naming what to set instead.
        weights_fixed: the policy's weights do not change between calls (evaluation, ``coprs
            test --vllm``): they are pushed into the engine at the first call only (and again
            after a sleep), not before every call as in training.
        temperature, top_p, top_k, max_new_tokens, min_new_tokens, greedy: see
            :class:`BaseRolloutEngine` (``greedy``: vLLM's greedy sampling, temperature 0).
    """

    def __init__(self, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.4,
                 max_num_seqs: int = 64, max_num_batched_tokens: int = 17408,
                 enable_chunked_prefill: bool = True, dtype: str = "bfloat16",
                 seed_requests: bool = False, sleep_level: int | None = 2,
                 llm_kwargs: dict | None = None, weights_fixed: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(tensor_parallel_size, bool) or not isinstance(tensor_parallel_size, int) \
                or tensor_parallel_size < 1:
            raise ValueError(f"train_cfg.rollout_engine.tensor_parallel_size="
                             f"{tensor_parallel_size!r}: need a whole number >= 1")
        if sleep_level is not None and sleep_level not in _SLEEP_LEVELS:
            raise ValueError(f"train_cfg.rollout_engine.sleep_level={sleep_level!r}: use 1 "
                             "(weights kept in CPU memory), 2 (weights dropped) or None (no "
                             "sleep mode)")
        self.tensor_parallel_size = tensor_parallel_size
        self.seed_requests = seed_requests
        self.sleep_level = sleep_level
        self.llm_settings = dict(tensor_parallel_size=tensor_parallel_size,
                                 gpu_memory_utilization=gpu_memory_utilization,
                                 max_num_seqs=max_num_seqs,
                                 max_num_batched_tokens=max_num_batched_tokens,
                                 enable_chunked_prefill=enable_chunked_prefill, dtype=dtype)
        self.llm_kwargs = dict(llm_kwargs or {})
        for key in self.llm_kwargs:
            if key in ENGINE_SET_KWARGS:
                raise ValueError(
                    f"rollout_engine.llm_kwargs.{key}: the engine sets {key} itself (and relies "
                    f"on it); remove it from llm_kwargs and use {ENGINE_SET_KWARGS[key]}")
        self.weights_fixed = weights_fixed
        self._synced = False  # the policy's weights were pushed (and not dropped by a sleep)
        self._llm = None
        self._asleep = False
        self._tokenizer_dir: tempfile.TemporaryDirectory | None = None
        self._group: tuple | None = None  # (process group, its ranks) with tensor parallelism

    # ------------------------------------------------------------------ engine
    def engine_kwargs(self, policy, tokenizer_dir: str) -> dict:
        """The ``vllm.LLM`` keyword arguments for ``policy`` (its tokenizer saved in
        ``tokenizer_dir``)."""
        return dict(
            model=policy.model_path,
            # vLLM tokenizes the prompt with this tokenizer and hands it to the Hugging Face
            # processor it loads from ``model`` (vllm/multimodal/processing/context.py:318-329)
            tokenizer=tokenizer_dir,
            **self.llm_settings,
            # one engine per torchrun rank, in this process (vllm/config/parallel.py:1050 turns
            # off the engine-core process, vllm/v1/engine/llm_engine.py:136 then exposes
            # ``model_executor``); the world of an initialised process group is reused
            distributed_executor_backend="external_launcher",
            enable_sleep_mode=self.sleep_level is not None,
            # the log-probs of the distribution sampled from (default: the raw logits'), as
            # the HF engine's (vllm/config/model.py:291, vllm/v1/worker/gpu/sample/sampler.py)
            logprobs_mode="processed_logprobs",
            # sampling is the engine's alone, not the checkpoint's generation_config.json
            generation_config="vllm",
            # the weights come from the policy before every rollout: skip reading model_path's
            load_format="dummy",
            # the policy's pixel budget, as the policy sets it on its image processor: vLLM
            # sizes the image placeholders and calls the processor with it (``size`` and the
            # deprecated min/max_pixels alike, vllm/model_executor/models/qwen2_vl.py:952-1024),
            # so there are as many image tokens as in the training forward
            mm_processor_kwargs={"size": {"shortest_edge": policy.min_pixels,
                                          "longest_edge": policy.max_pixels}},
            limit_mm_per_prompt={"image": 1, "video": 0},
        ) | self.llm_kwargs  # none of the keys above (ENGINE_SET_KWARGS)

    def setup(self, policy) -> None:
        """Create the vLLM engine (once; on every rank together) and put it to sleep until
        the first rollout. Also called by :meth:`generate` when the loop did not call it."""
        if self._llm is not None:
            return
        vllm = import_vllm()
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            if self.tensor_parallel_size > 1:
                raise RuntimeError(
                    f"train_cfg.rollout_engine.tensor_parallel_size={self.tensor_parallel_size} "
                    "needs a distributed run (torchrun ... --launcher pytorch), one rank per GPU")
            _single_process_launch_env()
        self._tp_group()  # a collective: every rank creates every group, before the engine
        self._tokenizer_dir = tempfile.TemporaryDirectory(prefix="coprs-vllm-tokenizer-")
        policy.processor.save_pretrained(self._tokenizer_dir.name)
        with _kept_random_state():
            self._llm = vllm.LLM(**self.engine_kwargs(policy, self._tokenizer_dir.name))
        self._sleep()

    def _sleep(self) -> None:
        if self.sleep_level is not None and not self._asleep:
            self._llm.sleep(level=self.sleep_level)
            self._asleep = True

    def _tp_group(self) -> tuple | None:
        """(gloo process group, its ranks) of this rank's tensor-parallel group, created on
        first use; None without tensor parallelism."""
        if self.tensor_parallel_size == 1:
            return None
        if self._group is None:
            import torch.distributed as dist

            rank = dist.get_rank()
            for ranks in tp_group_ranks(dist.get_world_size(), self.tensor_parallel_size):
                group = dist.new_group(ranks, backend="gloo")  # every rank, every group
                if rank in ranks:
                    self._group = (group, ranks)
        return self._group

    # ------------------------------------------------------------------ weights
    def vllm_model(self):
        """The engine's model (``torch.nn.Module`` with vLLM's ``load_weights``): the in-process
        executor's worker (vllm/v1/executor/uniproc_executor.py:54, v1/worker/worker_base.py:352)
        and its model runner's model (v1/worker/gpu_worker.py:1161)."""
        return self._llm.llm_engine.model_executor.driver_worker.worker.get_model()

    def sync_weights(self, policy) -> None:
        """Push the policy's current weights (:func:`vllm_weights`) into the engine, then clear
        the caches computed with the old ones (prefix KV cache, vision encoder outputs).

        Weights are loaded in place through the model's ``load_weights``, which maps the
        transformers names to vLLM's and splits them over the tensor-parallel ranks (every rank
        passes the full tensors; unquantized CUDA layers need no processing after loading,
        vllm/model_executor/layers/linear.py:207). After sleep level 2 (or the dummy load) the
        weights' memory holds garbage, so every parameter must be written: one that is not
        raises.
        """
        self.load_policy_weights(policy)
        self.reset_caches()

    def load_policy_weights(self, policy) -> None:
        """The weight load of :meth:`sync_weights`, without the cache resets."""
        model = self.vllm_model()
        loaded = model.load_weights(vllm_weights(policy))
        if loaded is not None:  # unquantized models report what they loaded
            missing = sorted({n for n, _ in model.named_parameters()} - set(loaded))
            if missing:
                raise RuntimeError(
                    f"the policy's weights left {len(missing)} vLLM parameters unwritten "
                    f"({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}): the policy "
                    "and the vLLM model built from its model_path do not match")

    def reset_caches(self) -> None:
        """Forget the prefix cache (KV of earlier prompts) and the encoder cache (vision tower
        outputs): both were computed with the previous weights."""
        if not self._llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache (requests were running)")
        self._llm.llm_engine.reset_encoder_cache()  # vllm/v1/engine/llm_engine.py:412

    def _wake_and_sync(self, policy) -> None:
        """Wake the weights, write them, wake the KV cache (after the weights, so the load
        does not need the KV cache's memory; vllm/v1/engine/core.py:1031 resumes scheduling once
        all is awake), then reset the caches."""
        if not self._asleep:
            if not (self.weights_fixed and self._synced):
                self.sync_weights(policy)
                self._synced = True
            return
        self._llm.wake_up(tags=["weights"])
        self.load_policy_weights(policy)
        if not self._llm.wake_up(tags=["kv_cache"]):
            raise RuntimeError("the vLLM engine did not wake up fully")
        self._asleep = False
        self._synced = True
        self.reset_caches()

    # ------------------------------------------------------------------ requests
    def sampling_params(self, num_samples: int, policy, seed: int | None = None):
        """vLLM ``SamplingParams`` equal to the HF engine's sampling (``seed``: the request's)."""
        vllm = import_vllm()
        sampling = dict(temperature=0.0, top_p=1.0, top_k=0) if self.greedy else dict(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0)
        return vllm.SamplingParams(
            n=num_samples, **sampling, max_tokens=self.max_new_tokens or policy.max_new_tokens,
            min_tokens=self.min_new_tokens or 0,
            # the vision tokens the HF path suppresses; logit_bias, as allowed_token_ids takes
            # at most 1,024 ids (vllm/v1/worker/gpu/sample/logit_bias.py:20)
            logit_bias={int(t): float("-inf") for t in policy.suppress_token_ids} or None,
            # stop at exactly the policy's stop tokens, like the HF engine (vLLM would also stop
            # at the tokenizer's eos token); the stop token is part of the response
            stop_token_ids=list(policy.stop_token_ids), ignore_eos=True,
            logprobs=0, skip_special_tokens=False, detokenize=False, seed=seed,
        )

    def request_seeds(self, num_prompts: int, num_samples: int) -> list[int] | None:
        """Seeds of ``num_prompts`` requests of ``num_samples`` samples each, from torch's random
        stream, or None when requests are not seeded. vLLM seeds a request's sample j with
        ``seed + j`` (vllm/v1/engine/parallel_sampling.py:81), so the seeds are ``num_samples``
        apart and no two samples share a stream."""
        if not (self.seed_requests or self.tensor_parallel_size > 1):
            return None
        first = int(torch.randint(0, 2 ** 31 - num_prompts * num_samples, ()))
        return [first + i * num_samples for i in range(num_prompts)]

    def request_params(self, num_prompts: int, num_samples: int, policy):
        """The ``SamplingParams`` of one ``generate`` call: one for all requests, or with
        seeded requests one per request (:meth:`request_seeds`)."""
        return self._params(self.request_seeds(num_prompts, num_samples), num_samples, policy)

    def _params(self, seeds: list[int] | None, num_samples: int, policy):
        if seeds is None:
            return self.sampling_params(num_samples, policy)
        return [self.sampling_params(num_samples, policy, seed=s) for s in seeds]

    @staticmethod
    def build_requests(policy, images: list[Image.Image], instructions: list[str]) -> list[dict]:
        """One vLLM request per prompt: the chat-templated text and its image."""
        return [
            {"prompt": policy.processor.apply_chat_template(
                policy.build_messages(ins), add_generation_prompt=True, tokenize=False),
             "multi_modal_data": {"image": img}}
            for img, ins in zip(images, instructions)
        ]

    def gather_requests(self, images: list, instructions: list[str], seeds: list[int] | None,
                        num_samples: int) -> tuple[list, list[str], list[int] | None, slice]:
        """This rank's requests joined with those of the other ranks of its tensor-parallel
        group (in rank order, the same lists on every rank of the group), and the slice of
        them that is this rank's. Without tensor parallelism: this rank's, and all of them."""
        group = self._tp_group()
        if group is None:
            return list(images), list(instructions), seeds, slice(0, len(images))
        import torch.distributed as dist

        group, ranks = group
        parts: list = [None] * len(ranks)
        dist.all_gather_object(parts, (list(images), list(instructions), seeds, num_samples),
                               group=group)
        if any(p[3] != num_samples for p in parts):
            raise RuntimeError(f"the ranks {ranks} of a tensor-parallel group asked for "
                               f"different group sizes {[p[3] for p in parts]}")
        start = sum(len(p[0]) for p in parts[:ranks.index(dist.get_rank())])
        return ([im for p in parts for im in p[0]], [s for p in parts for s in p[1]],
                [s for p in parts for s in p[2]], slice(start, start + len(images)))

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

    def generate(self, policy, images, instructions, num_samples):
        self.setup(policy)
        seeds = self.request_seeds(len(images), num_samples)
        images, instructions, seeds, mine = self.gather_requests(images, instructions, seeds,
                                                                 num_samples)
        self._wake_and_sync(policy)
        try:
            outputs = self._llm.generate(self.build_requests(policy, images, instructions),
                                         self._params(seeds, num_samples, policy),
                                         use_tqdm=False)
        finally:
            self._sleep()
        return self.to_rollouts(policy, outputs[mine])
