import types

import numpy as np
import pytest
import torch
from PIL import Image

from coprs.registry import ROLLOUT_ENGINES
from coprs.rollout import HFRolloutEngine, VLLMRolloutEngine


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)),
            Image.new("RGB", (80, 80), (20, 200, 30))]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefill_equals_naive_generation(tiny_policy, temperature):
    imgs, ins = _images(), ["find it", "a longer instruction here"]
    shared = HFRolloutEngine(max_new_tokens=10, temperature=temperature)
    naive = HFRolloutEngine(max_new_tokens=10, temperature=temperature, share_prefill=False)
    torch.manual_seed(3)
    a = shared.generate(tiny_policy, imgs, ins, num_samples=4)
    torch.manual_seed(3)
    b = naive.generate(tiny_policy, imgs, ins, num_samples=4)
    assert [len(g) for g in a] == [4, 4]
    for ga, gb in zip(a, b):
        for ra, rb in zip(ga, gb):
            assert ra.token_ids == rb.token_ids
            np.testing.assert_allclose(ra.logprobs, rb.logprobs, atol=1e-4)
    # a group's samples differ (sampling), and the log-probs are proper
    assert len({tuple(r.token_ids) for r in a[0]}) > 1
    assert all(lp <= 0 for g in a for r in g for lp in r.logprobs)


@pytest.mark.parametrize("settings", [dict(temperature=0.7, top_p=0.9),
                                      dict(temperature=1.3, top_k=20),
                                      dict(min_new_tokens=10)])
def test_shared_prefill_equals_naive_under_other_sampling_settings(tiny_policy, settings):
    imgs, ins = _images(), ["find it", "a longer instruction here"]
    torch.manual_seed(5)
    a = HFRolloutEngine(max_new_tokens=10, **settings).generate(tiny_policy, imgs, ins, 3)
    torch.manual_seed(5)
    b = HFRolloutEngine(max_new_tokens=10, share_prefill=False, **settings).generate(
        tiny_policy, imgs, ins, 3)
    assert [[r.token_ids for r in g] for g in a] == [[r.token_ids for r in g] for g in b]
    if "min_new_tokens" in settings:
        assert all(len(r.token_ids) == 10 for g in a for r in g)


def test_greedy_decoding_honours_min_new_tokens(tiny_qwen_dir):
    """The evaluation path (``greedy=True``) forbids the end tokens before ``min_new_tokens``,
    as sampling and the vLLM engine do."""
    from coprs.policies import Qwen25VLPolicy

    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                            stop_at_special_token=True)
    end = torch.tensor([policy.special_token_id])
    # <REF_POS> the most likely token everywhere: greedy decoding stops at once
    policy.model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, end, 50.0))
    imgs, ins = _images(), ["find it", "a longer instruction here"]
    free = HFRolloutEngine(greedy=True, max_new_tokens=12).generate(policy, imgs, ins, 1)
    held = HFRolloutEngine(greedy=True, max_new_tokens=12, min_new_tokens=6).generate(
        policy, imgs, ins, 1)
    assert min(len(g[0].token_ids) for g in free) < 6
    assert all(len(g[0].token_ids) >= 6 for g in held)


def test_hidden_states_kept_while_sampling_equal_the_readout(tiny_qwen_dir):
    from coprs.policies import Qwen25VLPolicy
    from coprs.structures import Rollout

    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                            stop_at_special_token=True)
    with torch.no_grad():  # make <REF_POS> likely so that rows stop at different steps
        policy.model.lm_head.weight[policy.special_token_id] *= 12
    imgs, ins = _images(), ["find it", "a longer instruction here"]
    seen = 0
    for seed in range(4):
        torch.manual_seed(seed)
        groups = HFRolloutEngine(max_new_tokens=8).generate(policy, imgs, ins, 4)
        rs = [r for g in groups for r in g]
        for r in rs:  # kept exactly for the rollouts that wrote the token
            assert (r.hidden is not None) == (policy.special_token_id in r.token_ids)
        kept = [i for i, r in enumerate(rs) if r.hidden is not None]
        seen += len(kept)
        if kept:
            ref = policy.readout([imgs[i // 4] for i in kept], [ins[i // 4] for i in kept],
                                 [Rollout(rs[i].text, rs[i].token_ids) for i in kept])
            torch.testing.assert_close(torch.stack([rs[i].hidden for i in kept]), ref.hidden,
                                       atol=1e-4, rtol=1e-4)
    assert seen > 0


def test_shared_prefill_without_sdpa_repeats_the_cache(tiny_qwen_dir):
    from coprs.policies import Qwen25VLPolicy

    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                            attn_implementation="eager")
    imgs, ins = _images(), ["find it", "a longer instruction here"]
    torch.manual_seed(1)
    a = HFRolloutEngine(max_new_tokens=6).generate(policy, imgs, ins, 3)
    torch.manual_seed(1)
    b = HFRolloutEngine(max_new_tokens=6, share_prefill=False).generate(policy, imgs, ins, 3)
    assert [[r.token_ids for r in g] for g in a] == [[r.token_ids for r in g] for g in b]


def test_group_attention_is_uninstalled_after_sampling(tiny_policy):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    HFRolloutEngine(max_new_tokens=2).generate(tiny_policy, _images()[:1], ["x"], 2)
    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping


def test_engine_restores_train_mode(tiny_policy):
    tiny_policy.model.train()
    HFRolloutEngine(max_new_tokens=2).generate(tiny_policy, _images()[:1], ["x"], 2)
    assert tiny_policy.model.training
    tiny_policy.model.eval()


def test_registry_builds_engines():
    assert isinstance(ROLLOUT_ENGINES.build(dict(type="HFRolloutEngine")), HFRolloutEngine)


def test_vllm_engine_names_the_extra_when_missing(tiny_policy, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # as on machines without the extra
    with pytest.raises(ImportError, match=r"\.\[vllm\]"):
        VLLMRolloutEngine().generate(tiny_policy, _images()[:1], ["x"], 2)


def test_vllm_requests_and_output_parsing(tiny_policy):
    reqs = VLLMRolloutEngine.build_requests(tiny_policy, _images(), ["a", "b"])
    assert len(reqs) == 2 and "<|image_pad|>" in reqs[0]["prompt"]
    assert reqs[1]["multi_modal_data"]["image"].size == (80, 80)
    tok = tiny_policy.tokenizer
    ids = tok.encode("<think>x</think><REF_POS>", add_special_tokens=False)
    step = [{t: types.SimpleNamespace(logprob=-0.5)} for t in ids]
    comp = types.SimpleNamespace(token_ids=ids, logprobs=step)
    out = VLLMRolloutEngine.to_rollouts(tiny_policy, [types.SimpleNamespace(outputs=[comp])])
    assert out[0][0].text == "<think>x</think><REF_POS>"
    assert out[0][0].logprobs == [-0.5] * len(ids)


def test_vllm_seeded_requests_follow_torch_stream(tiny_policy, monkeypatch):
    """With seed_requests, each request gets its own seed from torch's (loop-seeded) stream:
    the same stream gives the same seeds, requests get distinct ones; off, vLLM's own
    generator samples (no seed)."""
    import sys

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=dict))
    engine = VLLMRolloutEngine(seed_requests=True, max_new_tokens=5)
    torch.manual_seed(3)
    first = engine.request_params(3, 8, tiny_policy)
    torch.manual_seed(3)
    again = engine.request_params(3, 8, tiny_policy)
    assert [p["seed"] for p in first] == [p["seed"] for p in again]
    assert len({p["seed"] for p in first}) == 3
    assert all(p["n"] == 8 and p["max_tokens"] == 5 for p in first)
    assert [p["seed"] for p in engine.request_params(3, 8, tiny_policy)] != [
        p["seed"] for p in first]  # the stream moved on
    plain = VLLMRolloutEngine(max_new_tokens=5).request_params(3, 8, tiny_policy)
    assert isinstance(plain, dict) and plain["seed"] is None


def test_cache_keyword_follows_the_forward_signature(tiny_policy):
    """transformers 5.24 takes the key/value cache as ``cache``; the 5.20 that vLLM 0.33 pins
    as ``past_key_values``, and swallows an unknown ``cache=`` into ``**kwargs``."""
    from coprs.rollout.hf import cache_keyword

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
            return input_ids

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
            return input_ids

    assert cache_keyword(Old()) == "past_key_values" and cache_keyword(New()) == "cache"
    assert cache_keyword(tiny_policy.model.model) in ("cache", "past_key_values")
