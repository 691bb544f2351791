"""Bad input to the Python API is a one-line error naming it, raised before a model is built."""

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coprs.apis import init_segmentor, load_checkpoint, segment, segment_batch
from coprs.image import load_image

from ..conftest import TINY_CONFIG  # noqa: TID252

SAMPLE = Path(__file__).resolve().parents[2] / "coprs" / "assets" / "sample.png"


@pytest.fixture
def no_build(monkeypatch):
    """Any model build fails the test: the error must come first."""
    from coprs.registry import MODELS

    monkeypatch.setattr(MODELS, "build", lambda *a, **k: pytest.fail("the model was built"))


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert len(text.splitlines()) == 1 and "weights_only=False" not in text, text
    return text


def _not_checkpoints(tmp_path) -> dict:
    work = tmp_path / "work"
    work.mkdir()
    (work / "iter_1.pth").write_bytes(b"")
    (work / "last_checkpoint").write_text(str(work / "iter_1.pth"))
    (tmp_path / "in.jsonl").write_text('{"image": "a.png", "instruction": "x"}\n')
    torch.save({"a": torch.zeros(3)}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:200])
    (tmp_path / "empty.pth").write_bytes(b"")
    return {
        str(TINY_CONFIG): "is a config file, not a checkpoint",
        str(work / "last_checkpoint"): f"pointer to its newest checkpoint, not a checkpoint; "
                                       f"give the work dir '{work}'",
        str(tmp_path / "in.jsonl"): "is not a checkpoint (torch.save writes a zip archive or a "
                                    "pickle, and this file is neither)",
        str(SAMPLE): "is not a checkpoint",
        str(tmp_path / "cut.pth"): "is a truncated or damaged zip archive",
        str(tmp_path / "empty.pth"): "is empty (0 bytes)",
    }


def test_a_file_that_is_not_a_checkpoint_is_named_before_the_model_is_built(tmp_path, no_build):
    for path, message in _not_checkpoints(tmp_path).items():
        with pytest.raises(ValueError) as exc:
            init_segmentor(str(TINY_CONFIG), checkpoint=path)
        text = _one_line(exc)
        assert text.startswith(f"checkpoint '{path}'") and message in text, text


def test_an_unreadable_checkpoint_is_one_line_without_weights_only_false(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, path)
    for model in (torch.nn.Linear(2, 2),):
        with pytest.raises(ValueError) as exc:
            load_checkpoint(model, path)
        text = _one_line(exc)
        assert f"cannot read checkpoint '{path}' with torch.load(weights_only=True)" in text
        assert "argparse.Namespace" in text and "state dict of tensors" in text
    torch.save({"state_dict": {"weight": torch.ones(2, 2), "bias": torch.ones(2)}}, path)
    model = torch.nn.Linear(2, 2)
    load_checkpoint(model, path)  # a good one still loads
    assert torch.equal(model.weight, torch.ones(2, 2))


def test_one_weights_only_reader_serves_the_api_and_the_commands(tmp_path, monkeypatch):
    """``load_torch_file`` is coprs's one ``torch.load``: always ``weights_only=True`` (SPEC §7),
    memory-mapped on request (a legacy-format file, which cannot be mapped, is read), and a file
    it cannot read is a one-line ValueError naming it; the commands' readers go through it."""
    from coprs.apis.inference import load_torch_file
    from coprs.commands import common
    from coprs.commands.common import UsageError, check_checkpoint_readable, read_checkpoint

    assert not hasattr(common, "_torch_load")
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    state = {"state_dict": {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("zip.pth", "legacy.pth"):
        for mmap in (False, True):
            got = load_torch_file(tmp_path / name, mmap=mmap)
            assert torch.equal(got["state_dict"]["weight"], torch.ones(2, 2)), (name, mmap)
    assert read_checkpoint(tmp_path / "legacy.pth", mmap=True)[0] == tmp_path / "legacy.pth"
    assert set(check_checkpoint_readable(tmp_path / "zip.pth", "--resume")) == {"state_dict"}
    load_checkpoint(torch.nn.Linear(2, 2), tmp_path / "zip.pth")
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu"
                         for c in calls), calls

    bad = tmp_path / "objects.pth"
    torch.save({"args": argparse.Namespace(lr=1)}, bad)
    with pytest.raises(ValueError) as exc:
        load_torch_file(bad, "seg head", mmap=True)
    assert _one_line(exc).startswith(f"cannot read seg head '{bad}' with "
                                     "torch.load(weights_only=True) (Unsupported global")
    assert "argparse.Namespace" in str(exc.value) and "state dict of tensors" in str(exc.value)
    assert type(exc.value.__cause__).__name__ == "UnpicklingError"
    with pytest.raises(UsageError, match=r"^cannot read checkpoint '.*objects\.pth' with "
                                         r"torch\.load\(weights_only=True\) \(Unsupported global.*"
                                         r"; give a \.pth written by coprs train$"):
        read_checkpoint(bad)
    with pytest.raises(UsageError, match=r"^--resume '.*objects\.pth' cannot be read with "
                                         r"torch\.load\(weights_only=True\) \(Unsupported global"):
        check_checkpoint_readable(bad, "--resume")


def test_a_config_that_is_not_a_config_file_is_a_value_error_naming_it(tmp_path, no_build):
    ckpt = tmp_path / "iter_10.pth"
    torch.save({"a": torch.zeros(1)}, ckpt)
    with pytest.raises(ValueError) as exc:
        init_segmentor(str(ckpt))
    assert _one_line(exc) == (f"config '{ckpt}' is not a config file (a checkpoint? give it as "
                              "the checkpoint); give a .py, .json, .yml, .yaml file")
    with pytest.raises(ValueError, match="config '.*' is a folder; give a config file"):
        init_segmentor(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        init_segmentor(tmp_path / "nope.py")


class _Recorder:
    """A stand-in segmentor that records the budget it is asked for."""

    def __init__(self):
        self.budgets = []

    def predict_images(self, images, instructions, responses=None, max_new_tokens=None):
        self.budgets.append(max_new_tokens)
        return ["result"] * len(images)


def test_max_new_tokens_below_one_is_an_error_and_none_is_the_default():
    model = _Recorder()
    for bad in (0, -5):
        with pytest.raises(ValueError, match=f"max_new_tokens is {bad}; give at least 1, or None"):
            segment(model, SAMPLE, "a", max_new_tokens=bad)
        with pytest.raises(ValueError, match=f"max_new_tokens is {bad}"):
            segment_batch(model, [SAMPLE], ["a"], max_new_tokens=bad)
    for bad in (True, 2.5, "8"):
        with pytest.raises(TypeError, match="max_new_tokens must be an int or None"):
            segment(model, SAMPLE, "a", max_new_tokens=bad)
    assert model.budgets == []
    assert segment(model, SAMPLE, "a") == "result"
    assert segment(model, SAMPLE, "a", max_new_tokens=np.int64(3)) == "result"
    assert segment_batch(model, [SAMPLE], ["a"], max_new_tokens=1) == ["result"]
    assert model.budgets == [None, 3, 1]


@pytest.mark.parametrize("image, message", [
    (np.zeros((0, 5, 3), np.uint8), "the image array is empty (0x5)"),
    (np.zeros((0, 5), np.int32), "the image array is empty (0x5)"),
    (np.zeros((0, 5, 3), np.float32), "the image array is empty (0x5)"),
    (np.zeros((1, 201, 3), np.uint8), "the image array is 1x201: more elongated than 200:1"),
    (np.full((4, 4, 3), 2.0), "the image array is a float image (float64): it must hold "
                                "finite values in [0, 1]"),
    (np.full((4, 4), -1, np.int32), "the image array (int32) holds values from -1 to -1; int32 "
                                    "images must hold values in [0, 65535]"),
    (np.full((4, 4), 70000, np.int64), "the image array (int64) holds values from 70000 to 70000"),
    (np.zeros((4, 4), bool), "the image array has unsupported dtype bool"),
    (np.zeros((4, 4, 2), np.uint8), "the image array has shape (4, 4, 2)"),
    (Image.new("RGB", (300, 1)), "the PIL image is 1x300"),
])
def test_image_errors_name_the_input_consistently(image, message):
    with pytest.raises(ValueError) as exc:
        load_image(image)
    assert str(exc.value).startswith(message), str(exc.value)
    assert "'None'" not in str(exc.value) and "'array'" not in str(exc.value)


def test_image_errors_use_the_given_name_and_int_images_in_range_load():
    with pytest.raises(ValueError, match=r"^image 'cat.png' \(int32\) holds values from -3"):
        load_image(np.full((4, 4), -3, np.int32), name="cat.png")
    assert load_image(np.full((2, 2), 65535, np.int32)).tolist() == [[[255] * 3] * 2] * 2


def test_a_folder_given_as_the_image_says_it_is_a_folder(tmp_path):
    with pytest.raises(ValueError, match=f"^image '{re.escape(str(tmp_path))}' is a folder; give an "
                                                   "image file$"):
        load_image(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_a_lora_checkpoint_on_a_model_without_adapters_names_the_lora_options(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    state = {**model.state_dict(), "0.lora_A.default.weight": torch.zeros(1, 2)}
    torch.save({"state_dict": state}, tmp_path / "lora.pth")
    with pytest.raises(ValueError) as exc:
        load_checkpoint(model, tmp_path / "lora.pth")
    text = _one_line(exc)
    assert "unexpected ['0.lora_A.default.weight']" in text
    assert "trained with LoRA adapters and the model has none" in text
    assert f"coprs print-config {tmp_path / 'lora.pth'}" in text


def test_lora_cfg_options_rebuild_the_recorded_adapters():
    """The options a LoRA checkpoint's error gives, from meta['coprs_lora']: the recorded keys,
    the trained token rows only when they are not the default, shell-quoted when they are a
    list of tokens."""
    import shlex

    from coprs.apis.inference import lora_cfg_options

    def meta(**lora):
        return {"coprs_lora": {"lora": lora, "tiny": None, "model_path": "/m"}}

    rows = ["<think>", "</think>", "<REF_POS>"]
    assert lora_cfg_options({}) is None and lora_cfg_options(None) is None
    assert lora_cfg_options(meta(r=4, trainable_tokens=rows)) == "model.policy.lora.r=4"
    assert lora_cfg_options(meta(trainable_tokens=rows)) == "model.policy.lora.r=8"
    assert lora_cfg_options(meta(r=4, trainable_tokens=[])) == (
        "model.policy.lora.r=4 model.policy.lora.trainable_tokens=False")
    chosen = lora_cfg_options(meta(r=4, trainable_tokens=["<REF_POS>"]))
    assert shlex.split(chosen) == ["model.policy.lora.r=4",
                                   "model.policy.lora.trainable_tokens=['<REF_POS>']"]
    # LISA's special token: its own default rows are not spelt out
    assert lora_cfg_options(meta(r=4, trainable_tokens=["<think>", "</think>", "<SEG>"]),
                            special_token="<SEG>") == "model.policy.lora.r=4"
