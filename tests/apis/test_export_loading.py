"""A ``coprs export-hf`` folder loads back as a checkpoint: API, ``coprs infer`` and ``coprs test``;
its policy generates as coprs does; ``print-config`` and ``publish-model`` know it."""

import json
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config

from coprs.apis import export_dir, init_segmentor, load_checkpoint, segment
from coprs.cli import main

from ..conftest import TINY_CONFIG  # noqa: TID252

GIVEN = "<think>the purple star</think><REF_POS>"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model with its policy, prior and decoder moved off their initialisation, saved as
    a checkpoint and exported; (model, checkpoint, export folder)."""
    tmp = tmp_path_factory.mktemp("export")
    model = init_segmentor(str(TINY_CONFIG), seed=3)
    with torch.no_grad():
        model.prior.w_q.weight.add_(0.5)
        next(model.decoder.parameters()).mul_(1.5)
        model.policy.model.lm_head.weight.mul_(2.0)  # tied to the input embeddings
        model.policy.model.model.language_model.layers[0].mlp.up_proj.weight.add_(0.01)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vision_backbone.")}
    torch.save({"state_dict": state}, tmp / "ckpt.pth")
    assert main(["export-hf", str(TINY_CONFIG), str(tmp / "ckpt.pth"), "--out",
                 str(tmp / "ex")]) == 0
    return model, tmp / "ckpt.pth", tmp / "ex"


def test_export_loads_back_with_every_weight(exported):
    model, _, ex = exported
    cfg = Config.fromfile(str(TINY_CONFIG))
    loaded = init_segmentor(cfg, checkpoint=str(ex), seed=7)
    assert loaded.policy.model_path == str(ex / "policy")
    assert cfg.model.policy.tiny is not None  # the caller's config is left as it was
    mine = loaded.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(mine[k], v), k
    img = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    a = segment(model, img, "x", response=GIVEN)
    b = segment(loaded, img, "x", response=GIVEN)
    assert np.array_equal(a.heatmap, b.heatmap) and np.array_equal(a.mask, b.mask)
    a, b = (segment(m, img, "the star", max_new_tokens=6) for m in (model, loaded))
    assert a.response == b.response and np.array_equal(a.mask, b.mask)


def test_export_carries_its_config_and_a_readme(exported, tmp_path, capsys):
    model, _, ex = exported
    loaded = init_segmentor(str(ex / "config.py"), checkpoint=ex)  # no _base_ files needed
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    card = (ex / "README.md").read_text()
    assert "<REF_POS>" in card and "full weights" in card and "coprs infer --checkpoint" in card
    image = str(TINY_CONFIG.parents[2] / "coprs" / "assets" / "sample.png")
    # with an export as --checkpoint, --config may be left out: the export's config.py is used
    assert main(["infer", "--checkpoint", str(ex), image, "x", "--response", GIVEN, "--out",
                 str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "result.json").read_text())["response"] == GIVEN
    assert main(["infer", image, "x"]) == 2
    assert "give --config" in capsys.readouterr().err


def test_infer_and_test_commands_take_an_export(exported, tmp_path, capsys):
    _, ckpt, ex = exported
    image = str(TINY_CONFIG.parents[2] / "coprs" / "assets" / "sample.png")
    for name, checkpoint in (("ckpt", ckpt), ("export", ex)):
        assert main(["infer", "--config", str(TINY_CONFIG), "--checkpoint", str(checkpoint),
                     image, "the star", "--response", GIVEN, "--out",
                     str(tmp_path / name)]) == 0
    assert ((tmp_path / "ckpt" / "mask.png").read_bytes()
            == (tmp_path / "export" / "mask.png").read_bytes())
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [dict(type="ShapesReasonDataset", split="test", num_samples=3,
                                  pipeline=[dict(type="LoadImage"),
                                            dict(type="PackReasonSegInputs")])]
    cfg.dump(str(tmp_path / "cfg.py"))
    results = []
    for name, checkpoint in (("ckpt", ckpt), ("export", ex)):
        out = tmp_path / f"{name}.json"
        assert main(["test", str(tmp_path / "cfg.py"), str(checkpoint), "--reasoning", "gold",
                     "--work-dir", str(tmp_path / f"w_{name}"), "--out", str(out)]) == 0
        results.append(json.loads(out.read_text())["shapes/test"])
    assert results[0] == results[1]
    assert main(["test", str(tmp_path / "cfg.py"), "--reasoning", "gold", "--work-dir",
                 str(tmp_path / "w_init"), "--out", str(tmp_path / "init.json")]) == 0
    assert json.loads((tmp_path / "init.json").read_text())["shapes/test"] != results[0]


def test_bad_exports_are_named(exported, tmp_path, capsys):
    model, _, ex = exported
    # an export given to a model whose policy did not come from it
    with pytest.raises(ValueError, match="policy/"):
        load_checkpoint(init_segmentor(str(TINY_CONFIG)), ex)
    # a folder with the manifest but without seg_head.pth
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "coprs_export.json").write_text((ex / "coprs_export.json").read_text())
    (broken / "policy").symlink_to(ex / "policy")
    with pytest.raises(FileNotFoundError, match="seg_head.pth"):
        export_dir(broken)
    assert main(["infer", "--config", str(TINY_CONFIG), "--checkpoint", str(broken), "img.png",
                 "x"]) == 2
    assert "seg_head.pth" in capsys.readouterr().err
    # an export made for another special token than the config reads
    other = tmp_path / "other"
    other.mkdir()
    for part in ("policy", "seg_head.pth"):
        (other / part).symlink_to(ex / part)
    manifest = json.loads((ex / "coprs_export.json").read_text())
    (other / "coprs_export.json").write_text(json.dumps({**manifest, "special_token": "<SEG>"}))
    with pytest.raises(ValueError, match="<SEG>"):
        init_segmentor(str(TINY_CONFIG), checkpoint=other)
    assert main(["test", str(TINY_CONFIG), str(other)]) == 2
    assert "'<SEG>'" in capsys.readouterr().err
    # a plain folder is still read as a training work dir
    assert export_dir(tmp_path) is None


def test_training_starts_from_an_export(exported, tmp_path, small_run, capsys):
    model, _, ex = exported
    # lr 0: the run's checkpoint holds exactly the weights it started from
    assert main(["train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 f"load_from={ex}", "optim_wrapper.optimizer.lr=0.0",
                 "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=1", *small_run]) == 0
    state = torch.load(tmp_path / "w" / "iter_2.pth", map_location="cpu",
                       weights_only=True)["state_dict"]
    mine = model.state_dict()
    assert any(k.startswith("policy.") for k in state)
    for k, v in state.items():
        assert torch.equal(v, mine[k]), k
    saved = Config.fromfile(str(tmp_path / "w" / "coprs_tiny_shapes_cpu.py"))
    assert saved.model.policy.model_path == str(ex / "policy") and saved.model.policy.tiny is None
    # its export records the export it started from, though the config given names the tiny base
    assert main(["export-hf", str(TINY_CONFIG), str(tmp_path / "w"), "--out",
                 str(tmp_path / "ex_run")]) == 0
    manifest = json.loads((tmp_path / "ex_run" / "coprs_export.json").read_text())
    assert manifest["exported_from"]["folder"] == str(ex)
    assert manifest["exported_from"]["manifest"] == json.loads((ex / "coprs_export.json").read_text())
    # resuming such a run: the same load_from with --resume, the policy again from policy/
    assert main(["train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"), "--resume",
                 "--cfg-options", f"load_from={ex}", "optim_wrapper.optimizer.lr=0.0",
                 "train_cfg.stages.0.iters=1", "train_cfg.stages.1.iters=2", *small_run]) == 0
    state = torch.load(tmp_path / "w" / "iter_3.pth", map_location="cpu",
                       weights_only=True)["state_dict"]
    assert all(torch.equal(v, mine[k]) for k, v in state.items())
    assert main(["train", str(TINY_CONFIG), "--resume", str(ex)]) == 2
    assert "load_from=" in capsys.readouterr().err
    # a head from another assembly is refused before training, not loaded in part
    other = tmp_path / "other"
    other.mkdir()
    for part in ("policy", "coprs_export.json"):
        (other / part).symlink_to(ex / part)
    head = torch.load(ex / "seg_head.pth", weights_only=True)
    head.pop(next(k for k in head if k.startswith("decoder.")))
    torch.save(head, other / "seg_head.pth")
    assert main(["train", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w2"), "--cfg-options",
                 f"load_from={other}", *small_run]) == 2
    assert "does not fit this config's prior and decoder: missing ['decoder." in (
        capsys.readouterr().err)
    assert not list((tmp_path / "w2").glob("iter_*.pth"))


def test_the_exported_policy_stops_generating_at_the_special_token(exported):
    """Plain transformers ``generate`` on ``policy/`` ends a response at ``<REF_POS>``, as coprs's
    own generation does (``stop_at_special_token``), and coprs reads the folder back unchanged."""
    from transformers import AutoTokenizer, GenerationConfig, Qwen2_5_VLForConditionalGeneration

    model, _, ex = exported
    ref = model.policy.special_token_id
    base = GenerationConfig.from_pretrained(model.policy.model_path).eos_token_id
    base = base if isinstance(base, list) else [base]
    eos = GenerationConfig.from_pretrained(ex / "policy").eos_token_id
    assert isinstance(eos, list) and eos.count(ref) == 1 and set(base) <= set(eos)
    policy = Qwen2_5_VLForConditionalGeneration.from_pretrained(ex / "policy")
    prompt = AutoTokenizer.from_pretrained(ex / "policy")("the star", return_tensors="pt")
    out = policy.generate(**prompt, max_new_tokens=5, do_sample=False,
                          sequence_bias={(ref,): 100.0})  # <REF_POS> comes first
    assert out[0, prompt["input_ids"].shape[1]:].tolist() == [ref]
    # coprs keeps the special token in the response text of a policy loaded from the export
    loaded = init_segmentor(str(TINY_CONFIG), checkpoint=ex)
    assert loaded.policy.stop_token_ids.count(ref) == 1
    ids = loaded.policy.tokenizer("<think>a</think>", add_special_tokens=False)["input_ids"]
    assert loaded.policy.decode([*ids, ref]) == model.policy.decode([*ids, ref]) == (
        "<think>a</think><REF_POS>")


def test_a_re_export_keeps_where_its_weights_came_from(exported, tmp_path):
    model, _, ex = exported
    first = json.loads((ex / "coprs_export.json").read_text())
    assert "exported_from" not in first
    assert main(["export-hf", str(TINY_CONFIG), str(ex), "--out", str(tmp_path / "again")]) == 0
    manifest = json.loads((tmp_path / "again" / "coprs_export.json").read_text())
    assert manifest["checkpoint"] == str(ex)
    assert manifest["exported_from"] == {"folder": str(ex), "manifest": first}
    assert f"earlier export `{ex}`" in (tmp_path / "again" / "README.md").read_text()
    loaded = init_segmentor(str(TINY_CONFIG), checkpoint=tmp_path / "again")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_print_config_and_publish_model_know_an_export(exported, tmp_path, capsys):
    _, ckpt, ex = exported
    # print-config: the config stored with the export, --cfg-options merged
    assert main(["print-config", str(ex), "--cfg-options", "model.prior.num_heads=8",
                 "--save-path", str(tmp_path / "c.py")]) == 0
    assert "num_heads=8" in capsys.readouterr().out
    expect = Config.fromfile(str(ex / "config.py"))
    expect.merge_from_dict({"model.prior.num_heads": 8})
    assert Config.fromfile(str(tmp_path / "c.py")).to_dict() == expect.to_dict()
    bare = tmp_path / "bare"
    bare.mkdir()
    for part in ("policy", "seg_head.pth", "coprs_export.json"):
        (bare / part).symlink_to(ex / part)
    assert main(["print-config", str(bare)]) == 2
    err = capsys.readouterr().err
    assert f"coprs export '{bare}' holds no config.py" in err and "last_checkpoint" not in err
    # publish-model: an export is shared as it is; the checkpoint it came from is named
    assert main(["publish-model", str(ex), str(tmp_path / "pub" / "m.pth")]) == 2
    err = capsys.readouterr().err
    assert f"'{ex}' is a coprs export-hf folder" in err and "share the folder" in err
    assert f"({ckpt})" in err and "last_checkpoint" not in err
    assert not (tmp_path / "pub").exists()


def test_lora_adapters_trained_on_an_export_load_only_on_that_export(exported, tmp_path,
                                                                     small_run):
    """LoRA on top of an export (``load_from=EXPORT``): loading the run's checkpoint with the
    original config (its tiny base) is an error naming the export's policy/; the export, or a
    copy of it elsewhere, is its base."""
    _, _, ex = exported
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.policy.lora = dict(r=2, alpha=4, target_modules=["q_proj"])
    cfg.dump(str(tmp_path / "lora.py"))
    assert main(["train", str(tmp_path / "lora.py"), "--work-dir", str(tmp_path / "w"),
                 "--cfg-options", f"load_from={ex}", "train_cfg.stages.0.iters=1",
                 "train_cfg.stages.1.iters=1", *small_run]) == 0
    ckpt = tmp_path / "w" / "iter_2.pth"
    with pytest.raises(ValueError, match=rf"trained on the coprs export '{ex}'.*"
                                         rf"model.policy.model_path={ex / 'policy'}"):
        init_segmentor(str(tmp_path / "lora.py"), checkpoint=ckpt)
    assert main(["export-hf", str(tmp_path / "lora.py"), str(ckpt), "--out",
                 str(tmp_path / "wrong")]) != 0  # would merge them into the wrong base
    on_export = {"model.policy.model_path": str(ex / "policy"), "model.policy.tiny": None}
    assert init_segmentor(str(tmp_path / "lora.py"), checkpoint=ckpt,
                          cfg_options=on_export).policy.uses_adapters
    copy = tmp_path / "copy"
    shutil.copytree(ex, copy)
    init_segmentor(str(tmp_path / "lora.py"), checkpoint=ckpt,
                   cfg_options=dict(on_export, **{"model.policy.model_path": str(copy / "policy")}))
