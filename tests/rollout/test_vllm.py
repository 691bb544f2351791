"""VLLMRolloutEngine on CPU, against a fake ``vllm`` module with vLLM 0.33's attribute layout.

The fake records what the engine asks of vLLM (``LLM`` keyword arguments, ``SamplingParams``,
weight loads, cache resets, sleep and wake-up); the policies are the real tiny Qwen2.5-VL. What
vLLM itself does with these calls runs only on GPUs (docs/training.md).
"""

import random
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from coprs.rollout import VLLMRolloutEngine
from coprs.rollout.vllm import tp_group_ranks, vllm_weights


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)),
            Image.new("RGB", (80, 80), (20, 200, 30))]


def _fake_vllm(calls: list, param_names=None, reseed: bool = False):
    """A ``vllm`` module whose ``LLM`` and ``SamplingParams`` record their use in ``calls``.

    ``LLM.generate`` answers request k's sample j with one token whose log-prob is
    ``-(10 k + j)``, so a rollout tells which request and sample it came from. The model's
    ``load_weights`` keeps what it was given and reports it all loaded; its parameters are
    ``param_names`` (default: what it was given). ``reseed``: ``LLM()`` reseeds the global random
    streams, as vLLM's worker does."""

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    class Model:
        def __init__(self):
            self.loaded = {}

        def load_weights(self, weights):
            self.loaded = dict(weights)
            calls.append(("load_weights",))
            return set(self.loaded)

        def named_parameters(self):
            return ((n, None) for n in (param_names if param_names is not None else self.loaded))

    class LLM:
        instances: list = []

        def __init__(self, **kwargs):
            if reseed:
                random.seed(0)
                np.random.seed(0)
                torch.manual_seed(0)
            self.kwargs = kwargs
            self.model = Model()
            worker = types.SimpleNamespace(get_model=lambda: self.model)
            self.llm_engine = types.SimpleNamespace(
                model_executor=types.SimpleNamespace(
                    driver_worker=types.SimpleNamespace(worker=worker)),
                reset_encoder_cache=lambda: calls.append(("reset_encoder_cache",)))
            LLM.instances.append(self)
            calls.append(("LLM",))

        def sleep(self, level=1, mode="abort"):
            calls.append(("sleep", level))

        def wake_up(self, tags=None):
            calls.append(("wake_up", tuple(tags or ())))
            return tags is None or "kv_cache" in tags

        def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
            calls.append(("reset_prefix_cache",))
            return True

        def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
            calls.append(("generate", len(prompts)))
            self.prompts, self.params = prompts, sampling_params
            many = isinstance(sampling_params, list)
            out = []
            for k in range(len(prompts)):
                n = (sampling_params[k] if many else sampling_params).n
                out.append(types.SimpleNamespace(outputs=[
                    types.SimpleNamespace(token_ids=[7], logprobs=[
                        {7: types.SimpleNamespace(logprob=-(10.0 * k + j))}])
                    for j in range(n)]))
            return out

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install a fake ``vllm`` (:func:`_fake_vllm`); returns (module, calls)."""
    calls: list = []
    module = _fake_vllm(calls)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module, calls


def test_engine_builds_vllm_in_process_with_the_policys_tokenizer_and_pixels(tiny_policy,
                                                                            fake_vllm):
    """The LLM runs in this process per rank (external_launcher), sleeps between rollouts,
    reads the policy's saved tokenizer and pixel budget, takes one image and no video per
    prompt, reports the sampled distribution's log-probs, and keeps the config's settings;
    ``llm_kwargs`` add to them."""
    vllm, _ = fake_vllm
    engine = VLLMRolloutEngine(tensor_parallel_size=1, gpu_memory_utilization=0.3,
                               max_num_seqs=32, max_num_batched_tokens=8192,
                               enable_chunked_prefill=False, dtype="float16",
                               llm_kwargs=dict(max_model_len=4096))
    engine.setup(tiny_policy)
    (llm,) = vllm.LLM.instances
    kw = llm.kwargs
    assert kw["model"] == tiny_policy.model_path and kw["tokenizer"] != tiny_policy.model_path
    assert kw["distributed_executor_backend"] == "external_launcher"
    assert kw["enable_sleep_mode"] is True
    assert kw["logprobs_mode"] == "processed_logprobs"
    assert kw["mm_processor_kwargs"] == {"size": {"shortest_edge": tiny_policy.min_pixels,
                                                  "longest_edge": tiny_policy.max_pixels}}
    assert kw["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert kw["generation_config"] == "vllm"
    assert {k: kw[k] for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_num_seqs",
                               "max_num_batched_tokens", "enable_chunked_prefill", "dtype")} == {
        "tensor_parallel_size": 1, "gpu_memory_utilization": 0.3, "max_num_seqs": 32,
        "max_num_batched_tokens": 8192, "enable_chunked_prefill": False, "dtype": "float16"}
    assert kw["max_model_len"] == 4096 and kw["load_format"] == "dummy"
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(kw["tokenizer"])
    assert saved.get_vocab() == tiny_policy.tokenizer.get_vocab()
    off = VLLMRolloutEngine(sleep_level=None)
    off.setup(tiny_policy)
    assert vllm.LLM.instances[-1].kwargs["enable_sleep_mode"] is False
    assert VLLMRolloutEngine().engine_kwargs(tiny_policy, "t")["load_format"] == "dummy"


@pytest.mark.parametrize("key, instead", [
    ("tensor_parallel_size", "the engine argument tensor_parallel_size"),
    ("enable_sleep_mode", "the engine argument sleep_level"),
    ("model", "model.policy.model_path"),
    ("seed", "seed_requests=True"),
    ("load_format", "the policy's weights are pushed into the engine")])
def test_llm_kwargs_cannot_override_what_the_engine_sets(key, instead):
    """``llm_kwargs=dict(tensor_parallel_size=2)`` would give vLLM 2-way tensor parallelism
    behind the engine's back (its request pooling, evaluation's one-GPU check): refused, with
    the argument to use instead."""
    with pytest.raises(ValueError, match=f"^rollout_engine.llm_kwargs.{key}: the engine sets "
                       f"{key} itself") as err:
        VLLMRolloutEngine(llm_kwargs={key: 2, "max_model_len": 4096})
    assert instead in str(err.value) and "\n" not in str(err.value)


def test_every_argument_the_engine_sets_is_kept_from_llm_kwargs(tiny_policy):
    from coprs.rollout.vllm import ENGINE_SET_KWARGS

    kw = VLLMRolloutEngine(llm_kwargs=dict(max_model_len=4096)).engine_kwargs(tiny_policy, "t")
    assert set(kw) - {"max_model_len"} == set(ENGINE_SET_KWARGS) - {"seed"}


def test_vllm_prompts_tokenize_as_the_policy_encodes_them(tiny_qwen_dir, fake_vllm):
    """vLLM loads the Hugging Face processor from ``model_path`` with the engine's tokenizer and
    calls it on the engine's prompt and image with ``mm_processor_kwargs``: the token ids are
    those of ``policy.encode_prompts``, for a
    policy that adds a token the checkpoint's tokenizer lacks and whose pixel budget differs
    from the checkpoint's processor. The checkpoint's own tokenizer, or the checkpoint's pixel
    budget, would give other ids."""
    from transformers import AutoProcessor, AutoTokenizer

    from coprs.policies import Qwen25VLPolicy

    vllm, _ = fake_vllm
    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), special_token="<NEW_TOK>",
                            max_pixels=2 * 3136)
    assert "<NEW_TOK>" not in AutoTokenizer.from_pretrained(str(tiny_qwen_dir)).get_vocab()
    engine = VLLMRolloutEngine()
    engine.setup(policy)
    kw = vllm.LLM.instances[-1].kwargs
    images = [Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 150, 3),
                                                                dtype=np.uint8)),
              Image.new("RGB", (90, 60), (10, 20, 30))]
    instructions = ["the red one", "a longer instruction here"]
    requests = engine.build_requests(policy, images, instructions)
    pixels = kw["mm_processor_kwargs"]
    expected = policy.encode_prompts(images, instructions)

    def ids(processor, mm_kwargs):
        return [processor(text=[r["prompt"]], images=[r["multi_modal_data"]["image"]],
                          return_tensors="pt", **mm_kwargs)["input_ids"][0].tolist()
                for r in requests]

    want = [row[mask.bool()].tolist()
            for row, mask in zip(expected["input_ids"], expected["attention_mask"])]
    vllm_processor = AutoProcessor.from_pretrained(
        kw["model"], tokenizer=AutoTokenizer.from_pretrained(kw["tokenizer"]))
    assert ids(vllm_processor, pixels) == want
    assert ids(AutoProcessor.from_pretrained(kw["model"]), pixels) != want  # checkpoint's tokens
    assert ids(vllm_processor, {})[0] != want[0]  # the checkpoint's pixel budget


def test_sampling_params_suppress_vision_tokens_and_space_seeds(tiny_policy, fake_vllm):
    """Each request's SamplingParams forbid the vision tokens (bias -inf), stop at the policy's
    stop tokens only, ask for the sampled token's log-prob and no detokenisation; seeded
    requests get seeds G apart, so the G samples of every request (seeds s … s+G-1) draw from
    streams no other sample shares."""
    engine = VLLMRolloutEngine(seed_requests=True, temperature=0.9, top_p=0.8,
                               min_new_tokens=2)
    torch.manual_seed(0)
    params = engine.request_params(5, 8, tiny_policy)
    assert len(params) == 5
    p = params[0]
    assert tiny_policy.suppress_token_ids
    assert p.logit_bias == {t: float("-inf") for t in tiny_policy.suppress_token_ids}
    assert p.stop_token_ids == list(tiny_policy.stop_token_ids) and p.ignore_eos is True
    assert p.logprobs == 0 and p.skip_special_tokens is False and p.detokenize is False
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_tokens, p.max_tokens) == (
        8, 0.9, 0.8, 0, 2, tiny_policy.max_new_tokens)
    seeds = [q.seed for q in params]
    assert [b - a for a, b in zip(seeds, seeds[1:])] == [8] * 4
    assert len({s + j for s in seeds for j in range(8)}) == 5 * 8
    assert seeds[-1] + 7 < 2 ** 31


def test_sync_pushes_the_policys_plain_weights_then_resets_caches(tiny_policy, fake_vllm):
    """Without adapters the engine's model receives every parameter of the policy under its
    transformers name, the tensors themselves (no copies, no buffers); then the prefix and
    encoder caches are reset."""
    vllm, calls = fake_vllm
    engine = VLLMRolloutEngine(sleep_level=None)
    engine.setup(tiny_policy)
    engine.sync_weights(tiny_policy)
    loaded = vllm.LLM.instances[-1].model.loaded
    params = dict(tiny_policy.model.named_parameters(remove_duplicate=False))
    assert loaded.keys() == params.keys()
    assert all(loaded[k] is params[k] for k in params)
    assert not any("rotary" in k for k in loaded)
    assert calls[-3:] == [("load_weights",), ("reset_prefix_cache",), ("reset_encoder_cache",)]


def _lora_policy(tiny_qwen_dir):
    """The tiny policy with LoRA adapters on q/v whose B matrices and added tokens' rows are
    non-zero and moved (so merging changes the weights)."""
    from coprs.policies import Qwen25VLPolicy

    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir),
                            lora=dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n or n.endswith("trainable_tokens_delta.default"):
                p.normal_(0, 0.5)
    return policy


def test_sync_merges_lora_adapters_under_plain_names(tiny_qwen_dir, fake_vllm):
    """With LoRA adapters vLLM gets the plain transformers names (no ``base_layer``, no
    ``lora_`` matrices) and the merged weights of ``policy.merged_state_dict()``; the adapted
    weights differ from the base ones, and the policy's own weights stay unmerged."""
    from coprs.policies import Qwen25VLPolicy

    vllm, _ = fake_vllm
    policy = _lora_policy(tiny_qwen_dir)
    merged = policy.merged_state_dict()
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    engine = VLLMRolloutEngine(sleep_level=None)
    engine.setup(policy)
    engine.sync_weights(policy)
    loaded = vllm.LLM.instances[-1].model.loaded
    plain = Qwen25VLPolicy(model_path=str(tiny_qwen_dir))
    assert loaded.keys() == dict(plain.model.named_parameters(remove_duplicate=False)).keys()
    assert not any("lora_" in k or "base_layer" in k or "trainable_tokens" in k for k in loaded)
    for k, v in loaded.items():
        torch.testing.assert_close(v, merged[k], rtol=0, atol=1e-6, msg=k)
    for q in ("model.language_model.layers.0.self_attn.q_proj.weight", "lm_head.weight",
              "model.language_model.embed_tokens.weight"):  # the tiny policy ties the last two
        assert not torch.allclose(loaded[q], before[q.replace(".weight", ".base_layer.weight")])
    for k, v in policy.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_sync_fails_when_a_vllm_parameter_is_not_written(tiny_policy, monkeypatch):
    """After sleep level 2 an unwritten parameter would hold garbage: the sync raises."""
    calls: list = []
    names = [n for n, _ in tiny_policy.model.named_parameters()] + ["visual.extra.weight"]
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls, param_names=names))
    engine = VLLMRolloutEngine()
    with pytest.raises(RuntimeError, match="visual.extra.weight"):
        engine.generate(tiny_policy, _images()[:1], ["x"], 2)


def test_engine_sleeps_between_rollouts_and_wakes_weights_before_the_sync(tiny_policy,
                                                                          fake_vllm):
    """setup() builds the engine and puts it to sleep; each rollout wakes the weights, writes
    them, wakes the KV cache, resets the caches, generates and sleeps again. Without a sleep
    level nothing sleeps."""
    vllm, calls = fake_vllm
    engine = VLLMRolloutEngine(sleep_level=2, max_new_tokens=3)
    engine.setup(tiny_policy)
    assert calls == [("LLM",), ("sleep", 2)]
    rollout = [("wake_up", ("weights",)), ("load_weights",), ("wake_up", ("kv_cache",)),
               ("reset_prefix_cache",), ("reset_encoder_cache",), ("generate", 2), ("sleep", 2)]
    for _ in range(2):
        del calls[:]
        groups = engine.generate(tiny_policy, _images(), ["a", "b"], 3)
        assert calls == rollout
        assert [[r.logprobs for r in g] for g in groups] == [[[-0.0], [-1.0], [-2.0]],
                                                             [[-10.0], [-11.0], [-12.0]]]
    del calls[:]
    awake = VLLMRolloutEngine(sleep_level=None)
    awake.generate(tiny_policy, _images()[:1], ["a"], 2)
    assert calls == [("LLM",), ("load_weights",), ("reset_prefix_cache",),
                     ("reset_encoder_cache",), ("generate", 1)]


def test_setup_creates_the_engine_once_and_generate_creates_it_without_setup(tiny_policy,
                                                                             fake_vllm):
    """A second setup() and later rollouts reuse the engine; generate() builds it when the loop
    did not call setup()."""
    vllm, _ = fake_vllm
    engine = VLLMRolloutEngine()
    engine.setup(tiny_policy)
    engine.setup(tiny_policy)
    engine.generate(tiny_policy, _images()[:1], ["x"], 2)
    assert len(vllm.LLM.instances) == 1
    lazy = VLLMRolloutEngine()
    lazy.generate(tiny_policy, _images()[:1], ["x"], 2)
    lazy.generate(tiny_policy, _images()[:1], ["x"], 2)
    assert len(vllm.LLM.instances) == 2


def test_setup_keeps_the_training_random_streams(tiny_policy, monkeypatch):
    """vLLM reseeds Python's, numpy's and torch's global streams when it builds its worker;
    setup() puts them back, so the training stream does not depend on the engine."""
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm([], reseed=True))
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    VLLMRolloutEngine().setup(tiny_policy)
    after = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    assert after == (random.random(), np.random.rand(), torch.rand(()).item())


def test_a_run_without_torchrun_gets_the_launch_variables(tiny_policy, fake_vllm, monkeypatch):
    """Without a process group (one process) the engine sets the torchrun variables vLLM's
    external_launcher reads, keeping those already set."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    VLLMRolloutEngine().setup(tiny_policy)
    import os

    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == (
        "0", "0", "1")
    assert os.environ["MASTER_ADDR"] == "10.0.0.1" and os.environ["MASTER_PORT"].isdigit()


def _fake_dist(monkeypatch, world: int, rank: int, others: dict):
    """Make torch.distributed look initialised with ``world`` ranks, this one ``rank``;
    ``all_gather_object`` answers with ``others[r]`` for the other ranks of the group. Returns
    the ranks passed to ``new_group``, in order."""
    import torch.distributed as dist

    groups = []

    def new_group(ranks, backend=None):
        assert backend == "gloo"
        groups.append(list(ranks))
        return tuple(ranks)

    def all_gather_object(out, obj, group=None):
        for i, r in enumerate(group):
            out[i] = obj if r == rank else others[r]

    for name, value in dict(is_available=lambda: True, is_initialized=lambda: True,
                            get_world_size=lambda group=None: world,
                            get_rank=lambda group=None: rank, new_group=new_group,
                            all_gather_object=all_gather_object).items():
        monkeypatch.setattr(dist, name, value)
    return groups


def test_tensor_parallel_ranks_generate_their_groups_requests_and_keep_their_own(tiny_policy,
                                                                                  fake_vllm,
                                                                                  monkeypatch):
    """With tensor_parallel_size=4 over 8 ranks, rank 5 is in the group [4, 5, 6, 7] (vLLM's
    consecutive layout): every rank creates both groups, rank 5 sends its requests with their
    seeds to its group, the engine generates the group's requests in rank order (the same
    list on every rank of the group) and rank 5 gets back only its own rollouts, in order."""
    vllm, _ = fake_vllm
    img = Image.new("RGB", (60, 60))
    others = {4: ([img, img], ["four a", "four b"], [100, 104], 4),
              6: ([img], ["six a"], [200], 4),
              7: ([img, img, img], ["seven a", "seven b", "seven c"], [300, 304, 308], 4)}
    groups = _fake_dist(monkeypatch, world=8, rank=5, others=others)
    engine = VLLMRolloutEngine(tensor_parallel_size=4)  # seeds even without seed_requests
    engine.setup(tiny_policy)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert vllm.LLM.instances[-1].kwargs["tensor_parallel_size"] == 4
    torch.manual_seed(0)
    out = engine.generate(tiny_policy, _images(), ["five a", "five b"], 4)
    llm = vllm.LLM.instances[-1]
    asked = ["four a", "four b", "five a", "five b", "six a", "seven a", "seven b", "seven c"]
    assert len(llm.prompts) == len(asked)
    assert all(ins in req["prompt"] for ins, req in zip(asked, llm.prompts))
    seeds = [p.seed for p in llm.params]
    torch.manual_seed(0)
    mine = engine.request_seeds(2, 4)
    assert seeds == [100, 104, *mine, 200, 300, 304, 308]
    assert [[r.logprobs[0] for r in g] for g in out] == [[-20.0, -21.0, -22.0, -23.0],
                                                         [-30.0, -31.0, -32.0, -33.0]]
    assert len(groups) == 2  # the groups are made once


def test_tensor_parallel_needs_a_world_it_divides(tiny_policy, fake_vllm, monkeypatch):
    """tensor_parallel_size must divide the world size, and needs a distributed run; both are
    reported before any engine is built."""
    vllm, _ = fake_vllm
    with pytest.raises(RuntimeError, match="tensor_parallel_size=2"):
        VLLMRolloutEngine(tensor_parallel_size=2).setup(tiny_policy)
    _fake_dist(monkeypatch, world=6, rank=0, others={})
    with pytest.raises(ValueError, match="tensor_parallel_size=4 does not divide the 6"):
        VLLMRolloutEngine(tensor_parallel_size=4).setup(tiny_policy)
    assert vllm.LLM.instances == []
    assert tp_group_ranks(8, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="sleep_level"):
        VLLMRolloutEngine(sleep_level=3)


def test_vllm_weights_under_fsdp_use_the_gathered_plain_names(tiny_qwen_dir, tmp_path):
    """Under FSDP (one gloo rank, CPU), inside the gathered-parameters block, the weights are
    the full tensors under the names without FSDP's prefixes, LoRA merged as without FSDP."""
    import functools

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from coprs.engine.fsdp import full_params, wrap_layers

    policy = _lora_policy(tiny_qwen_dir)
    want = {k: v.clone() for k, v in vllm_weights(policy)}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    try:
        policy.model = FSDP(policy.model, device_id=torch.device("cpu"), use_orig_params=True,
                            auto_wrap_policy=functools.partial(
                                wrap_layers, layer_names=["Qwen2_5_VLDecoderLayer"]))
        with full_params(policy.model):
            got = {k: v.clone() for k, v in vllm_weights(policy)}
    finally:
        dist.destroy_process_group()
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)


def test_greedy_evaluation_pushes_fixed_weights_once(tiny_policy, fake_vllm):
    """For evaluation (``coprs test --vllm``) the engine decodes greedily (temperature 0,
    whatever the sampling settings) and, with ``weights_fixed``, pushes the weights at the
    first call only; training's engine pushes them before every rollout."""
    vllm, calls = fake_vllm
    engine = VLLMRolloutEngine(greedy=True, weights_fixed=True, sleep_level=None,
                               temperature=0.7, top_p=0.5, top_k=3, max_new_tokens=5)
    params = engine.sampling_params(1, tiny_policy)
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.0, 1.0, 0, 5)
    for _ in range(3):
        engine.generate(tiny_policy, _images(), ["a", "b"], 1)
    assert [c for c in calls if c[0] == "load_weights"] == [("load_weights",)]
    assert [c for c in calls if c[0] == "generate"] == [("generate", 2)] * 3
    del calls[:]
    training = VLLMRolloutEngine(sleep_level=None)
    for _ in range(2):
        training.generate(tiny_policy, _images(), ["a", "b"], 1)
    assert [c for c in calls if c[0] == "load_weights"] == [("load_weights",)] * 2
    with pytest.raises(ValueError, match="temperature"):
        VLLMRolloutEngine(temperature=0)  # sampling at temperature 0 is no GRPO
    VLLMRolloutEngine(greedy=True, temperature=0)  # greedy: the temperature is unused


def test_coprs_test_vllm_writes_the_generated_responses_with_vllm(tmp_path, fake_vllm,
                                                                  monkeypatch, capsys):
    """``coprs test --vllm`` builds one greedy vLLM engine for the run, pushes the checkpoint's
    weights into it once, and scores the responses it writes; gold reasoning is teacher-forced
    without it. A --cfg-options key of the engine is kept."""
    import json

    from mmengine.config import Config

    from coprs.cli import main

    from ..conftest import TINY_CONFIG  # noqa: TID252

    # what the engine sets for a run without torchrun, undone after the test
    for key, value in dict(MASTER_PORT="29561", MASTER_ADDR="127.0.0.1", RANK="0",
                           LOCAL_RANK="0", WORLD_SIZE="1").items():
        monkeypatch.setenv(key, value)
    vllm, calls = fake_vllm
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [dict(cfg.test_cfg.datasets[0], num_samples=4)]
    cfg.test_dataloader.batch_size = 2
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["test", str(tmp_path / "cfg.py"), "--vllm", "--reasoning", "generated", "gold",
                 "--max-new-tokens", "6", "--work-dir", str(tmp_path / "w"),
                 "--out", str(tmp_path / "r.json"), "--cfg-options",
                 "test_cfg.generation_engine.gpu_memory_utilization=0.7"]) == 0
    (llm,) = vllm.LLM.instances
    assert llm.kwargs["gpu_memory_utilization"] == 0.7 and llm.kwargs["enable_sleep_mode"] is False
    assert [c for c in calls if c[0] == "load_weights"] == [("load_weights",)]
    assert [c for c in calls if c[0] == "generate"] == [("generate", 2)] * 2  # generated only
    assert llm.params.temperature == 0.0 and llm.params.max_tokens == 6 and llm.params.n == 1
    records = [json.loads(x) for x in (tmp_path / "w" / "per_sample_generated" / "shapes_test"
                                       / "per_sample.jsonl").read_text().splitlines()]
    # the fake answers every request with token 7: each response is that token's text
    assert len(records) == 4 and len({r["response"] for r in records}) == 1
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["gold"]["shapes/test"]["format_rate"] == 1.0
    assert main(["test", str(tmp_path / "cfg.py"), "--vllm", "--cfg-options",
                 "test_cfg.generation_engine.type=HFRolloutEngine"]) == 2
    assert "--vllm, but the config's test_cfg.generation_engine is a HFRolloutEngine" in \
        capsys.readouterr().err
    assert main(["test", str(tmp_path / "cfg.py"), "--vllm", "--work-dir", str(tmp_path / "tp"),
                 "--cfg-options", "test_cfg.generation_engine.tensor_parallel_size=2"]) == 2
    assert "tensor_parallel_size=2: evaluation generates with one GPU per process" in \
        capsys.readouterr().err


def test_coprs_test_vllm_without_vllm_is_a_one_line_error_before_the_build(tmp_path, monkeypatch,
                                                                           capsys):
    from coprs.cli import main

    from ..conftest import TINY_CONFIG  # noqa: TID252

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    assert main(["test", str(TINY_CONFIG), "--vllm", "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--vllm: VLLMRolloutEngine needs vLLM, an optional GPU extra: pip install -e '.[vllm]'" \
        in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing built, nothing written
