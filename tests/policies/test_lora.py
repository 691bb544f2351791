import json

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from coprs.apis import init_segmentor
from coprs.cli import main
from coprs.policies.adapters import is_adapter_weight
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
    """Random ``lora_B`` and token rows of the trained adapter (trained-looking; peft starts
    ``lora_B`` at zero and the rows at the base rows)."""
    for n, p in module.named_parameters():
        if "lora_B.default" in n or n.endswith("trainable_tokens_delta.default"):
            p.normal_(0, 0.5)


def test_lora_trains_only_adapters_and_reference_is_the_base(tmp_path):
    seg = init_segmentor(_lora_config(tmp_path))
    policy = seg.policy
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_weight(n, "default") for n in trainable)
    # the added tokens' rows train with the adapters (tied: the head uses the embedding's)
    assert [n for n in trainable if "lora_" not in n] == [
        "model.model.language_model.embed_tokens.trainable_tokens_delta.default"]
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
    assert snapshot and all(is_adapter_weight(n, "default") for n in snapshot)
    assert any("trainable_tokens_delta" in n for n in snapshot)
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
                         if is_adapter_weight(n, "default")}
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
    assert ("(LoRA adapters merged into the weights, with the trained rows of `<think>`, "
            "`</think>`, `<REF_POS>` in the input embeddings and LM head)"
            in (tmp_path / "ex" / "README.md").read_text())
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
    assert not any(k.startswith("policy.") and not is_adapter_weight(k) for k in state)
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
    assert policy_keys and all(is_adapter_weight(k, "default") for k in policy_keys)
    assert any("trainable_tokens_delta" in k for k in policy_keys)  # the added tokens' rows
    assert init_segmentor(cfg, checkpoint=tmp_path / "w").policy.uses_adapters  # loads back
    # into a config without LoRA: the error gives the options that load it, as a shell takes them
    import argparse
    import shlex

    from mmengine.config import DictAction

    with pytest.raises(ValueError, match="trained with LoRA adapters and the model has none") as e:
        init_segmentor(str(TINY_CONFIG), checkpoint=tmp_path / "w")
    options = str(e.value).split(", i.e. --cfg-options ")[1]
    assert set(options.split()) == {"model.policy.lora.r=4", "model.policy.lora.alpha=8",
                                    "model.policy.lora.target_modules=[q_proj,v_proj]"}
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    parsed = parser.parse_args(["--cfg-options", *shlex.split(options)]).cfg_options
    assert init_segmentor(str(TINY_CONFIG), checkpoint=tmp_path / "w",
                          cfg_options=parsed).policy.uses_adapters
    assert any(k.startswith("prior.") for k in state)
    assert not any(k.startswith("vision_backbone.") for k in state)  # frozen: from its seed
    # the GRPO reference after the warm-up: the adapters then, no copy of the base
    reference = torch.load(tmp_path / "w" / "reference_policy.pth", weights_only=True)
    assert reference and all(is_adapter_weight(k) for k in reference)


def test_lora_adapters_train_in_float32_over_a_bfloat16_base(tiny_qwen_dir):
    from coprs.engine.loops import check_trainable_dtypes
    from coprs.policies import Qwen25VLPolicy

    policy = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), torch_dtype="bfloat16",
                            lora=dict(r=4, target_modules=["q_proj", "v_proj"]))
    dtypes = {n: p.dtype for n, p in policy.named_parameters()}
    assert {d for n, d in dtypes.items() if is_adapter_weight(n)} == {torch.float32}
    assert {d for n, d in dtypes.items() if not is_adapter_weight(n)} == {torch.bfloat16}
    check_trainable_dtypes(policy)  # nothing trainable is in bf16
    logp = _logits(policy)  # the bf16 base and the fp32 adapters run together
    assert torch.isfinite(logp).all()
    logp.sum().backward()
    grads = [p.grad for n, p in policy.named_parameters()
             if "lora_A.default" in n or n.endswith("trainable_tokens_delta.default")]
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
    assert not any(is_adapter_weight(k) or ".base_layer." in k for k in merged)
    rows = policy.model.get_input_embeddings().trainable_tokens_delta["default"]
    ids = policy.tokenizer.convert_tokens_to_ids(policy.trainable_tokens)
    embed = merged["model.language_model.embed_tokens.weight"]
    assert torch.equal(embed[ids], rows) and not torch.equal(rows, before[
        "model.language_model.embed_tokens.base_layer.weight"][ids])


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
    with pytest.raises(ValueError, match="leave embed_tokens and lm_head out of target_modules, "
                       "or set trainable_tokens=False"):  # the rows would train twice over
        Qwen25VLPolicy(model_path=str(untied), lora=dict(r=4, target_modules=["lm_head"]))
    policy = Qwen25VLPolicy(model_path=str(untied), lora=dict(r=4, target_modules=["lm_head"],
                                                              trainable_tokens=False))
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
        "policy.model.embed_tokens.trainable_tokens_delta.default": torch.zeros(1),
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


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_lora_trains_the_added_tokens_rows(tiny_qwen_dir, tmp_path, tied):
    """Under LoRA the rows of <think>, </think> and <REF_POS> in embed_tokens and lm_head train
    (a real checkpoint has them untrained): they act like peft's trainable tokens without a
    full copy of either matrix, get gradients, follow the adapter switches and merge into
    the export, one set of rows when the two matrices are tied (Qwen2.5-VL-3B, the tiny
    policy), one per matrix when not (7B)."""
    from peft.tuners.trainable_tokens import TrainableTokensLayer
    from transformers import Qwen2_5_VLForConditionalGeneration

    from coprs.policies import Qwen25VLPolicy
    from coprs.testing.tiny_qwen import save_tiny_qwen2_5_vl

    path = tiny_qwen_dir if tied else save_tiny_qwen2_5_vl(
        tmp_path / "untied", text_config=dict(tie_word_embeddings=False))
    policy = Qwen25VLPolicy(model_path=str(path), lora=dict(r=4, target_modules=["q_proj"]))
    assert policy.trainable_tokens == ["<think>", "</think>", "<REF_POS>"]
    ids = policy.tokenizer.convert_tokens_to_ids(policy.trainable_tokens)
    embed, head = policy.model.get_input_embeddings(), policy.model.get_output_embeddings()
    rows = {n: p for n, p in policy.named_parameters() if "trainable_tokens" in n}
    assert {n.rsplit(".", 1)[1] for n in rows} == {"default", "reference"}
    assert len(rows) == (2 if tied else 4) and all(p.shape == (3, 128) for p in rows.values())
    assert (head.trainable_tokens_delta is embed.trainable_tokens_delta) == tied
    assert not policy.adapters_trained()
    _perturb_adapters(policy.model.model.language_model.embed_tokens)
    _perturb_adapters(head)  # rows only: lora_B stays zero
    assert policy.adapters_trained()  # moved rows alone make the adapters trained
    # the same outputs as peft's own forward (which copies the whole matrix)
    tokens = torch.tensor([[ids[2], 11, ids[0], 12, ids[1]]])
    hidden = torch.randn(2, 5, 128)
    for layer, x in ((embed, tokens), (head, hidden)):
        torch.testing.assert_close(layer(x), TrainableTokensLayer.forward_adapters(
            layer, x, layer.active_adapters))
    out = head(hidden)
    torch.testing.assert_close(out[..., ids], hidden @ head.trainable_tokens_delta["default"].T)
    torch.testing.assert_close(out[..., 13:], hidden @ head.base_layer.weight[13:].T)
    # gradients reach the trained rows only
    head(embed(tokens)).logsumexp(-1).sum().backward()
    assert all((p.grad is not None and p.grad.abs().sum() > 0) == n.endswith(".default")
               for n, p in rows.items())
    assert embed.base_layer.weight.grad is None and head.base_layer.weight.grad is None
    # off, reference and trained, as the LoRA adapters switch
    base = embed.base_layer.weight[ids]
    with policy.disable_adapter():
        torch.testing.assert_close(embed(torch.tensor(ids)), base)
    with policy.reference_adapters():
        torch.testing.assert_close(embed(torch.tensor(ids)), base)
    policy.set_reference_adapters(policy.adapter_state())
    with policy.reference_adapters():
        torch.testing.assert_close(embed(torch.tensor(ids)), embed.trainable_tokens_delta["default"])
    # the merged weights in a plain model give the policy's log-probs
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    plain.load_state_dict(policy.merged_state_dict())
    torch.testing.assert_close(_logits(policy, model=plain), _logits(policy), atol=1e-5, rtol=1e-5)


def test_lora_trainable_tokens_option(tiny_qwen_dir):
    from coprs.models.counting import count_parameters
    from coprs.policies import Qwen25VLPolicy

    lora = dict(r=4, target_modules=["q_proj"])
    none = Qwen25VLPolicy(model_path=str(tiny_qwen_dir), lora=dict(lora, trainable_tokens=False))
    assert none.trainable_tokens == [] and not any(
        "trainable_tokens" in n for n, _ in none.named_parameters())
    two = Qwen25VLPolicy(model_path=str(tiny_qwen_dir),
                         lora=dict(lora, trainable_tokens=["<REF_POS>", "<|im_end|>"]))
    assert two.trainable_tokens == ["<REF_POS>", "<|im_end|>"]
    # the reference copy is counted nowhere, as for the LoRA matrices
    assert count_parameters(two, trainable=True) - count_parameters(none, trainable=True) == 2 * 128
    assert count_parameters(two) - count_parameters(none) == 2 * 128
    for bad in (["<nope>"], "<REF_POS>", [1]):
        with pytest.raises(ValueError, match=r"model.policy.lora.trainable_tokens=.*use True \(the "
                           r"rows of the tokens coprs adds: \['<think>', '</think>', '<REF_POS>'\]"):
            Qwen25VLPolicy(model_path=str(tiny_qwen_dir), lora=dict(lora, trainable_tokens=bad))


def test_lora_checkpoint_without_token_rows_names_the_option(tmp_path, capsys, monkeypatch):
    """A LoRA checkpoint written before the added tokens' rows trained (none in the file) and
    today's default (they train) disagree: loading, resuming and load_from say which
    trainable_tokens setting fits instead of starting the rows again from the base."""
    import types

    cfg = _lora_config(tmp_path)
    seg = init_segmentor(cfg)
    state = {k: v for k, v in seg.state_dict().items()
             if not k.startswith("policy.") or ".lora_" in k and ".default." in k}
    assert state and not any("trainable_tokens" in k for k in state)
    old = tmp_path / "old.pth"
    torch.save({"meta": {"iter": 4}, "state_dict": state, "message_hub": {}}, old)
    with pytest.raises(ValueError, match=r"the checkpoint's LoRA run trained no added tokens' rows"
                       r" and the model does: load it with --cfg-options "
                       r"model.policy.lora.trainable_tokens=False"):
        init_segmentor(cfg, checkpoint=old)
    back = init_segmentor(cfg, checkpoint=old,
                          cfg_options={"model.policy.lora.trainable_tokens": False})
    assert back.policy.uses_adapters and back.policy.trainable_tokens == []
    monkeypatch.setattr("mmengine.runner.Runner.from_cfg",
                        lambda c: types.SimpleNamespace(train=lambda: None))
    assert main(["train", cfg, "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 f"load_from={old}"]) == 2
    assert (f"load_from '{old}' holds LoRA adapters without trained rows for the added tokens, "
            "and the config trains them: set --cfg-options "
            "model.policy.lora.trainable_tokens=False") in capsys.readouterr().err
    assert main(["train", cfg, "--work-dir", str(tmp_path / "w"), "--resume", str(old)]) == 2
    assert f"--resume '{old}' holds LoRA adapters without trained rows" in capsys.readouterr().err
    assert main(["train", cfg, "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 f"load_from={old}", "model.policy.lora.trainable_tokens=False"]) == 0
