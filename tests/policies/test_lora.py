import json

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from coprs.apis import init_segmentor
from coprs.cli import main
from coprs.structures import Rollout

from ..conftest import TINY_CONFIG  # noqa: TID252


def _lora_config(tmp_path):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.policy.lora = dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    cfg.model.pop("feature_cache")
    path = tmp_path / "lora.py"
    cfg.dump(str(path))
    return str(path)


def _logits(policy, model=None):
    img = [Image.fromarray(np.full((56, 56, 3), 90, np.uint8))]
    ids = policy.tokenizer.encode("<think>a</think><REF_POS>", add_special_tokens=False)
    fwd = policy.forward_responses(img, ["x"], [Rollout("", ids)], model=model)
    return policy.response_logprobs(fwd)[0]


@torch.no_grad()
def _perturb_adapters(module):
    """Random ``lora_B`` of the trained adapter (trained-looking; peft starts it at zero)."""
    for n, p in module.named_parameters():
        if "lora_B.default" in n:
            p.normal_(0, 0.5)


def test_lora_trains_only_adapters_and_reference_is_the_base(tmp_path):
    seg = init_segmentor(_lora_config(tmp_path))
    policy = seg.policy
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = _logits(policy)
    _perturb_adapters(policy)
    after = _logits(policy)
    assert not torch.allclose(before, after)
    with policy.disable_adapter():
        torch.testing.assert_close(_logits(policy), before)
    torch.testing.assert_close(_logits(policy), after)  # adapters back on
    # the frozen reference adapter (the GRPO reference after a warm-up): the base until the
    # trained adapters are copied into it, then the policy as it was at that moment
    snapshot = policy.adapter_state()
    assert snapshot and all("lora_" in n and ".default." in n for n in snapshot)
    with policy.reference_adapters():
        torch.testing.assert_close(_logits(policy), before)
    policy.set_reference_adapters(snapshot)
    _perturb_adapters(policy)
    moved = _logits(policy)
    assert not torch.allclose(moved, after)
    with policy.reference_adapters():
        torch.testing.assert_close(_logits(policy), after)
    torch.testing.assert_close(_logits(policy), moved)  # the trained adapter active again
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(policy.named_parameters())
                         if "lora_" in n and ".default." in n}
    with pytest.raises(ValueError, match="other model.policy.lora settings"):
        policy.set_reference_adapters(dict(list(snapshot.items())[1:]))


def test_export_hf_merges_adapters(tmp_path, capsys):
    cfg = _lora_config(tmp_path)
    seg = init_segmentor(cfg)
    _perturb_adapters(seg.policy)
    torch.save({"state_dict": seg.state_dict()}, tmp_path / "ckpt.pth")
    assert main(["export-hf", cfg, str(tmp_path / "ckpt.pth"), "--out", str(tmp_path / "ex")]) == 0
    from transformers import Qwen2_5_VLForConditionalGeneration

    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "ex" / "policy")
    assert not any("lora" in k for k in exported.state_dict())
    torch.testing.assert_close(_logits(seg.policy, model=exported), _logits(seg.policy),
                               atol=1e-4, rtol=1e-4)
    head = torch.load(tmp_path / "ex" / "seg_head.pth", weights_only=True)
    assert any(k.startswith("prior.") for k in head) and any(k.startswith("decoder.") for k in head)
    assert json.loads((tmp_path / "ex" / "coprs_export.json").read_text())["lora_merged"]
    # the export loads back without peft: LoRA off, the merged weights from policy/
    back = init_segmentor(cfg, checkpoint=tmp_path / "ex")
    assert not back.policy.uses_adapters
    assert not any("lora" in n for n, _ in back.named_parameters())
    torch.testing.assert_close(_logits(back.policy), _logits(seg.policy), atol=1e-4, rtol=1e-4)
    # training from the export with LoRA trains new adapters on top of its merged weights
    assert main(["train", cfg, "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 f"load_from={tmp_path / 'ex'}", "optim_wrapper.optimizer.lr=0.0",
                 "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=1",
                 "train_cfg.stages.1.batch_size=1", "train_dataloader.batch_size=2",
                 "train_cfg.group_size=2", "train_cfg.rollout_engine.max_new_tokens=4"]) == 0
    state = torch.load(tmp_path / "w" / "iter_2.pth", weights_only=True)["state_dict"]
    assert any("lora_" in k for k in state)
    assert not any(k.startswith("policy.") and "lora_" not in k for k in state)
    again = init_segmentor(str(tmp_path / "w" / "lora.py"), checkpoint=tmp_path / "w")
    assert again.policy.uses_adapters and again.policy.model_path == str(tmp_path / "ex" / "policy")
    head = torch.load(tmp_path / "ex" / "seg_head.pth", weights_only=True)
    for k, v in head.items():
        assert torch.equal(again.state_dict()[k], v), k  # lr 0: the export's heads
    # new adapters start at zero: the policy is the export's until they train
    torch.testing.assert_close(_logits(again.policy), _logits(seg.policy), atol=1e-4, rtol=1e-4)


def test_lora_training_checkpoints_hold_only_trainable_weights(tmp_path):
    cfg = _lora_config(tmp_path)
    assert main(["train", cfg, "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=1",
                 "train_cfg.stages.1.batch_size=1", "train_dataloader.batch_size=2",
                 "train_cfg.group_size=2", "train_cfg.rollout_engine.max_new_tokens=4"]) == 0
    state = torch.load(tmp_path / "w" / "iter_2.pth", weights_only=True)["state_dict"]
    policy_keys = [k for k in state if k.startswith("policy.")]
    # the frozen base is dropped, the tied lm_head (the frozen embedding) included
    assert policy_keys and all("lora_" in k for k in policy_keys)
    assert init_segmentor(cfg, checkpoint=tmp_path / "w").policy.uses_adapters  # loads back
    assert any(k.startswith("prior.") for k in state)
    assert not any(k.startswith("vision_backbone.") for k in state)  # frozen: from its seed
    # the GRPO reference after the warm-up: the adapters then, no copy of the base
    reference = torch.load(tmp_path / "w" / "reference_policy.pth", weights_only=True)
    assert reference and all("lora_" in k for k in reference)


def test_lora_adapters_train_in_float32_over_a_bfloat16_base(tiny_qwen_dir):
    from coprs.engine.loops import check_trainable_dtypes
    from coprs.policies import Qwen25VLPolicy

    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), torch_dtype="bfloat16",
                            lora=dict(r=4, target_modules=["q_proj", "v_proj"]))
    dtypes = {n: p.dtype for n, p in policy.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    check_trainable_dtypes(policy)  # nothing trainable is in bf16
    logp = _logits(policy)  # the bf16 base and the fp32 adapters run together
    assert torch.isfinite(logp).all()
    logp.sum().backward()
    grads = [p.grad for n, p in policy.named_parameters() if "lora_A.default" in n]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


def test_merged_state_dict_leaves_the_policys_weights_untouched(tiny_qwen_dir):
    from coprs.policies import Qwen25VLPolicy

    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir),
                            lora=dict(r=4, target_modules=["q_proj", "v_proj"]))
    _perturb_adapters(policy)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    merged = policy.merged_state_dict()
    after = policy.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit
    name = next(k for k in merged if k.endswith("q_proj.weight"))
    base = before[name.replace("q_proj.weight", "q_proj.base_layer.weight")]
    assert not torch.equal(merged[name], base)  # the adapters are in the merged weight
    assert not any("lora_" in k or ".base_layer." in k for k in merged)


def test_lora_refuses_tied_embeddings_as_targets(tiny_qwen_dir, tmp_path):
    """With tie_word_embeddings (the tiny policy, Qwen2.5-VL-3B) an adapter on lm_head or
    embed_tokens would change one use of the shared weight only: the merged export and vLLM
    would differ from the trained model. Untied, lm_head is a target like any other."""
    import pytest

    from coprs.policies import Qwen25VLPolicy
    from coprs.testing.tiny_qwen import save_tiny_qwen2_5_vl

    for targets, layer, other in ((["q_proj", "lm_head"], "lm_head", "embed_tokens"),
                                  (["embed_tokens"], "embed_tokens", "lm_head"),
                                  (".*lm_head", "lm_head", "embed_tokens")):
        with pytest.raises(ValueError) as info:
            Qwen25VLPolicy(model_path=str(tiny_qwen_dir), lora=dict(r=4, target_modules=targets))
        message = str(info.value)
        assert message.startswith(f"model.policy.lora.target_modules={targets!r} puts LoRA on ")
        on, ties = message.split(" puts LoRA on ")[1].split(", whose weight this policy ties to ")
        assert on.endswith(layer) and ties.split(" ")[0].endswith(other) and "\n" not in message
        assert "leave lm_head and embed_tokens out of target_modules" in message
    untied = save_tiny_qwen2_5_vl(tmp_path / "untied", text_config=dict(tie_word_embeddings=False))
    policy = Qwen25VLPolicy(model_path=str(untied), lora=dict(r=4, target_modules=["lm_head"]))
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == [
        "model.lm_head.lora_A.default.weight", "model.lm_head.lora_B.default.weight"]


def test_train_refuses_load_from_a_full_fine_tune_into_lora(tmp_path, capsys, monkeypatch):
    """A LoRA run would train on a full fine-tune's policy weights loaded with load_from but
    save only its adapters: refused before anything is built, pointing to export-hf. A LoRA
    checkpoint (adapters only) and an export folder stay fine."""
    import types

    built = []
    monkeypatch.setattr("mmengine.runner.Runner.from_cfg", lambda cfg: built.append(cfg) or
                        types.SimpleNamespace(train=lambda: None))
    cfg = _lora_config(tmp_path)
    full, lora = tmp_path / "full.pth", tmp_path / "adapters.pth"
    torch.save({"meta": {"iter": 4}, "state_dict": {
        "policy.model.lm_head.weight": torch.zeros(2), "prior.w": torch.zeros(1)}}, full)
    torch.save({"meta": {"iter": 4}, "state_dict": {
        "policy.model.q_proj.lora_A.default.weight": torch.zeros(1),
        "prior.w": torch.zeros(1)}}, lora)

    def train(*options):
        return main(["train", cfg, "--work-dir", str(tmp_path / "w"), "--cfg-options", *options])

    for load_from in (full, tmp_path / "module.pth"):  # a DDP "module." prefix as well
        if load_from.name == "module.pth":
            torch.save({"module.policy.model.lm_head.weight": torch.zeros(2)}, load_from)
        assert train(f"load_from={load_from}") == 2
        err = capsys.readouterr().err.strip()
        assert f"load_from '{load_from}' holds policy weights besides LoRA adapters" in err
        assert f"coprs export-hf CONFIG {load_from} --out DIR" in err and "load_from=DIR" in err
        assert len(err.splitlines()) == 1 and not built
    # the full fine-tune into a config without LoRA, and adapters into a LoRA config: fine
    assert main(["train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", f"load_from={full}"]) == 0
    assert train(f"load_from={lora}") == 0
    assert built[-1].load_from == str(lora)
