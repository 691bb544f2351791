"""tools/analysis/cot_consistency.py end to end on synthetic per-sample records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from coprs.datasets.shapes import ShapesReasonDataset
from coprs.evaluation.functional import COUNT_KEYS, results_subdir, write_per_sample

TOOL = Path(__file__).resolve().parents[2] / "tools" / "analysis" / "cot_consistency.py"
spec = importlib.util.spec_from_file_location("analysis_cot_consistency", TOOL)
cot_consistency = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cot_consistency)


def _record(sample_id, response, iou, heatmap_iou):
    return {"sample_id": sample_id, "instruction": "x", **{k: 0 for k in COUNT_KEYS},
            "pred_area": 0, "gt_area": 0, "ignore_area": 0, "iou": iou,
            "heatmap_iou": heatmap_iou, "format_ok": True, "response": response}


@pytest.fixture
def results(tmp_path):
    """12 `test` samples of the synthetic world: 6 answered with the gold reasoning (masks that
    fit), 5 with nonsense (masks that miss), 1 without a response; plus a sample the config's
    dataset does not have."""
    ds = ShapesReasonDataset(split="test", num_samples=12)
    records = []
    for i in range(12):
        info = ds.get_data_info(i)
        if i < 6:
            records.append(_record(info["sample_id"], info["response_coprs"], 0.9, 0.8))
        elif i < 11:
            records.append(_record(info["sample_id"], "<think>a a a</think><REF_POS>", 0.1, 0.05))
        else:
            records.append(_record(info["sample_id"], None, 0.5, 0.5))
    records.append(_record("test/000500", "<think>x</think><REF_POS>", 0.0, 0.0))
    root = tmp_path / "per_sample_generated"
    write_per_sample(root / results_subdir("shapes", "test") / "per_sample.jsonl", records)
    config = tmp_path / "cfg.py"
    config.write_text("test_cfg = dict(datasets=[dict(type='ShapesReasonDataset', split='test', "
                      "num_samples=12)])\n")
    return root, config


def test_shapes_judge_writes_table_plots_and_scores(results, tmp_path, capsys):
    root, config = results
    out = tmp_path / "analysis"
    assert cot_consistency.main([str(root), "--config", str(config), "--out", str(out)]) == 0
    sub = out / "shapes_test"
    summary = json.loads((sub / "consistency.json").read_text())
    assert (summary["n"], summary["n_judged"], summary["n_failed"]) == (13, 11, 2)
    assert [r["n"] for r in summary["table"]] == [5, 0, 0, 6]
    assert summary["table"][3]["mask_miou"] == pytest.approx(0.9)
    assert summary["table"][3]["heatmap_miou"] == pytest.approx(0.8)
    assert summary["table"][0]["mask_miou"] == pytest.approx(0.1)
    assert summary["pearson_r_iou"] == pytest.approx(1.0)
    assert summary["mean_score"] == pytest.approx(6 / 11)
    assert summary["mean_dims"]["visual_consistency"] == pytest.approx(6 / 11)
    assert any("no response text" in f for f in summary["failures"])
    assert any("has no sample 'test/000500'" in f for f in summary["failures"])
    rows = [json.loads(line) for line in (sub / "consistency.jsonl").read_text().splitlines()]
    assert len(rows) == 13 and rows[0]["score"] == pytest.approx(1.0)
    assert rows[0]["dims"]["visual_consistency"] == 1.0 and rows[6]["score"] == 0.0
    for png in ("consistency_heatmap.png", "consistency_mask.png"):
        assert (sub / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr()
    assert "| [0.75, 1] | 6 | 0.800 | 0.900 |" in printed.out
    assert "11 of 13 judged" in printed.out
    assert "not judged: test/000011" in printed.err


def test_scores_file_judge_needs_no_config(results, tmp_path, capsys):
    root, _ = results
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"sample_id": f"test/{i:06d}", "consistency": i / 11})
                              + "\n" for i in range(12)))
    assert cot_consistency.main([str(root), "--judge", f"scores:{scores}",
                                 "--edges", "0", "0.5", "1"]) == 0
    summary = json.loads((root / "shapes_test" / "consistency.json").read_text())
    assert summary["n_judged"] == 12 and [r["n"] for r in summary["table"]] == [6, 6]
    assert "| [0.5, 1] | 6 |" in capsys.readouterr().out


def test_bad_arguments(results, tmp_path, capsys):
    root, config = results
    assert cot_consistency.main([str(root)]) == 2  # the shapes judge needs the samples
    assert "needs the samples: give --config" in capsys.readouterr().err
    assert cot_consistency.main([str(root), "--judge", "vlm"]) == 2
    assert "use shapes, scores:FILE, vlm:DIR" in capsys.readouterr().err
    assert cot_consistency.main([str(root), "--judge", "NoSuchJudge"]) == 2
    assert "NoSuchJudge" in capsys.readouterr().err
    assert cot_consistency.main([str(root), "--judge", f"scores:{tmp_path / 'none.jsonl'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cot_consistency.main([str(tmp_path / "missing"), "--config", str(config)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cot_consistency.main(["--help"])
    assert exc.value.code == 0 and "example:" in capsys.readouterr().out


def test_no_judged_sample_is_a_failure(tmp_path, capsys):
    root = tmp_path / "res"
    write_per_sample(root / "shapes_test" / "per_sample.jsonl",
                     [_record("test/000000", "<think>x</think><REF_POS>", 0.2, 0.1)])
    scores = tmp_path / "s.jsonl"
    scores.write_text(json.dumps({"sample_id": "other", "consistency": 1}) + "\n")
    assert cot_consistency.main([str(root), "--judge", f"scores:{scores}"]) == 1
    err = capsys.readouterr().err
    assert "no sample could be judged (no score for sample 'test/000000'" in err
