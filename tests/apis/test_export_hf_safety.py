"""``coprs export-hf`` keeps the trained weights' dtype, replaces an earlier export atomically,
refuses an ``--out`` it would damage, and refuses a model whose weights an export cannot hold."""

import json

import pytest
import torch
from mmengine.config import Config

from coprs.apis import init_segmentor
from coprs.cli import main

from ..conftest import TINY_CONFIG  # noqa: TID252


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory):
    """A tiny Qwen2.5-VL saved in bf16 (as real Qwen2.5-VL folders are), a float32 policy built
    from it whose weights then moved by less than bf16 can hold, a checkpoint of that model and
    a config naming the base; (model, config, checkpoint, tmp folder)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from coprs.testing.tiny_qwen import save_tiny_qwen2_5_vl

    tmp = tmp_path_factory.mktemp("export_safety")
    base = save_tiny_qwen2_5_vl(tmp / "base", seed=0)
    Qwen2_5_VLForConditionalGeneration.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(
        base)
    assert json.loads((base / "config.json").read_text())["dtype"] == "bfloat16"
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.policy.tiny = None
    cfg.model.policy.model_path = str(base)
    cfg.dump(str(tmp / "cfg.py"))
    model = init_segmentor(str(tmp / "cfg.py"), seed=3)
    assert model.policy.model.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a small-lr fine-tune: steps far below bf16's resolution
        for p in model.policy.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-5)
        model.prior.w_q.weight.add_(0.5)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vision_backbone.")}
    torch.save({"state_dict": state}, tmp / "ckpt.pth")
    return model, tmp / "cfg.py", tmp / "ckpt.pth", tmp


def test_export_keeps_the_dtype_of_the_trained_weights(bf16_base):
    from safetensors import safe_open
    from transformers import Qwen2_5_VLForConditionalGeneration

    model, cfg, ckpt, tmp = bf16_base
    (tmp / "ex").mkdir()  # an empty folder is a fine --out
    assert main(["export-hf", str(cfg), str(ckpt), "--out", str(tmp / "ex")]) == 0
    policy = tmp / "ex" / "policy"
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert (tmp / "ex").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert json.loads((policy / "config.json").read_text())["dtype"] == "float32"
    for shard in policy.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}, shard
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(policy).state_dict()
    merged = model.policy.merged_state_dict()
    assert all(torch.equal(back[k], v) for k, v in merged.items())
    loaded = init_segmentor(str(cfg), checkpoint=str(tmp / "ex"))
    mine = loaded.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in model.state_dict().items())


def test_an_earlier_export_is_replaced_whole_or_not_at_all(bf16_base, monkeypatch):
    import coprs.commands.export_hf as export_hf

    model, cfg, ckpt, tmp = bf16_base
    ex = tmp / "ex2"
    assert main(["export-hf", str(cfg), str(ckpt), "--out", str(ex)]) == 0
    (ex / "policy" / "model.safetensors.index.json").write_text("{}")  # a stale file
    before = {p.relative_to(ex): p.read_bytes() for p in ex.rglob("*") if p.is_file()}
    # a second export with another head, interrupted while writing: the first stays as it was
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    state["prior.w_q.weight"] = state["prior.w_q.weight"] + 1.0
    torch.save({"state_dict": state}, tmp / "ckpt2.pth")

    def interrupted(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(export_hf, "model_card", interrupted)
        with pytest.raises(RuntimeError, match="disk full"):
            main(["export-hf", str(cfg), str(tmp / "ckpt2.pth"), "--out", str(ex)])
    assert {p.relative_to(ex): p.read_bytes() for p in ex.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []
    # completed, it replaces the earlier export as a whole: no stale file stays
    assert main(["export-hf", str(cfg), str(tmp / "ckpt2.pth"), "--out", str(ex)]) == 0
    assert not (ex / "policy" / "model.safetensors.index.json").exists()
    head = torch.load(ex / "seg_head.pth", weights_only=True)
    assert torch.equal(head["prior.w_q.weight"], state["prior.w_q.weight"])
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []


def test_an_out_that_an_export_would_damage_is_refused(tmp_path, monkeypatch, capsys):
    import coprs.apis

    def never(*args, **kwargs):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(coprs.apis, "init_segmentor", never)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {}}, ckpt)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    work = tmp_path / "work"  # a training work dir
    work.mkdir()
    (work / "iter_2.pth").write_bytes(b"weights")
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    export = tmp_path / "export"  # an earlier export holding a file of someone else's
    export.mkdir()
    (export / "coprs_export.json").write_text("{}")
    (export / "notes.txt").write_text("mine")
    for out, said in ((afile, "is a file"), (afile / "sub", "is a file, not a folder"),
                      (work, "not empty and not a coprs export (it holds iter_2.pth, "
                             "last_checkpoint)"),
                      (export, "also holds notes.txt")):
        assert main(["export-hf", str(TINY_CONFIG), str(ckpt), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert said in err and f"'{out}'" in err and len(err.strip().splitlines()) == 1, err
    assert afile.read_text() == "mine" and (export / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["iter_2.pth", "last_checkpoint"]


def test_a_trained_vision_backbone_is_refused(tmp_path, capsys):
    opts = ["--cfg-options", "model.vision_backbone.frozen=False"]
    model = init_segmentor(str(TINY_CONFIG), cfg_options={"model.vision_backbone.frozen": False})
    assert any(p.requires_grad for p in model.vision_backbone.parameters())
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    assert main(["export-hf", str(TINY_CONFIG), str(tmp_path / "ckpt.pth"), "--out",
                 str(tmp_path / "ex"), *opts]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "outside the policy, prior and decoder (vision_backbone." in err[0]
    assert "model.vision_backbone.frozen=True" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
