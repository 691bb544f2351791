"""The web demo: the work behind its buttons, the served page through gradio's client, the CLI."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from coprs.apis import demo as web
from coprs.cli import main

from ..conftest import TINY_CONFIG  # noqa: TID252

GIVEN = "<think>the purple star</think><REF_POS>"


def test_demo_segment_generates_and_writes_what_the_page_shows(tiny_segmentor, tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    out = web.demo_segment(tiny_segmentor, img, "the star", max_new_tokens=4, out_root=tmp_path)
    assert out.heatmap.shape == out.mask.shape == (40, 56, 3)
    assert out.heatmap.dtype == out.mask.dtype == np.uint8
    assert out.status.startswith("generated response")
    assert [p.rsplit("/", 1)[1] for p in out.files] == ["panel.png", "mask.png", "result.json"]
    summary = json.loads(open(out.files[2], encoding="utf-8").read())
    assert summary["instruction"] == "the star" and summary["response"] == out.response
    assert f"mask {summary['mask_area']} px" in out.status
    assert Image.open(out.files[1]).size == (56, 40)
    # a second request gets its own folder, not the first one's files
    again = web.demo_segment(tiny_segmentor, img, "the star", max_new_tokens=4, out_root=tmp_path)
    assert again.files[0] != out.files[0] and len(list(tmp_path.iterdir())) == 2


def test_demo_segment_teacher_forces_an_edited_response(tiny_segmentor, tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = web.demo_segment(tiny_segmentor, img, "x", response=GIVEN, out_root=tmp_path)
    assert out.response == GIVEN and out.cot == "the purple star"
    assert out.status.startswith("given response · format ok")
    other = web.demo_segment(tiny_segmentor, img, "x",
                             response="<think>the red circle</think><REF_POS>", out_root=tmp_path)
    assert not np.array_equal(out.heatmap, other.heatmap)  # the reasoning moves the prior
    bad = web.demo_segment(tiny_segmentor, img, "x", response="no tags", out_root=tmp_path)
    assert "format NOT ok" in bad.status  # flagged, not raised
    # a blank response box means: generate one
    blank = web.demo_segment(tiny_segmentor, img, "x", response="  ", max_new_tokens=2,
                             out_root=tmp_path)
    assert blank.status.startswith("generated response")


def test_demo_segment_names_bad_input(tiny_segmentor, tmp_path):
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="no image"):
        web.demo_segment(tiny_segmentor, None, "x", out_root=tmp_path)
    for empty in (None, "", "   "):
        with pytest.raises(ValueError, match="instruction is empty"):
            web.demo_segment(tiny_segmentor, img, empty, out_root=tmp_path)
    (tmp_path / "notimage.png").write_text("hello")
    with pytest.raises(ValueError, match="notimage.png"):
        web.demo_segment(tiny_segmentor, tmp_path / "notimage.png", "x", out_root=tmp_path)


def test_a_blocking_launch_prints_the_local_url_and_no_share_advice(tiny_segmentor, tmp_path,
                                                                     monkeypatch, capsys):
    demo = web.build_demo(tiny_segmentor, examples=[], out_root=tmp_path, max_new_tokens=6)
    blocked = []
    monkeypatch.setattr(type(demo), "block_thread", lambda self: blocked.append(True))
    _, url, _ = web.launch_demo(demo, server_port=None, block=True)
    try:
        out = capsys.readouterr().out
        assert blocked and f"Running on local URL:  {url}" in out
        assert "share=True" not in out and "public link" not in out
    finally:
        demo.close()


def test_served_page_through_gradio_client(tiny_segmentor, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    image_path, instruction = web.sample_examples()[0]
    demo = web.build_demo(tiny_segmentor, examples=web.sample_examples(), out_root=tmp_path,
                          max_new_tokens=6)
    _, url, share_url = web.launch_demo(demo, server_port=None, block=False)
    try:
        assert share_url is None and url.startswith("http://127.0.0.1:")
        assert demo.analytics_enabled is False
        client = Client(url, verbose=False)
        assert {"/segment", "/resegment"} <= set(client.view_api(return_format="dict")
                                                 ["named_endpoints"])
        response, cot, status, heatmap, mask, files = client.predict(
            handle_file(image_path), instruction, 6, api_name="/segment")
        assert status.startswith("generated response")
        size = Image.open(image_path).size
        assert Image.open(heatmap).size == Image.open(mask).size == size
        assert sorted(f.rsplit("/", 1)[1] for f in files) == ["mask.png", "panel.png",
                                                              "result.json"]
        assert len(list(tmp_path.iterdir())) == 1  # the request's files, under --out
        response, cot, status, *_ = client.predict(handle_file(image_path), instruction, GIVEN,
                                                   api_name="/resegment")
        assert response == GIVEN and cot == "the purple star" and "format ok" in status
        with pytest.raises(AppError, match="instruction is empty"):
            client.predict(handle_file(image_path), "  ", 6, api_name="/segment")
        with pytest.raises(AppError, match="response box is empty"):
            client.predict(handle_file(image_path), instruction, "", api_name="/resegment")
        with pytest.raises(AppError, match="greater than maximum"):  # the slider's bound
            client.predict(handle_file(image_path), instruction, 7, api_name="/segment")
    finally:
        demo.close()


def test_cli_without_gradio_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    monkeypatch.setattr("coprs.apis.init_segmentor", lambda *a, **k: pytest.fail("built"))
    assert main(["demo", "--config", str(TINY_CONFIG)]) == 2
    assert 'pip install -e ".[demo]"' in capsys.readouterr().err


def test_cli_builds_the_page_and_serves_it_where_asked(tiny_segmentor, monkeypatch, tmp_path,
                                                       capsys):
    built, served = {}, {}
    monkeypatch.setattr("coprs.apis.init_segmentor",
                        lambda cfg, ckpt, device: built.update(ckpt=ckpt) or tiny_segmentor)
    monkeypatch.setattr(web, "launch_demo", lambda demo, **kw: served.update(kw, demo=demo))
    assert main(["demo", "--config", str(TINY_CONFIG), "--port", "7999", "--host", "0.0.0.0",
                 "--out", str(tmp_path), "--max-new-tokens", "5"]) == 0
    assert built == {"ckpt": None}
    assert served["server_name"] == "0.0.0.0" and served["server_port"] == 7999
    assert served["block"] is True and "coprs_tiny_shapes_cpu" in served["demo"].title
    slider = [c for c in served["demo"].blocks.values() if type(c).__name__ == "Slider"][0]
    assert slider.maximum == 5
    assert main(["demo", "--config", str(TINY_CONFIG), "--port", "0"]) == 2
    assert "not a port number" in capsys.readouterr().err
    assert main(["demo", "--config", str(TINY_CONFIG), "--checkpoint",
                 str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err


def test_cli_examples_file(tiny_segmentor, monkeypatch, tmp_path, capsys):
    served = {}
    monkeypatch.setattr("coprs.apis.init_segmentor", lambda *a, **k: tiny_segmentor)
    monkeypatch.setattr(web, "launch_demo", lambda demo, **kw: served.update(demo=demo))
    image, _ = web.sample_examples()[0]
    good = tmp_path / "ex.jsonl"
    good.write_text("\n".join(json.dumps({"image": image, "instruction": t})
                              for t in ("the star", "the square")) + "\n")
    assert main(["demo", "--config", str(TINY_CONFIG), "--examples", str(good)]) == 0
    shown = [c for c in served["demo"].blocks.values() if type(c).__name__ == "Dataset"][0]
    assert [row[1] for row in shown.raw_samples] == ["the star", "the square"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "nowhere.png", "instruction": "x"}) + "\n{oops\n")
    monkeypatch.setattr("coprs.apis.init_segmentor", lambda *a, **k: pytest.fail("built"))
    assert main(["demo", "--config", str(TINY_CONFIG), "--examples", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1: image 'nowhere.png' does not exist" in err and "bad.jsonl:2" in err
