"""``coprs infer --input-jsonl … --resume``: a batch killed part way keeps the lines it
finished and segments the rest, with the results of an uninterrupted run."""

import json

import numpy as np
from PIL import Image

from coprs.cli import main
from coprs.models.segmentor import ReasoningSegmentor

from ..conftest import TINY_CONFIG  # noqa: TID252


def _batch(tmp_path, seed):
    """Two random images and a four-line input naming them in turn: (rng, lines, jsonl)."""
    rng = np.random.default_rng(seed)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    lines = [{"image": str(tmp_path / f"{i % 2}.png"), "instruction": f"the shape {i}"}
             for i in range(4)]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return rng, lines, jsonl


def test_a_killed_batch_resumes_with_the_same_results(tmp_path, monkeypatch, capsys):
    _, lines, jsonl = _batch(tmp_path, seed=0)
    real, calls, fail_at = ReasoningSegmentor.predict_images, [], []

    def counting(self, images, *args, **kwargs):
        if fail_at and len(calls) >= fail_at[0]:
            raise KeyboardInterrupt  # the job is stopped after some lines
        calls.extend(images)
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(ReasoningSegmentor, "predict_images", counting)
    base = ["infer", "--config", str(TINY_CONFIG), "--input-jsonl", str(jsonl),
            "--max-new-tokens", "4"]
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    calls.clear()
    fail_at.append(2)
    try:
        main([*base, "--out", str(tmp_path / "run")])
    except KeyboardInterrupt:
        pass
    assert len(calls) == 2 and not (tmp_path / "run" / "000003").exists()
    # a folder cut short (no result.json) is segmented again
    (tmp_path / "run" / "000002" / "result.json").unlink()
    calls.clear()
    fail_at.clear()
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert len(calls) == 3
    assert "4 of 4 lines segmented" in capsys.readouterr().out
    for n in range(1, 5):
        for name in ("result.json", "mask.png", "response.txt"):
            assert ((tmp_path / "run" / f"{n:06d}" / name).read_bytes()
                    == (tmp_path / "ref" / f"{n:06d}" / name).read_bytes()), (n, name)
    # a line edited since is segmented again; the others are kept
    lines[3]["instruction"] = "another"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    calls.clear()
    assert main([*base, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert len(calls) == 1
    assert json.loads((tmp_path / "run" / "000004" / "result.json").read_text())[
        "instruction"] == "another"
    # a line whose given response is removed is generated again, not kept teacher-forced
    lines[0]["response"] = "<think>x</think><REF_POS>"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    calls.clear()
    assert main([*base, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert len(calls) == 1
    del lines[0]["response"]
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    calls.clear()
    assert main([*base, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert len(calls) == 1
    assert ((tmp_path / "run" / "000001" / "response.txt").read_bytes()
            == (tmp_path / "ref" / "000001" / "response.txt").read_bytes())
    # a run of another budget started over into the folder and stopped after one line: its
    # resume keeps that line only, not the older run's results
    calls.clear()
    fail_at.append(1)
    try:
        main([*base[:-1], "5", "--out", str(tmp_path / "run")])
    except KeyboardInterrupt:
        pass
    calls.clear()
    fail_at.clear()
    assert main([*base[:-1], "5", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert len(calls) == 3
    # another response budget is another run: refused, naming it; --resume needs a batch
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "max_new_tokens: 5 then, 4 now" in capsys.readouterr().err
    assert main(["infer", "--config", str(TINY_CONFIG), str(tmp_path / "0.png"), "a",
                 "--resume"]) == 2


def test_resume_redoes_changed_images_and_never_keeps_a_stale_result(tmp_path, monkeypatch,
                                                                     capsys):
    rng, lines, jsonl = _batch(tmp_path, seed=1)
    real, calls = ReasoningSegmentor.predict_images, []

    def counting(self, images, *args, **kwargs):
        calls.extend(images)
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(ReasoningSegmentor, "predict_images", counting)
    cmd = ["infer", "--config", str(TINY_CONFIG), "--input-jsonl", str(jsonl),
           "--max-new-tokens", "4", "--out", str(tmp_path / "run"), "--resume"]
    assert main(cmd) == 0 and len(calls) == 4
    # 1.png (lines 2 and 4) overwritten in place, same path: those two are segmented again
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "1.png")
    calls.clear()
    assert main(cmd) == 0 and len(calls) == 2
    assert main(cmd) == 0 and len(calls) == 2  # and then kept
    # a line whose image is gone fails, and its earlier result is not left as this run's
    lines[2]["image"] = str(tmp_path / "gone.png")
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines[:3]))
    capsys.readouterr()
    assert main(cmd) == 0
    captured = capsys.readouterr()
    assert not any((tmp_path / "run" / "000003").iterdir())  # none of its earlier outputs
    assert (tmp_path / "run" / "000001" / "result.json").exists()
    assert "gone.png" in captured.err and "2 of 3 lines segmented" in captured.out
    # line 4 is no line of this shorter input: named, left as it is
    assert "000004" in captured.err and "1 folder(s)" in captured.err
    assert (tmp_path / "run" / "000004" / "result.json").exists()
    # a folder, or an empty path, given as an image is not walked for a stamp
    from coprs.commands.infer import _image_stamp

    assert _image_stamp(str(tmp_path)) is None and _image_stamp("") is None
    assert _image_stamp(str(tmp_path / "0.png"))["size"] > 0
