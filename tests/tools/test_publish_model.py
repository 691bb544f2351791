"""``coprs publish-model``: a training checkpoint stripped to ``state_dict`` + ``meta``."""

import argparse
import hashlib
import re

import pytest
import torch

from coprs.apis import init_segmentor, load_checkpoint
from coprs.cli import main
from coprs.commands.common import UsageError
from coprs.commands.publish_model import publish_checkpoint, run

from ..conftest import TINY_CONFIG  # noqa: TID252


def training_checkpoint(model, shift: float) -> dict:
    """What ``coprs train`` saves (see PlainCheckpointStateHook): the trainable weights, moved off
    their initialisation by ``shift``, with the state only resuming needs."""
    state = {k: v.clone() + shift if v.is_floating_point() else v.clone()
             for k, v in model.state_dict().items() if not k.startswith("vision_backbone.")}
    moments = {i: {"step": torch.tensor(7.0), "exp_avg": torch.randn_like(v),
                   "exp_avg_sq": torch.rand_like(v)}
               for i, v in enumerate(t for t in state.values() if t.is_floating_point())}
    return {
        "meta": {"iter": 7, "seed": 0, "cfg": "model = dict(type='ReasoningSegmentor')",
                 "mmengine_version": "0.10.7"},
        "state_dict": state,
        "message_hub": {"log_scalars": {"train/loss": [[0.5], [1]]}, "runtime_info": {"iter": 7}},
        "optimizer": {"state": moments, "param_groups": [{"lr": 1e-4, "params": list(moments)}]},
        "param_schedulers": [{"last_step": 7, "base_lrs": [1e-4]}],
        "rng": {"torch": torch.get_rng_state(), "python": [3, [1, 2], None]},
    }


@pytest.fixture(scope="module")
def checkpoint(tiny_segmentor, tmp_path_factory):
    """(the checkpoint dict, its file)."""
    ckpt = training_checkpoint(tiny_segmentor, 0.25)
    path = tmp_path_factory.mktemp("ckpt") / "iter_7.pth"
    torch.save(ckpt, path)
    return ckpt, path


def test_published_checkpoint_keeps_the_weights_and_drops_the_rest(checkpoint, tmp_path,
                                                                   capsys):
    ckpt, path = checkpoint
    assert main(["publish-model", str(path), str(tmp_path / "pub" / "tiny.pth")]) == 0
    [published] = (tmp_path / "pub").iterdir()  # no temporary file left beside it
    sha = hashlib.sha256(published.read_bytes()).hexdigest()
    assert published.name == f"tiny-{sha[:8]}.pth"
    out = capsys.readouterr().out
    assert re.search(rf"{re.escape(str(published))}  [\d.]+ MB -> [\d.]+ MB", out), out
    assert "dropped message_hub, optimizer, param_schedulers, rng" in out
    assert published.stat().st_size < path.stat().st_size / 2  # the Adam moments are gone
    loaded = torch.load(published, map_location="cpu", weights_only=True)
    assert list(loaded) == ["state_dict", "meta"] and loaded["meta"] == ckpt["meta"]
    model = init_segmentor(str(TINY_CONFIG), seed=11)
    load_checkpoint(model, published)
    mine = model.state_dict()
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(mine[k], v), k
    assert main(["publish-model", str(path), str(tmp_path / "pub" / "tiny.pth")]) == 0
    assert [p.name for p in (tmp_path / "pub").iterdir()] == [published.name]  # same bytes


def test_a_work_dir_publishes_its_last_checkpoint(tiny_segmentor, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for n, shift in ((1, 0.0), (2, 1.0)):
        torch.save(training_checkpoint(tiny_segmentor, shift), work / f"iter_{n}.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    done = publish_checkpoint(work, tmp_path / "out.pth")
    assert done.source == work / "iter_2.pth" and done.kept == ("state_dict", "meta")
    state = torch.load(done.path, weights_only=True)["state_dict"]
    expected = torch.load(work / "iter_2.pth", weights_only=True)["state_dict"]
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)


def test_an_interrupted_write_leaves_no_file(checkpoint, tmp_path, monkeypatch):
    def crash(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        publish_checkpoint(checkpoint[1], tmp_path / "tiny.pth")
    assert list(tmp_path.iterdir()) == []


def _bad_inputs(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "text.pth").write_text("not a checkpoint")
    (tmp_path / "cfg.py").write_text("model = dict()\n")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": print}, tmp_path / "unsafe.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pth")
    return [
        ("missing.pth", "out.pth", "'{t}/missing.pth' does not exist"),
        ("empty_dir", "out.pth", "'{t}/empty_dir' is a folder without a last_checkpoint"),
        ("text.pth", "out.pth", "checkpoint '{t}/text.pth' is not a checkpoint (torch.save "
                                "writes a zip archive or a pickle, and this file is neither)"),
        ("cfg.py", "out.pth", "checkpoint '{t}/cfg.py' is a config file, not a checkpoint; "
                              "give a .pth written by coprs train"),
        ("unsafe.pth", "out.pth", "'{t}/unsafe.pth' with torch.load(weights_only=True) "
                                  "(Unsupported global"),
        ("plain.pth", "out.pth", "'{t}/plain.pth' has no 'state_dict': it is not a "
                                 "coprs/mmengine training checkpoint"),
        ("plain.pth", "out.pt", "output '{t}/out.pt' must end in .pth"),
    ]


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    for src, out, message in _bad_inputs(tmp_path):
        before = sorted(tmp_path.iterdir())
        assert main(["publish-model", str(tmp_path / src), str(tmp_path / out)]) == 2, src
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert message.format(t=tmp_path) in err, err
        assert sorted(tmp_path.iterdir()) == before, src
    args = argparse.Namespace(checkpoint=str(tmp_path / "plain.pth"), out=str(tmp_path / "o.pth"))
    with pytest.raises(UsageError, match="not a coprs/mmengine training checkpoint"):
        run(args)
