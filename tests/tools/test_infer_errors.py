"""`coprs infer`: bad arguments are one line, `error: …`, exit 2, before a model is built."""

import json
from pathlib import Path

import pytest
import torch

from coprs.cli import main

from ..conftest import TINY_CONFIG  # noqa: TID252

SAMPLE = str(Path(__file__).resolve().parents[2] / "coprs" / "assets" / "sample.png")
INFER = ["infer", "--config", str(TINY_CONFIG)]


@pytest.fixture
def no_build(monkeypatch):
    """Building the model fails the test: every check here must come before it."""
    monkeypatch.setattr("coprs.apis.init_segmentor",
                        lambda *a, **k: pytest.fail("the model was built"))


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "weights_only=False" not in err
    return err


def test_a_file_that_is_not_a_checkpoint_is_named_before_the_model_is_built(tmp_path, capsys,
                                                                            no_build):
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"state_dict": {}}, work / "iter_1.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_1.pth"))
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"image": SAMPLE, "instruction": "a"}) + "\n")
    cases = {
        str(TINY_CONFIG): f"error: --checkpoint '{TINY_CONFIG}' is a config file, not a checkpoint",
        str(work / "last_checkpoint"): f"error: --checkpoint '{work / 'last_checkpoint'}' is a "
                                       f"training work dir's pointer to its newest checkpoint, "
                                       f"not a checkpoint; give the work dir '{work}'",
        str(jsonl): f"error: --checkpoint '{jsonl}' is not a checkpoint",
    }
    for checkpoint, message in cases.items():
        assert main([*INFER, "--checkpoint", checkpoint, SAMPLE, "a"]) == 2
        assert _error(capsys).startswith(message)


def test_a_checkpoint_torch_cannot_read_safely_is_one_line_before_the_model_is_built(
        tmp_path, capsys, no_build):
    import argparse

    bad = tmp_path / "objects.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, bad)
    assert main([*INFER, "--checkpoint", str(bad), SAMPLE, "a"]) == 2
    err = _error(capsys)
    assert f"--checkpoint '{bad}' cannot be read with torch.load(weights_only=True)" in err


def test_out_that_is_a_file_is_an_error_before_the_model_is_built(tmp_path, capsys, no_build):
    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    assert main([*INFER, SAMPLE, "a", "--out", str(taken)]) == 2
    assert _error(capsys) == (f"error: --out '{taken}' is a file; give a folder (created if "
                              "missing)")
    assert main([*INFER, SAMPLE, "a", "--out", str(taken / "sub")]) == 2
    assert f"is inside '{taken}', which is a file" in _error(capsys)
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_max_new_tokens_below_one_is_a_usage_error(capsys, no_build, budget):
    assert main([*INFER, SAMPLE, "a", "--max-new-tokens", budget]) == 2
    assert _error(capsys) == (f"error: --max-new-tokens {budget} must be at least 1 (leave it "
                              "out for the policy's default)")


def test_input_jsonl_and_a_positional_image_exclude_each_other(tmp_path, capsys, no_build):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"image": SAMPLE, "instruction": "a"}) + "\n")
    assert main([*INFER, "--input-jsonl", str(jsonl), SAMPLE, "the star"]) == 2
    err = _error(capsys)
    assert "--input-jsonl takes the images and instructions from its lines" in err
    assert f"drop the positional '{SAMPLE}' 'the star'" in err
    assert main([*INFER, "--input-jsonl", str(jsonl), SAMPLE]) == 2
    assert f"drop the positional '{SAMPLE}'," in _error(capsys)


def test_a_folder_given_as_the_image_says_so(tmp_path, capsys, no_build):
    assert main([*INFER, str(tmp_path), "a"]) == 2
    assert _error(capsys) == f"error: image '{tmp_path}' is a folder; give an image file"


def test_a_good_checkpoint_and_out_folder_pass_the_checks(tmp_path, capsys, monkeypatch):
    """The checks let a real checkpoint (file or work dir) and an existing --out folder through
    to the model build."""
    built = []

    def init_segmentor(cfg, checkpoint, device):
        built.append(checkpoint)
        raise ValueError("stop here")

    monkeypatch.setattr("coprs.apis.init_segmentor", init_segmentor)
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, work / "iter_2.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    for checkpoint in (work, work / "iter_2.pth"):
        assert main([*INFER, "--checkpoint", str(checkpoint), SAMPLE, "a", "--out",
                     str(tmp_path), "--max-new-tokens", "1"]) == 2
        assert _error(capsys) == "error: stop here"
    assert built == [str(work / "iter_2.pth")] * 2


def test_demo_checks_its_checkpoint_the_same_way_before_building(tmp_path, capsys, no_build):
    pytest.importorskip("gradio")
    import argparse

    bad = tmp_path / "objects.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, bad)
    for checkpoint, message in ((TINY_CONFIG, "is a config file, not a checkpoint"),
                                (bad, "cannot be read with torch.load(weights_only=True)")):
        assert main(["demo", "--config", str(TINY_CONFIG), "--checkpoint", str(checkpoint)]) == 2
        assert f"error: --checkpoint '{checkpoint}' {message}" in _error(capsys)
