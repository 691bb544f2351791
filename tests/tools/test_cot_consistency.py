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
    # the keys docs/evaluation.md lists, in every row; the shapes judge reports no more
    assert {tuple(r) for r in rows} == {("sample_id", "score", "dims", "iou", "heatmap_iou",
                                         "error", "detail")}
    assert all(r["detail"] == {} for r in rows)
    for png in ("consistency_heatmap.png", "consistency_mask.png"):
        assert (sub / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr()
    assert "| [0.75, 1] | 6 | 0.800 | 0.900 |" in printed.out
    assert "11 of 13 judged" in printed.out and "consistency_mask.png" in printed.out
    assert "not judged: test/000011" in printed.err

    # a rerun whose scores are all equal draws no plot: the earlier run's PNGs go too
    scores = tmp_path / "flat.jsonl"
    scores.write_text("".join(json.dumps({"sample_id": f"test/{i:06d}", "consistency": 0.5})
                              + "\n" for i in range(12)))
    assert cot_consistency.main([str(root), "--judge", f"scores:{scores}", "--out",
                                 str(out)]) == 0
    assert not (sub / "consistency_mask.png").exists()
    assert json.loads((sub / "consistency.json").read_text())["pearson_r_iou"] is None
    printed = capsys.readouterr()
    assert "no mask IoU plot" in printed.err and ".png" not in printed.out


def test_one_file_weights_and_a_judge_that_raises(results, tmp_path, capsys):
    from coprs.evaluation.consistency import BaseCoTJudge
    from coprs.registry import COT_JUDGES

    root, config = results
    per_sample = root / "shapes_test" / "per_sample.jsonl"
    out = tmp_path / "one"
    assert cot_consistency.main([str(per_sample), "--config", str(config), "--out", str(out),
                                 "--judge-cfg", 'weights={"localization_accuracy": 1}']) == 0
    summary = json.loads((out / "shapes_test" / "consistency.json").read_text())
    assert list(summary["mean_dims"]) == ["localization_accuracy"]
    assert summary["mean_score"] == pytest.approx(6 / 11)
    capsys.readouterr()

    class Fragile(BaseCoTJudge):  # raises on every second sample, judged 4 at a time
        batch_size = 4

        def __call__(self, record, sample=None):
            if int(record["sample_id"].split("/")[1]) % 2:
                raise ZeroDivisionError("division by zero")
            return self.judged(dict.fromkeys(self.weights, 1.0), output="fine")

    COT_JUDGES.register_module(name="FragileTestJudge", module=Fragile)
    try:
        assert cot_consistency.main([str(root), "--judge", "FragileTestJudge", "--out",
                                     str(tmp_path / "fragile")]) == 0
    finally:
        COT_JUDGES.module_dict.pop("FragileTestJudge")
    summary = json.loads((tmp_path / "fragile" / "shapes_test" / "consistency.json").read_text())
    assert summary["n_judged"] == 7 and summary["n_failed"] == 6  # odd ids of 0-11 raise
    assert any("the judge raised ZeroDivisionError: division by zero" in f
               for f in summary["failures"])
    rows = [json.loads(line) for line in
            (tmp_path / "fragile" / "shapes_test" / "consistency.jsonl").read_text().splitlines()]
    assert [r["detail"] for r in rows[:2]] == [{"output": "fine"}, {}]  # what the judge reports


def test_judge_cfg_takes_the_documented_json_weights(results, tmp_path, capsys):
    """docs/evaluation.md's example: a JSON object with commas and spaces, one shell word."""
    root, config = results
    weights = 'weights={"visual_consistency": 1, "logical_correctness": 1}'
    args = cot_consistency.parse_args([str(root), "--judge-cfg", weights, "batch_size=8",
                                       "device=cuda", 'note={"a b": [1, 2]}'])
    assert args.judge_cfg == {"weights": '{"visual_consistency": 1, "logical_correctness": 1}',
                              "batch_size": 8, "device": "cuda", "note": '{"a b": [1, 2]}'}
    cfg = cot_consistency.judge_config("shapes", args.judge_cfg)
    assert cfg["weights"] == {"visual_consistency": 1, "logical_correctness": 1}
    assert cfg["note"] == {"a b": [1, 2]} and cfg["batch_size"] == 8
    out = tmp_path / "two"
    assert cot_consistency.main([str(root), "--config", str(config), "--out", str(out),
                                 "--judge-cfg", weights]) == 0
    summary = json.loads((out / "shapes_test" / "consistency.json").read_text())
    assert set(summary["mean_dims"]) == {"visual_consistency", "logical_correctness"}
    capsys.readouterr()
    assert cot_consistency.main([str(root), "--config", str(config), "--judge-cfg",
                                 'weights={"visual_consistency": 1,']) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --judge-cfg weights=") and (
        "is not a JSON object" in err)


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
    err = capsys.readouterr().err
    assert "'NoSuchJudge': no such judge; use shapes, scores:FILE, vlm:DIR" in err
    assert "ShapesCoTJudge" in err
    # checked before a judge model would be loaded
    assert cot_consistency.main([str(root), "--judge", f"vlm:{tmp_path / 'no-model'}"]) == 2
    assert "VLMJudge needs the samples: give --config" in capsys.readouterr().err
    for bad in (["--edges", "0", "0.5"], ["--edges", "1", "0"], ["--level", "2"],
                ["--judge-cfg", "weights={1"]):
        assert cot_consistency.main([str(root), "--config", str(config), *bad]) == 2, bad
        assert "error" in capsys.readouterr().err
    assert not (root / "shapes_test" / "consistency.jsonl").exists()  # nothing was judged
    assert cot_consistency.main([str(root), "--judge", f"scores:{tmp_path / 'none.jsonl'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cot_consistency.main([str(tmp_path / "missing"), "--config", str(config)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # --config takes PLUGIN::path as every coprs command does
    assert cot_consistency.main([str(root), "--config", "no-such-plugin::tiny.py"]) == 2
    assert "no loaded plugin named 'no-such-plugin'" in capsys.readouterr().err
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
    assert "none of its 1 samples could be judged (no score for sample 'test/000000'" in err
