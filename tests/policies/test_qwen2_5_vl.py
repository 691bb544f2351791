import numpy as np
import pytest
import torch
from PIL import Image

from coprs.policies import Qwen25VLPolicy
from coprs.structures import Rollout


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8))]


def _rollout(policy, text):
    return Rollout(text=text, token_ids=policy.tokenizer.encode(text, add_special_tokens=False))


def test_readout_reads_the_ref_pos_position(tiny_policy):
    imgs = _images()[:1]
    r = _rollout(tiny_policy, "<think>the red circle</think><REF_POS>")
    out = tiny_policy.readout(imgs, ["find it"], [r])
    # reference: forward the same sequence and index the REF_POS token by hand
    batch = tiny_policy.encode_prompts(imgs, ["find it"])
    ids = torch.cat([batch["input_ids"], torch.tensor([r.token_ids])], dim=1)
    with torch.no_grad():
        ref = tiny_policy.model(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
            mm_token_type_ids=(ids == tiny_policy.image_token_id).long(),
            output_hidden_states=True).hidden_states[-1]
    # the prompt mentions <REF_POS> too; the readout takes the one in the response
    pos = int((ids[0] == tiny_policy.special_token_id).nonzero()[-1])
    assert pos >= batch["input_ids"].shape[1]
    assert out.has_token == [True]
    torch.testing.assert_close(out.hidden[0], ref[0, pos])
    # a different position gives a different state (the readout is position-specific)
    assert not torch.allclose(out.hidden[0], ref[0, pos - 1])


def test_readout_is_independent_of_batch_padding(tiny_policy):
    imgs = _images()
    rs = [_rollout(tiny_policy, "<think>a</think><REF_POS>"),
          _rollout(tiny_policy, "<think>a much longer chain of thought here</think><REF_POS>")]
    both = tiny_policy.readout(imgs, ["x", "a longer instruction"], rs).hidden
    one = tiny_policy.readout(imgs[:1], ["x"], rs[:1]).hidden
    two = tiny_policy.readout(imgs[1:], ["a longer instruction"], rs[1:]).hidden
    torch.testing.assert_close(both[0], one[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both[1], two[0], atol=1e-4, rtol=1e-4)


def test_missing_ref_pos_is_appended_not_raised(tiny_policy):
    imgs = _images()[:1]
    bad = _rollout(tiny_policy, "<think>no token here</think><|im_end|>")
    fixed = _rollout(tiny_policy, "<think>no token here</think><REF_POS>")
    a = tiny_policy.readout(imgs, ["x"], [bad])
    b = tiny_policy.readout(imgs, ["x"], [fixed])
    assert a.has_token == [False] and b.has_token == [True]
    torch.testing.assert_close(a.hidden, b.hidden)


def test_greedy_generation_is_deterministic_and_never_writes_image_tokens(tiny_policy):
    imgs = _images()
    a = tiny_policy.generate(imgs, ["x", "y"], max_new_tokens=12)
    b = tiny_policy.generate(imgs, ["x", "y"], max_new_tokens=12)
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    for g in a:
        assert not set(g[0].token_ids) & set(tiny_policy.suppress_token_ids)
        assert g[0].logprobs is None


def test_sampled_logprobs_match_a_forward_pass(tiny_policy):
    imgs = _images()[:1]
    torch.manual_seed(0)
    groups = tiny_policy.generate(imgs, ["x"], num_samples=3, do_sample=True, max_new_tokens=8)
    assert len(groups) == 1 and len(groups[0]) == 3
    r = groups[0][0]
    assert len(r.logprobs) == len(r.token_ids)
    batch = tiny_policy.encode_prompts(imgs, ["x"])
    ids = torch.cat([batch["input_ids"], torch.tensor([r.token_ids])], dim=1)
    with torch.no_grad():
        out = tiny_policy.model(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
            mm_token_type_ids=(ids == tiny_policy.image_token_id).long())
    n = len(r.token_ids)
    logits = out.logits[0, -n - 1:-1].float()
    logits[:, tiny_policy.suppress_token_ids] = -float("inf")
    ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(r.logprobs), ref, atol=1e-4, rtol=1e-4)


def test_flash_attention_with_float32_weights_is_refused_before_loading(tmp_path):
    # checked before anything is read: the folder need not exist
    with pytest.raises(ValueError, match="flash_attention_2.*float32.*attn_implementation='sdpa'"):
        Qwen25VLPolicy(model_path=str(tmp_path / "nowhere"), torch_dtype="float32",
                       attn_implementation="flash_attention_2")


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        Qwen25VLPolicy(model_path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="model_path"):
        Qwen25VLPolicy()


def test_new_special_token_is_added_and_embeddings_resized(tiny_qwen_dir):
    p = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), special_token="<LOC_TOKEN>",
                       max_pixels=112 * 112)
    assert p.tokenizer.convert_tokens_to_ids("<LOC_TOKEN>") == p.special_token_id
    assert p.model.get_input_embeddings().weight.shape[0] >= len(p.tokenizer)
    assert len(p.tokenizer.encode("<LOC_TOKEN>", add_special_tokens=False)) == 1


def test_stop_at_special_token(tiny_qwen_dir):
    p = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                       stop_at_special_token=True)
    assert p.special_token_id in p.stop_token_ids
    assert p.special_token_id not in p.eos_token_ids
    ids = p.tokenizer.encode("<think>a</think><REF_POS> tail", add_special_tokens=False)
    n = p._response_length(ids)
    assert ids[n - 1] == p.special_token_id  # the response ends at the token, tail dropped
    assert p.decode(ids[:n]).endswith("<REF_POS>")  # and the token stays in the text


def test_repeated_prompts_are_encoded_once_with_the_same_result(tiny_policy):
    from coprs.utils import repeat_each

    imgs, ins = _images(), ["find it", "a longer instruction here"]
    shared = tiny_policy.encode_prompts(repeat_each(imgs, 3), repeat_each(ins, 3))
    copies = tiny_policy.encode_prompts([im.copy() for im in repeat_each(imgs, 3)],
                                        repeat_each(ins, 3))
    assert shared.keys() == copies.keys()
    for k in shared:
        assert torch.equal(shared[k], copies[k]), k


def test_readout_uses_hidden_states_kept_by_the_rollout(tiny_policy):
    imgs = _images()
    rs = [_rollout(tiny_policy, "<think>a</think><REF_POS>"),
          _rollout(tiny_policy, "<think>b</think><REF_POS>")]
    ref = tiny_policy.readout(imgs, ["x", "y"], rs)
    kept = Rollout(rs[0].text, rs[0].token_ids, hidden=torch.full_like(ref.hidden[0], 7.0))
    out = tiny_policy.readout(imgs, ["x", "y"], [kept, rs[1]])
    assert torch.equal(out.hidden[0], kept.hidden)  # not recomputed
    torch.testing.assert_close(out.hidden[1], ref.hidden[1])  # the other one forwarded
    assert out.has_token == [True, True]


def test_encoded_prompts_are_reused_by_content(tiny_policy, monkeypatch):
    imgs, ins = _images(), ["find it", "a longer instruction here"]
    first = tiny_policy.encode_prompts(imgs, ins)
    processor, calls = tiny_policy.processor, []

    class Counting:
        apply_chat_template = processor.apply_chat_template

        def __call__(self, *args, **kwargs):
            calls.append(1)
            return processor(*args, **kwargs)

    monkeypatch.setattr(tiny_policy, "processor", Counting())
    again = tiny_policy.encode_prompts([im.copy() for im in imgs], ins)  # same pixels
    assert not calls and all(torch.equal(first[k], again[k]) for k in first)
    changed = imgs[1].copy()
    changed.putpixel((0, 0), (255, 0, 0))
    tiny_policy.encode_prompts([imgs[0], changed], ins)
    assert calls == [1]


def test_freeze_vision_tower_keeps_the_tower_out_of_training(tiny_qwen_dir):
    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                            max_new_tokens=8, freeze_vision_tower=True)
    visual = policy.model.model.visual
    assert not any(p.requires_grad for p in visual.parameters())
    assert all(p.requires_grad for p in policy.model.model.language_model.parameters())
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    trainable = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8))
    rollout = Rollout(text="<think>a</think><REF_POS>",
                      token_ids=policy.tokenizer.encode("<think>a</think><REF_POS>",
                                                        add_special_tokens=False))
    fwd = policy.forward_responses([image], ["find it"], [rollout])
    logp, mask = policy.response_logprobs(fwd)
    (-(logp * mask).sum()).backward()
    assert all(p.grad is None for p in visual.parameters())
    opt.step()
    for k, v in visual.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    # the default trains the tower
    default = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112)
    assert all(p.requires_grad for p in default.model.model.visual.parameters())


def test_shared_images_are_encoded_once_with_the_same_result_and_gradient(tiny_qwen_dir,
                                                                         monkeypatch):
    """A GRPO group's G rows share one image object: the vision tower runs once per distinct
    image, and log-probs, hidden states and vision-tower gradients equal those of G copies."""
    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112)
    rng = np.random.default_rng(0)
    a, b = (Image.fromarray(rng.integers(0, 255, (112, 112, 3), np.uint8)) for _ in range(2))
    texts = ["<think>x</think><REF_POS>", "<think>y y</think><REF_POS>", "<think>z</think>"]
    rollouts = [Rollout(text=t, token_ids=policy.tokenizer.encode(t, add_special_tokens=False))
                for t in texts * 2]
    instructions = ["find it"] * 6
    calls = []
    visual = policy.model.model.visual
    original = visual.forward
    monkeypatch.setattr(visual, "forward",
                        lambda *args, **kw: calls.append(kw["grid_thw"].shape[0])
                        or original(*args, **kw))

    def run(images):
        policy.model.zero_grad()
        fwd = policy.forward_responses(images, instructions, rollouts)
        logp, mask = policy.response_logprobs(fwd)
        (-(logp * mask).sum()).backward()
        grads = [p.grad.clone() for p in visual.parameters()]
        return logp.detach(), fwd.last_hidden.detach(), grads

    shared = run([a, a, a, b, b, b])
    assert calls == [2]  # two distinct images, encoded once
    copies = run([a.copy(), a.copy(), a.copy(), b.copy(), b.copy(), b.copy()])
    assert calls == [2, 6]
    for x, y in zip(shared[:2], copies[:2]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    for x, y in zip(shared[2], copies[2]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in shared[2])


def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(tiny_qwen_dir):
    """``gradient_checkpointing=True`` (the 8-GPU leaf's switch) reruns each decoder layer's
    forward in the backward pass instead of keeping its activations; log-probs and gradients
    stay those of the plain policy."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (112, 112, 3), np.uint8))
    text = "<think>the red circle</think><REF_POS>"

    def run(checkpointing):
        torch.manual_seed(0)
        policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                                gradient_checkpointing=checkpointing)
        policy.train()
        calls = []
        # a module inside the layer: the backward recomputes the layer's forward, attention first
        layer = policy.model.model.language_model.layers[0]
        layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
        fwd = policy.forward_responses([image], ["find it"], [_rollout(policy, text)])
        logp, mask = policy.response_logprobs(fwd)
        (-(logp * mask).sum() + fwd.last_hidden.pow(2).mean()).backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        return logp.detach(), grads, len(calls), layer.gradient_checkpointing

    plain, ckpt = run(False), run(True)
    assert (plain[2], plain[3]) == (1, False)
    assert (ckpt[2], ckpt[3]) == (2, True)  # attention ran again in the backward pass
    torch.testing.assert_close(ckpt[0], plain[0])
    assert ckpt[1].keys() == plain[1].keys() and len(plain[1]) > 0
    for name, grad in plain[1].items():
        torch.testing.assert_close(ckpt[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_tower_cache_gives_the_same_forward_and_skips_the_tower(tiny_qwen_dir):
    """With a frozen tower, ``tower_cache`` keeps each (image, instruction)'s tokenised prompt
    and tower output: the forward equals the uncached one (hidden states, log-probs, gradients
    of the language model), a pair seen before runs neither the processor nor the tower, the
    least recently used entry goes first, and loading weights empties the cache."""
    kw = dict(model_path=str(tiny_qwen_dir), max_pixels=112 * 112, freeze_vision_tower=True)
    plain, cached = Qwen25VLPolicy(**kw), Qwen25VLPolicy(**kw, tower_cache=3)
    cached.load_state_dict(plain.state_dict())
    rng = np.random.default_rng(0)
    a, b, c = (Image.fromarray(rng.integers(0, 255, (112, 84 + 28 * i, 3), np.uint8))
               for i in range(3))
    texts = ["<think>x</think><REF_POS>", "<think>y y y</think><REF_POS>", "<think>z</think>"]
    rollouts = [Rollout(text=t, token_ids=plain.tokenizer.encode(t, add_special_tokens=False))
                for t in texts]
    tower_calls, prompt_calls = [], []
    cached.model.model.visual.register_forward_hook(lambda *_: tower_calls.append(1))
    encode = cached.encode_prompts
    cached.encode_prompts = lambda *a, **k: prompt_calls.append(1) or encode(*a, **k)

    def run(policy, images, instructions):
        policy.zero_grad()
        fwd = policy.forward_responses(images, instructions, rollouts)
        logp, mask = policy.response_logprobs(fwd)
        (-(logp * mask).sum()).backward()
        grad = policy.model.lm_head.weight.grad.clone()
        return fwd.policy_output(texts).hidden.detach(), logp.detach(), grad

    # a GRPO-like batch: the same image object twice, with the same instruction
    images, instructions = [a, a, b], ["find it", "find it", "the other one"]
    want = run(plain, images, instructions)
    got = run(cached, images, instructions)
    assert len(cached._tower_entries) == 2 and tower_calls == [1] and prompt_calls == [1]
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    # fresh image objects with the same pixels: served from the cache, same result
    copies = [Image.fromarray(np.asarray(im)) for im in images]
    again = run(cached, copies, instructions)
    assert tower_calls == [1] and prompt_calls == [1]
    for w, g in zip(want, again):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    # a new instruction on a cached image is a new entry; over 3 entries the least recently
    # used, (b, "the other one"), is dropped
    run(cached, [a, b, c], ["find it", "find it", "find it"])
    assert tower_calls == [1, 1] and prompt_calls == [1, 1] and len(cached._tower_entries) == 3
    assert [k[3] for k in cached._tower_entries] == ["find it"] * 3
    # another model (the frozen GRPO reference) runs its own tower, never this cache
    plain_calls = []
    plain.model.model.visual.register_forward_hook(lambda *_: plain_calls.append(1))
    cached.forward_responses(images, instructions, rollouts, model=plain.model)
    assert plain_calls == [1] and tower_calls == [1, 1]
    cached.load_state_dict(plain.state_dict())
    assert len(cached._tower_entries) == 0


def test_tower_cache_needs_a_frozen_tower(tiny_qwen_dir):
    with pytest.raises(ValueError, match="freeze_vision_tower=True"):
        Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112, tower_cache=8)
    with pytest.raises(ValueError, match="tower_cache=-1"):
        Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                       freeze_vision_tower=True, tower_cache=-1)


def test_generation_after_a_forced_prefix(tiny_policy, monkeypatch):
    imgs, instructions = _images(), ["find it", "find the other one"]
    prefixes = ["<think>I see a red circle.", "<think>I"]  # different lengths: left padding
    seen, generate = [], tiny_policy.model.generate
    monkeypatch.setattr(tiny_policy.model, "generate",
                        lambda **kw: seen.append(kw) or generate(**kw))
    groups = tiny_policy.generate(imgs, instructions, max_new_tokens=4, prefixes=prefixes)
    monkeypatch.undo()
    prompts = tiny_policy.encode_prompts(imgs, instructions)
    for b, (prefix, (rollout,)) in enumerate(zip(prefixes, groups)):
        prefix_ids = tiny_policy.tokenizer.encode(prefix, add_special_tokens=False)
        assert rollout.text.startswith(prefix) and rollout.token_ids[:len(prefix_ids)] == prefix_ids
        # what generation saw: exactly the unpadded prompt, then the prefix
        attended = seen[0]["input_ids"][b][seen[0]["attention_mask"][b].bool()].tolist()
        prompt = prompts["input_ids"][b][prompts["attention_mask"][b].bool()].tolist()
        assert attended == prompt + prefix_ids
    for img, ins, prefix, (rollout,) in zip(imgs, instructions, prefixes, groups):
        prefix_ids = tiny_policy.tokenizer.encode(prefix, add_special_tokens=False)
        # reference: the same row alone, prompt and prefix ids concatenated (no padding)
        batch = tiny_policy.encode_prompts([img], [ins])
        ids = torch.cat([batch["input_ids"], torch.tensor([prefix_ids])], dim=1)
        ref = tiny_policy.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
            mm_token_type_ids=(ids == tiny_policy.image_token_id).long(),
            **tiny_policy.generation_kwargs(max_new_tokens=4)).sequences[0, ids.shape[1]:]
        new = rollout.token_ids[len(prefix_ids):]
        assert 0 < len(new) <= 4 and new == ref.tolist()[:len(new)]
    with pytest.raises(ValueError, match="greedy only"):
        tiny_policy.generate(imgs, instructions, do_sample=True, prefixes=prefixes)
    with pytest.raises(ValueError, match="2 prompts"):
        tiny_policy.generate(imgs, instructions, prefixes=prefixes[:1])


def test_entropy_at_each_response_token_over_the_writable_vocabulary(tiny_policy):
    """``with_entropy``: −Σ p log p of the next-token distribution at every response position,
    the suppressed (vision) tokens excluded, 0 on padding; with a gradient only when asked."""
    policy = tiny_policy
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (112, 112, 3), np.uint8))
    texts = ["<think>a b c</think><REF_POS>", "<think>a</think><REF_POS>"]
    rollouts = [Rollout(text=t, token_ids=policy.tokenizer.encode(t, add_special_tokens=False))
                for t in texts]
    fwd = policy.forward_responses([image, image], ["find it"] * 2, rollouts)
    logp, mask, ent = policy.response_logprobs(fwd, with_entropy=True)
    assert torch.equal(logp, policy.response_logprobs(fwd)[0])
    assert ent.requires_grad
    for i, r in enumerate(rollouts):
        n = len(r.token_ids)
        pos = torch.arange(fwd.resp_start[i] - 1, fwd.resp_start[i] - 1 + n)
        logits = fwd.lm_head(fwd.last_hidden[i, pos]).float()
        keep = torch.ones(logits.shape[-1], dtype=torch.bool)
        keep[policy.suppress_token_ids] = False
        p = torch.softmax(logits[:, keep], dim=-1)
        expected = -(p * p.log()).sum(-1)
        torch.testing.assert_close(ent[i, :n], expected, rtol=1e-5, atol=1e-5)
        assert not ent[i, n:].any()  # padding
        assert (expected > 0).all() and (expected <= np.log(int(keep.sum())) + 1e-4).all()
    assert not policy.response_logprobs(fwd, with_entropy=True, entropy_grad=False)[2].requires_grad
    policy.zero_grad()
    ent.sum().backward()  # finite although the suppressed tokens have probability 0
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    policy.zero_grad()


def test_checkpoint_generation_settings_do_not_change_decoding(tiny_qwen_dir, tmp_path, caplog):
    """A generation_config.json with a repetition penalty (as Qwen2.5-VL-Instruct ships) keeps
    its token ids and loses the rest: greedy answers and rollout log-probs stay plain."""
    import json
    import shutil

    from coprs.rollout.hf import _sampling_parts

    path = tmp_path / "qwen"
    shutil.copytree(tiny_qwen_dir, path)
    cfg = json.loads((path / "generation_config.json").read_text())
    cfg.update(repetition_penalty=1.05, no_repeat_ngram_size=2, do_sample=True,
               temperature=0.1, top_p=0.001, top_k=1)
    (path / "generation_config.json").write_text(json.dumps(cfg))
    policy = Qwen25VLPolicy(model_path=str(path), max_pixels=112 * 112, max_new_tokens=12)
    plain = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                           max_new_tokens=12)
    gen = policy.model.generation_config
    assert gen.repetition_penalty in (None, 1.0) and not gen.no_repeat_ngram_size
    assert gen.eos_token_id == cfg["eos_token_id"] and gen.pad_token_id == cfg["pad_token_id"]
    ids = torch.zeros(1, 4, dtype=torch.long)
    _, processors = _sampling_parts(policy.model, ids, policy.generation_kwargs(True))
    names = {type(p).__name__ for p in processors}
    assert not names & {"RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor",
                        "TemperatureLogitsWarper", "TopPLogitsWarper", "TopKLogitsWarper"}
    imgs = _images()
    a = policy.generate(imgs, ["x", "y"], max_new_tokens=12)
    b = plain.generate(imgs, ["x", "y"], max_new_tokens=12)
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]


@pytest.mark.parametrize("height,width", [(100, 150), (60, 60), (28, 300), (500, 90), (13, 17)])
@pytest.mark.parametrize("instruction", ["x", "segment the small red square left of the circle"])
def test_prompt_length_counts_the_prompt_encode_prompts_builds(tiny_policy, height, width,
                                                               instruction):
    image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
    batch = tiny_policy.encode_prompts([image], [instruction])
    assert tiny_policy.prompt_length(height, width, instruction) == batch["input_ids"].shape[1]


@pytest.mark.parametrize("patch_size", [14, 16])
def test_the_view_size_is_the_processors_grid_for_its_patch_size(tiny_policy, monkeypatch,
                                                                  patch_size):
    """The view follows the processor's patch and merge sizes (28 px for Qwen2.5-VL; 32 for a
    16 px patch), so prompt lengths stay right for a processor of another patch size."""
    processor = tiny_policy.processor.image_processor
    monkeypatch.setattr(processor, "patch_size", patch_size)
    for height, width in [(100, 150), (500, 90), (40, 41)]:
        image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
        grid = processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        assert tiny_policy.view_size(height, width) == (int(grid[1]) * patch_size,
                                                        int(grid[2]) * patch_size)


def test_overlong_prompts_are_those_above_the_cap(tiny_qwen_dir, tiny_policy):
    small = np.zeros((28, 28, 3), dtype=np.uint8)  # a PIL image or an array, as the loop has
    big = Image.fromarray(np.zeros((112, 112, 3), dtype=np.uint8))
    lengths = [tiny_policy.prompt_length(28, 28, "x"), tiny_policy.prompt_length(112, 112, "x")]
    assert lengths[0] < lengths[1]
    assert tiny_policy.max_prompt_tokens is None
    assert tiny_policy.overlong_prompts([small, big], ["x", "x"]) == {}  # no cap
    capped = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), max_pixels=112 * 112,
                            max_prompt_tokens=lengths[0])
    assert capped.overlong_prompts([small, big, small], ["x", "x", "x"]) == {1: lengths[1]}
    assert list(capped.overlong_prompts([small], ["x y"])) == [0]  # a longer instruction


@pytest.mark.parametrize("value", [0, -5, 12.5, True, "1300"])
def test_an_invalid_prompt_cap_is_refused_before_loading(tmp_path, value):
    with pytest.raises(ValueError, match=r"model\.policy\.max_prompt_tokens=.*>= 1.*or None"):
        Qwen25VLPolicy(model_path=str(tmp_path / "nowhere"), max_prompt_tokens=value)


def test_the_paper_configs_cap_prompts_at_1300_and_the_tiny_ones_do_not():
    """Paper B.3: prompts of at most 1300 tokens; the tiny CPU configs (and so their
    checkpoints' runs) have no cap."""
    from pathlib import Path

    from mmengine.config import Config

    root = Path(__file__).parents[2] / "configs"
    leaves = sorted(p for p in root.glob("*/*.py") if p.parent.name != "_base_")
    caps = {p.name: Config.fromfile(str(p)).model.policy.get("max_prompt_tokens")
            for p in leaves}
    assert caps and all(cap == (None if "tiny" in name else 1300) for name, cap in caps.items()), caps
