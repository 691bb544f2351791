import json

import numpy as np
import pytest
from PIL import Image

from coprs.cli import build_parser, main

from ..conftest import TINY_CONFIG  # noqa: TID252


def test_every_subcommand_has_help_with_an_example(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "example:" in capsys.readouterr().out


def test_infer_writes_every_output(tmp_path, capsys):
    img = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    out = tmp_path / "out"
    rc = main(["infer", "--config", str(TINY_CONFIG), str(tmp_path / "img.png"), "the cup",
               "--out", str(out), "--max-new-tokens", "4"])
    assert rc == 0
    for name in ("response.txt", "heatmap.png", "mask.png", "panel.png", "result.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "result.json").read_text())
    assert res["instruction"] == "the cup" and res["image_size"] == {"height": 45, "width": 70}
    assert isinstance(res["mask_rle"]["counts"], str) and res["format_ok"] is False
    from coprs.datasets.masks import rle_to_mask

    mask = np.asarray(Image.open(out / "mask.png")) > 0
    assert mask.shape == (45, 70)
    assert np.array_equal(rle_to_mask(res["mask_rle"]), mask)
    assert "chain of thought" in capsys.readouterr().out


def test_infer_batch_reports_and_skips_bad_lines(tmp_path, capsys):
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    lines = [json.dumps({"image": str(tmp_path / "ok.png"), "instruction": "a"}),
             "{not json",
             json.dumps({"image": str(tmp_path / "missing.png"), "instruction": "b"}),
             json.dumps({"image": str(tmp_path / "ok.png"), "instruction": "c"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    rc = main(["infer", "--config", str(TINY_CONFIG), "--input-jsonl",
               str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o"),
               "--max-new-tokens", "2"])
    assert rc == 0
    assert (tmp_path / "o" / "000001" / "mask.png").is_file()
    assert (tmp_path / "o" / "000004" / "result.json").is_file()
    err = capsys.readouterr().err
    assert "2 failed" in err and "in.jsonl:2" in err and "missing.png" in err


@pytest.mark.parametrize("argv, message", [
    (["infer", "--config", "configs/nope.py", "x.png", "a"], "config"),
    (["infer", "--config", str(TINY_CONFIG), "/nowhere/x.png", "a"], "does not exist"),
    (["infer", "--config", str(TINY_CONFIG), "x.png", "a", "--checkpoint", "/no.pth"],
     "checkpoint"),
    (["infer", "--config", str(TINY_CONFIG)], "IMAGE and INSTRUCTION"),
])
def test_user_errors_are_one_line_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
