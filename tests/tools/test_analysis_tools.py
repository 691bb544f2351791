"""End-to-end tests of tools/analysis/ on temporary results dirs and training logs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from coprs.evaluation.functional import (
    results_subdir,
    sample_counts,
    sample_iou,
    write_per_sample,
)

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "analysis"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recompute_metrics = _load("recompute_metrics")
correlation = _load("correlation")
analyze_logs = _load("analyze_logs")


def _mask(pixels, shape=(4, 4)):
    mask = np.zeros(shape, dtype=bool)
    for r, c in pixels:
        mask[r, c] = True
    return mask


def _record(sample_id, pred, gt, ignore=None, heatmap_iou=0.5):
    counts = sample_counts(pred, gt, ignore)
    return {
        "sample_id": sample_id,
        "instruction": f"segment {sample_id}",
        **counts,
        "iou": sample_iou(counts),
        "heatmap_iou": heatmap_iou,
        "format_ok": True,
    }


@pytest.fixture
def results_dir(tmp_path):
    """ReasonSeg val: 3 samples (one empty/empty); RefCOCO testA: 2 samples, one with ignore."""
    root = tmp_path / "test"
    reason = [
        _record("r0", _mask([(0, 0), (0, 1)]), _mask([(0, 0)])),  # IoU 1/2
        _record("r1", _mask([(1, 1)]), _mask([(1, 1)])),  # IoU 1
        _record("r2", _mask([]), _mask([]), heatmap_iou=None),  # empty / empty
    ]
    refcoco = [
        _record("c0", _mask([(0, 0), (0, 1)]), _mask([(0, 1), (0, 2)]), _mask([(0, 0)])),
        _record("c1", _mask([(2, 2)]), _mask([(2, 2), (3, 3)])),  # IoU 1/2
    ]
    write_per_sample(root / results_subdir("reason_seg", "val") / "per_sample.jsonl", reason)
    write_per_sample(root / results_subdir("refcoco/unc", "testA") / "per_sample.jsonl", refcoco)
    return root


def test_recompute_metrics_default_protocol(results_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert recompute_metrics.main([str(results_dir), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["reason_seg_val", "refcoco_unc_testA"]
    reason = metrics["reason_seg_val"]
    assert reason["gIoU"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert reason["cIoU"] == pytest.approx(2 / 3)
    assert reason["n"] == 3
    # c0 with ignore excluded: inter {(0,1)}, union {(0,1),(0,2)} -> 1/2; c1: 1/2.
    assert metrics["refcoco_unc_testA"]["gIoU"] == pytest.approx(0.5)
    assert metrics["refcoco_unc_testA"]["cIoU"] == pytest.approx(2 / 4)
    stdout = capsys.readouterr().out
    assert "| split | gIoU | cIoU | Pr@0.5 | Pr@0.7 | Pr@0.9 | n |" in stdout
    # IoUs 0.5, 1, 1: all three reach 0.5, two reach 0.7 and 0.9
    assert "| reason_seg_val | 83.33 | 66.67 | 100.00 | 66.67 | 66.67 | 3 |" in stdout
    assert reason["Pr@0.7"] == pytest.approx(2 / 3)


def test_recompute_metrics_other_protocols(results_dir, tmp_path):
    out = tmp_path / "metrics.json"
    argv = [str(results_dir), "--empty-empty", "skip", "--ignore", "foreground", "--json", str(out)]
    assert recompute_metrics.main(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["reason_seg_val"]["gIoU"] == pytest.approx(0.75)
    assert metrics["reason_seg_val"]["n"] == 2 and metrics["reason_seg_val"]["n_skipped"] == 1
    # c0 with ignore as foreground: gt' = {(0,0),(0,1),(0,2)} -> 2/3.
    assert metrics["refcoco_unc_testA"]["gIoU"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert metrics["refcoco_unc_testA"]["cIoU"] == pytest.approx(3 / 5)
    assert recompute_metrics.main([str(results_dir), "--empty-empty", "0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["reason_seg_val"]["gIoU"] == pytest.approx(0.5)


def test_recompute_metrics_breakdown_by_a_record_key(tmp_path, capsys):
    records = [
        {**_record("a", _mask([(0, 0)]), _mask([(0, 0)])), "template_id": "attribute.name.0"},
        {**_record("b", _mask([(0, 0), (0, 1)]), _mask([(0, 0)])), "template_id": "relation.0"},
        {**_record("c", _mask([(2, 2)]), _mask([(0, 0)])), "template_id": "relation.0"},
    ]  # IoUs 1, 1/2, 0
    write_per_sample(tmp_path / results_subdir("shapes", "test") / "per_sample.jsonl", records)
    out = tmp_path / "metrics.json"
    assert recompute_metrics.main([str(tmp_path), "--by", "template_id", "--json", str(out)]) == 0
    by = json.loads(out.read_text())["shapes_test"]["by"]["template_id"]
    assert list(by) == ["attribute.name.0", "relation.0"]
    assert by["attribute.name.0"]["gIoU"] == pytest.approx(1.0) and by["attribute.name.0"]["n"] == 1
    assert by["relation.0"]["gIoU"] == pytest.approx(0.25) and by["relation.0"]["n"] == 2
    assert by["relation.0"]["Pr@0.5"] == pytest.approx(0.5)
    assert "| shapes_test | relation.0 | 25.00 | 25.00 | 50.00 | 0.00 | 0.00 | 2 |" in (
        capsys.readouterr().out)
    # a key no record carries is a clear error naming the keys that are there
    assert recompute_metrics.main([str(tmp_path), "--by", "instruction_type"]) == 2
    err = capsys.readouterr().err
    assert "no record has a value for --by 'instruction_type'" in err and "template_id" in err


def test_recompute_metrics_lists_the_worst_samples_with_their_responses(tmp_path, capsys):
    records = [
        {**_record("a", _mask([(0, 0)]), _mask([(0, 0)])), "response": "<think>ok</think>"},
        {**_record("b", _mask([(2, 2)]), _mask([(0, 0)])), "instruction_type": "relation",
         "response": "<think>the red | one\nbelow</think><REF_POS>"},
        {**_record("c", _mask([(0, 0), (0, 1)]), _mask([(0, 0)]))},  # an older record
        _record("d", _mask([]), _mask([])),  # empty / empty: 1 under LISA's protocol
    ]  # IoUs 1, 0, 1/2, 1
    write_per_sample(tmp_path / results_subdir("shapes", "test") / "per_sample.jsonl", records)
    assert recompute_metrics.main([str(tmp_path), "--worst", "2"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("shapes_test: the 2 lowest IoU"):].splitlines()
    assert table[4] == ("| 0.00 | b | relation | segment b | "
                        "<think>the red \\| one below</think><REF_POS> |")
    assert table[5] == "| 50.00 | c |  | segment c | (not recorded) |" and len(table) == 6
    worst = recompute_metrics.worst(records, 10, "skip", "exclude")
    assert [r["sample_id"] for r in worst] == ["b", "c", "a"]  # d is skipped by the protocol
    assert recompute_metrics.main([str(tmp_path), "--worst", "0"]) == 2


def test_recompute_metrics_errors(tmp_path, capsys):
    assert recompute_metrics.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert recompute_metrics.main([str(tmp_path)]) == 2
    assert "no per_sample.jsonl under" in capsys.readouterr().err
    bad = tmp_path / "x_val" / "per_sample.jsonl"
    bad.parent.mkdir()
    bad.write_text("not json\n")
    assert recompute_metrics.main([str(tmp_path)]) == 2
    assert "per_sample.jsonl:1: malformed JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        recompute_metrics.main([str(tmp_path), "--empty-empty", "0.5"])
    assert exc.value.code == 2


def test_help_has_example(capsys):
    for tool in (recompute_metrics, correlation, analyze_logs):
        with pytest.raises(SystemExit) as exc:
            tool.main(["--help"])
        assert exc.value.code == 0
        assert "example:" in capsys.readouterr().out


def _write_correlated(
    root: Path, name: str, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    heat = rng.uniform(size=n)
    mask = np.clip(0.1 + 0.8 * heat + rng.normal(scale=0.05, size=n), 0, 1)
    records = [
        {**_record(f"s{i}", _mask([]), _mask([])), "iou": float(m), "heatmap_iou": float(h)}
        for i, (h, m) in enumerate(zip(heat, mask))
    ]
    records.append(_record("nohm", _mask([]), _mask([]), heatmap_iou=None))  # skipped
    write_per_sample(root / name / "per_sample.jsonl", records)
    return heat, mask


def test_correlation_tool(tmp_path, capsys):
    root = tmp_path / "test"
    heat, mask = _write_correlated(root, "reason_seg_val", 30)
    _write_correlated(root, "tiny_val", 2)  # too few samples: skipped with a message
    assert correlation.main([str(root)]) == 0
    summary = json.loads((root / "reason_seg_val" / "correlation.json").read_text())
    assert set(summary) == {"n", "pearson_r", "slope", "intercept", "level"}
    assert summary["n"] == 30 and summary["level"] == 0.95
    assert summary["pearson_r"] == pytest.approx(np.corrcoef(heat, mask)[0, 1])
    slope, intercept = np.polyfit(heat, mask, 1)
    assert summary["slope"] == pytest.approx(slope)
    assert summary["intercept"] == pytest.approx(intercept)
    png = (root / "reason_seg_val" / "correlation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (root / "tiny_val" / "correlation.png").exists()
    captured = capsys.readouterr()
    assert "| reason_seg_val | 30 |" in captured.out
    assert "skipping tiny_val (2 samples with heatmap IoU)" in captured.err


def test_correlation_tool_reads_files_with_only_the_two_ious(tmp_path, capsys):
    root = tmp_path / "other"
    (root / "mine").mkdir(parents=True)
    rows = [{"sample_id": f"s{i}", "iou": i / 10, "heatmap_iou": i / 12} for i in range(6)]
    (root / "mine" / "per_sample.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows + [{"sample_id": "x"}]))
    assert correlation.main([str(root)]) == 0
    summary = json.loads((root / "mine" / "correlation.json").read_text())
    assert summary["n"] == 6 and summary["pearson_r"] == pytest.approx(1.0)


def test_correlation_tool_out_dir_and_errors(tmp_path, capsys):
    root = tmp_path / "test"
    _write_correlated(root, "reason_seg_test", 10, seed=3)
    out = tmp_path / "analysis"
    assert correlation.main([str(root), "--out", str(out), "--level", "0.9"]) == 0
    assert (out / "reason_seg_test" / "correlation.png").is_file()
    assert json.loads((out / "reason_seg_test" / "correlation.json").read_text())["level"] == 0.9
    assert not (root / "reason_seg_test" / "correlation.png").exists()
    capsys.readouterr()
    assert correlation.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert correlation.main([str(empty)]) == 2
    assert "no per_sample.jsonl under" in capsys.readouterr().err


def test_prior_probe_reports_heatmap_iou(capsys):
    """The prior probe trains a config's prior alone (oracle query) and prints JSON."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("prior_probe",
                                                  root / "tools/analysis/prior_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    cfg = str(root / "configs/coprs/coprs_tiny_shapes_cpu.py")
    assert probe.main([cfg, "--iters", "3", "--train-scenes", "8", "--test-scenes", "4",
                       "--batch-size", "4", "--eval-every", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [h["iter"] for h in out["history"]] == [2, 3]
    assert 0.0 <= out["final_heatmap_iou"] <= 1.0 and 0.0 < out["target_fraction"] < 0.2
    assert out["keys"] == "backbone" and out["prior_dice"] == 1.0
    assert out["prior"]["key_convs"] == 2  # the config's prior, as probed
    # which object each of the 4 held-out heatmaps lands on
    assert set(out["picked"]) == {"target", "same_colour", "same_shape", "other", "none"}
    assert sum(out["picked"].values()) == 4
    assert probe.main([cfg, "--iters", "1", "--train-scenes", "4", "--test-scenes", "2",
                       "--batch-size", "2", "--cfg-options", "model.prior.position_grid=8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["prior"]["position_grid"] == 8 and sum(out["picked"].values()) == 2
    # a trainable conv stem over the pixels instead of the frozen features
    assert probe.main([cfg, "--keys", "stem", "--iters", "2", "--train-scenes", "8",
                       "--test-scenes", "4", "--batch-size", "4", "--eval-every", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["keys"] == "stem" and [h["iter"] for h in out["history"]] == [2]
    assert out["stride"] == 4  # the tiny SAM's grid: 112 px / 28 cells
    # a finer grid for the pixel keys; the prior's output stays at the input size
    assert probe.main([cfg, "--keys", "pixels", "--stride", "2", "--iters", "1",
                       "--train-scenes", "4", "--test-scenes", "2", "--batch-size", "2",
                       "--eval-every", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["stride"] == 2 and 0.0 <= out["final_heatmap_iou"] <= 1.0
    # a stride that does not divide the input, or one for the backbone's own grid: usage errors
    assert probe.main([cfg, "--keys", "pixels", "--stride", "3"]) == 2
    assert probe.main([cfg, "--stride", "2"]) == 2
    err = capsys.readouterr().err
    assert "--stride 3 must be a positive divisor of the input size 112" in err
    assert "--stride applies to --keys pixels or stem" in err


TINY_CONFIG = str(TOOLS.parents[1] / "configs/coprs/coprs_tiny_shapes_cpu.py")


def test_picked_objects_classifies_by_the_object_holding_the_mask():
    tool = _load("picked_objects")
    objects = [dict(colour="red", shape="circle", bbox=[0, 0, 3, 3]),
               dict(colour="red", shape="square", bbox=[10, 10, 13, 13]),
               dict(colour="blue", shape="circle", bbox=[20, 0, 23, 3])]
    mask = np.zeros((30, 30), bool)
    assert tool.classify(mask, objects, ("red", "circle")) == "none"
    mask[10:14, 10:14] = True  # on the red square
    mask[0:2, 0:2] = True  # a little on the red circle
    assert tool.classify(mask, objects, ("red", "square")) == "target"
    assert tool.classify(mask, objects, ("red", "circle")) == "same_colour"
    assert tool.classify(mask, objects, ("green", "square")) == "same_shape"
    assert tool.classify(mask, objects, ("blue", "circle")) == "other"


def test_picked_objects_classifies_the_final_answer():
    tool = _load("picked_objects")
    objects = [dict(colour="red", shape="circle"), dict(colour="blue", shape="star")]
    target, region = ("red", "circle"), "lower left"

    def kind(answer):
        return tool.answer_class(f"<think>I see a red circle. So {answer}</think><REF_POS>",
                                 target, region, objects)

    assert kind("the target is the red circle in the lower left.") == "in_place"
    assert kind("the target is the red circle in the centre.") == "elsewhere"
    assert kind("the target is the red circle.") == "elsewhere"  # no place named
    assert kind("the target is the blue star in the lower left.") == "other_present"
    assert kind("the target is the blue circle in the lower left.") == "absent"
    assert kind("it is somewhere.") == "unparsed"
    assert tool.absent_class(("blue", "circle", None), target) == "target_shape"
    assert tool.absent_class(("red", "star", "centre"), target) == "target_colour"
    assert tool.absent_class(("green", "square", None), target) == "neither"


def test_picked_objects_reports_json(capsys):
    tool = _load("picked_objects")
    for mode in ("gold", "generated"):
        assert tool.main([TINY_CONFIG, "--reasoning", mode, "--num-samples", "3",
                          "--batch-size", "2"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["n"] == 3 and sum(out["picked"].values()) == 3
        assert set(out["picked"]) == set(tool.CLASSES) and 0.0 <= out["giou"] <= 1.0
        assert ("answers" in out) == (mode == "generated")
    answers, by_answer = out["answers"], out["by_answer"]
    assert set(by_answer) == set(tool.ANSWER_CLASSES)
    assert set(out["absent_by_match"]) == set(tool.ABSENT_CLASSES)
    assert sum(v["n"] for v in out["absent_by_match"].values()) == by_answer["absent"]["n"]
    assert sum(v["n"] for v in by_answer.values()) == 3
    assert answers["right"] == by_answer["in_place"]["n"] + by_answer["elsewhere"]["n"]
    assert answers["right"] <= answers["right_colour"] <= 3 - answers["unparsed"]
    assert answers["right"] + answers["absent"] <= 3 - answers["unparsed"]


def test_picked_objects_answer_counts_overlap_as_documented(capsys, monkeypatch):
    """`answers` counts overlap (right_colour holds right, and may hold absent) and need not add
    up to n; `by_answer` is exclusive (docs/evaluation.md)."""
    import coprs.apis.inference as inference
    from coprs.datasets.shapes import SHAPES, ShapesReasonDataset

    tool = _load("picked_objects")
    items = [ShapesReasonDataset(split="test", num_samples=3).get_data_info(i) for i in range(3)]
    colour, shape = items[1]["gold_answer"].split()[-2:]
    there = {(o["colour"], o["shape"]) for o in items[1]["objects"]}
    missing = next(s for s in SHAPES if (colour, s) not in there)  # the target's colour
    answers = [items[0]["gold_cot"],  # the target: right and right_colour
               f"<think>So the target is the {colour} {missing}.</think>",  # absent, colour
               "<think>I do not know.</think>"]  # unparsed

    class Model:
        vision_backbone = SimpleNamespace(img_size=112)

        def predict_images(self, images, instructions, **kwargs):
            return [SimpleNamespace(mask=np.zeros(im.shape[:2], bool), response=answers[i])
                    for i, im in enumerate(images)]

    monkeypatch.setattr(inference, "init_segmentor", lambda *a, **k: Model())
    assert tool.main([TINY_CONFIG, "--num-samples", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["answers"] == dict(right=1, right_colour=2, absent=1, unparsed=1)
    assert sum(out["answers"].values()) == 5 > out["n"] == 3
    assert {k: v["n"] for k, v in out["by_answer"].items()} == dict(
        in_place=1, elsewhere=0, other_present=0, absent=1, unparsed=1)
    assert {k: v["n"] for k, v in out["absent_by_match"].items()} == dict(
        target_shape=0, target_colour=1, neither=0)
    assert out["absent_by_match"]["target_colour"]["giou"] == out["by_answer"]["absent"]["giou"]
    with pytest.raises(SystemExit):
        tool.main(["--help"])
    assert "overlapping counts" in capsys.readouterr().out  # --help says so too


def test_synthetic_sizes_and_splits_are_usage_errors_before_a_model(capsys, monkeypatch,
                                                                    tmp_path):
    """A bad --split, --num-samples, scene count or step count is one `error:` line (rc 2),
    before a model, a backbone or the config is built."""
    from mmengine.config import Config

    import coprs.apis.inference as inference

    def built(*args, **kwargs):
        raise AssertionError("built before the arguments were checked")

    monkeypatch.setattr(inference, "init_segmentor", built)
    monkeypatch.setattr(Config, "fromfile", built)
    cases = [
        ("picked_objects", ["--split", "testing"], "--split 'testing' is not a synthetic split; "
                                                   "use one of train, val, test, test_novel"),
        ("picked_objects", ["--num-samples", "0"], "--num-samples 0 must be between 1 and"),
        ("picked_objects", ["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        ("image_dependence", ["--split", "val2"], "--split 'val2' is not a synthetic split"),
        ("image_dependence", ["--num-samples", "0"], "--num-samples 0 must be at least 2"),
        ("image_dependence", ["--num-samples", "10000001"], "--num-samples 10000001 must be at "
                                                            "least 2"),
        ("pass_at_k", ["--num-samples", "0"], "--num-samples 0 must be at least 1"),
        ("pass_at_k", ["--k", "0"], "--k 0 must be at least 1"),
        ("perception_probe", ["--train-scenes", "0"], "--train-scenes 0 must be at least 1"),
        ("perception_probe", ["--eval-scenes", "1"], "--eval-scenes 1 must be at least 2"),
        ("perception_probe", ["--eval-scenes", "10000001"], "--eval-scenes 10000001 must be at "
                                                            "most 10000000"),
        ("perception_probe", ["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        ("prior_probe", ["--test-scenes", "0"], "--test-scenes 0 must be at least 1"),
        ("prior_probe", ["--train-scenes", "20000000"], "--train-scenes 20000000 must be at "
                                                        "most 10000000"),
        ("prior_probe", ["--iters", "0"], "--iters 0 must be at least 1"),
        ("prior_probe", ["--eval-every", "0"], "--eval-every 0 must be at least 1"),
    ]
    for name, argv, message in cases:
        assert _load(name).main([TINY_CONFIG, *argv]) == 2, (name, argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --"), (name, argv, err)
        assert message in err, (name, argv, err)
    monkeypatch.undo()  # pass_at_k reads the config to find its test splits, then stops
    config = tmp_path / "no_test.py"
    config.write_text("model = dict(type='ReasoningSegmentor')\n")
    assert _load("pass_at_k").main([str(config)]) == 2
    assert "has no test_cfg.datasets" in capsys.readouterr().err


def test_picked_objects_forces_a_gold_prefix(capsys, monkeypatch):
    from coprs.datasets.shapes import ShapesReasonDataset
    from coprs.models.segmentor import ReasoningSegmentor

    tool = _load("picked_objects")
    gold = ShapesReasonDataset(split="test", num_samples=1).get_data_info(0)["response_coprs"]
    inventory = tool.gold_prefix(gold, "inventory")
    assert inventory.startswith("<think>I see ") and inventory.endswith(".")
    assert inventory.count(".") == 1 and gold.startswith(inventory)
    reasoning = tool.gold_prefix(gold, "reasoning")
    assert reasoning.endswith("So the target is the") and gold.startswith(reasoning)
    with pytest.raises(ValueError, match="no reasoning"):
        tool.gold_prefix("<think>nothing</think><REF_POS>", "reasoning")

    results, real = [], ReasoningSegmentor.predict_images

    def spy(self, images, instructions, **kwargs):
        results.append((kwargs.get("response_prefixes"), real(self, images, instructions,
                                                              **kwargs)))
        return results[-1][1]

    monkeypatch.setattr(ReasoningSegmentor, "predict_images", spy)
    assert tool.main([TINY_CONFIG, "--gold-prefix", "reasoning", "--num-samples", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["gold_prefix"] == "reasoning" and out["n"] == 2
    (prefixes, preds), = results
    assert [p.endswith("So the target is the") for p in prefixes] == [True, True]
    assert all(r.response.startswith(p) and len(r.response) > len(p)  # the policy wrote on
               for p, r in zip(prefixes, preds))
    assert tool.main([TINY_CONFIG, "--reasoning", "gold", "--gold-prefix", "inventory"]) == 2
    assert "--reasoning generated" in capsys.readouterr().err


def test_picked_objects_applies_cfg_options(capsys, monkeypatch):
    import coprs.apis.inference as inference

    built = []
    real = inference.init_segmentor

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(inference, "init_segmentor", spy)
    tool = _load("picked_objects")
    assert tool.main([TINY_CONFIG, "--reasoning", "gold", "--num-samples", "2",
                      "--cfg-options", "model.prior.position_grid=8"]) == 0
    assert built[0].prior.position_grid == 8  # the override reached the model
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 2


def test_image_dependence_reports_three_losses_and_the_vision_output(capsys):
    tool = _load("image_dependence")
    assert tool.main([TINY_CONFIG, "--num-samples", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 3
    losses = [out[k] for k in ("loss_right", "loss_shifted", "loss_blank")]
    assert all(np.isfinite(v) and v > 0 for v in losses)
    assert losses[0] != losses[1]  # the untrained policy's tokens still see the image
    assert out["vision_token_norm"] > 0 and out["vision_between_images"] > 0
    assert tool.main([TINY_CONFIG, "--num-samples", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_perception_probe_trains_the_policy_alone_and_reports_the_image_gap(capsys):
    tool = _load("perception_probe")
    argv = [TINY_CONFIG, "--iters", "3", "--eval-every", "2", "--batch-size", "2",
            "--train-scenes", "6", "--eval-scenes", "2", "--vision-lr", "0"]
    assert tool.main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    evals, summary = lines[:-1], lines[-1]
    assert [e["iter"] for e in evals] == [2, 3]  # every 2 iterations and at the end
    for e in evals:
        assert np.isfinite(e["loss"]) and e["loss"] > 0
        assert abs(e["gap"] - (e["loss_shifted"] - e["loss"])) <= 2e-4  # both rounded
        assert 0 <= e["answer_right"] <= e["answer_colour"] <= e["n"] == 2
        assert 0 <= e["place_right"] <= e["answer_right"]
    assert summary["vision_lr"] == 0 and summary["final"] == evals[-1]
    assert summary["cell_loss"] == 0
    assert tool.main([TINY_CONFIG, "--policy", "tiny"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert tool.main([TINY_CONFIG, "--cell-loss", "-1"]) == 2
    assert "--cell-loss" in capsys.readouterr().err


def test_perception_probe_options_and_outputs_are_documented(capsys):
    """Every option of the probe (its --help) and every key of its evaluation lines is in
    docs/evaluation.md's section on it."""
    import re

    tool = _load("perception_probe")
    doc = (TOOLS.parents[1] / "docs" / "evaluation.md").read_text(encoding="utf-8")
    section = doc[doc.index("### Can the policy learn to read the image?"):]
    section = section[:section.index("\n## ")]
    with pytest.raises(SystemExit):
        tool.parse_args(["--help"])
    usage = capsys.readouterr().out.split("options:")[1].split("example:")[0]
    options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", usage)) - {"--help"}
    assert {"--cell-loss", "--vision-lr", "--policy"} <= options
    keys = ["loss", "loss_shifted", "gap", "answer_right", "answer_colour", "place_right", "n",
            "cell_loss", "final", "best_gap"]
    missing = [o for o in sorted(options) if not re.search(rf"{o}(?![\w-])", section)]
    missing += [k for k in keys if f"`{k}`" not in section]
    assert not missing


def test_perception_probe_cell_loss_targets_and_training(capsys):
    tool = _load("perception_probe")
    gold = dict(gold_answer="the red star", gold_answer_region="the red star in the lower left")
    texts = ["So the target is the red star in the lower left.",  # all right
             "So the target is the red star in the upper left.",  # wrong place
             "So the target is the red circle in the lower left.",  # wrong shape
             "So the target is the blue star.",  # wrong colour, no place
             "<think>I see"]  # no answer
    assert tool.score_answers([gold] * 5, texts) == dict(
        answer_right=2, answer_colour=3, place_right=1, n=5)

    class Policy:  # what CellLoss reads of a policy
        image_token_id = 7
        model = SimpleNamespace(config=SimpleNamespace(text_config=SimpleNamespace(hidden_size=4)),
                                model=torch.nn.Identity())

    loss = tool.CellLoss(Policy(), ["red star", "blue circle"], size=112)
    objects = [dict(colour="red", shape="star", centre=[10.0, 100.0]),  # row 3, column 0
               dict(colour="blue", shape="circle", centre=[111.9, 0.0]),  # row 0, column 3
               dict(colour="red", shape="star", centre=[60.0, 60.0])]  # row 2, column 2
    t = loss.targets(objects, 16)
    assert t.sum() == 3 and t[12, 0] == t[3, 1] == t[10, 0] == 1
    with pytest.raises(ValueError, match="square"):
        loss.targets(objects, 15)
    # the hook's last forward: 2 rows of 6 tokens, 4 image tokens (a 2 x 2 grid) in each
    ids = torch.tensor([[0, 7, 7, 7, 7, 0], [7, 7, 0, 0, 7, 7]])
    hidden = torch.randn(2, 6, 4, requires_grad=True)
    loss.seen = dict(ids=ids, hidden=hidden)
    with torch.no_grad():
        loss.head.weight.zero_()
        loss.head.bias.fill_(2.0)
    value = loss([dict(objects=objects[:1]), dict(objects=objects[1:])])
    # logits 2 everywhere; 3 positive labels among 2 rows x 4 cells x 2 classes
    expected = (3 * np.log1p(np.exp(-2.0)) + 13 * np.log1p(np.exp(2.0))) / 16
    assert value.item() == pytest.approx(expected, rel=1e-6)
    loss.head.weight.data.normal_()
    loss([dict(objects=objects[:1]), dict(objects=objects[1:])]).backward()
    assert (hidden.grad.abs().sum(-1) > 0).tolist() == (ids == 7).tolist()  # image tokens only

    argv = [TINY_CONFIG, "--iters", "2", "--eval-every", "2", "--batch-size", "2",
            "--train-scenes", "4", "--eval-scenes", "2", "--vision-lr", "0", "--cell-loss", "1"]
    assert tool.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["cell_loss"] == 1 and np.isfinite(summary["final"]["loss"])



def _write_run(work_dir: Path, stamp: str, lines: list, config: str | None = None) -> None:
    path = work_dir / stamp / "vis_data" / "scalars.json"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    if config is not None:  # mmengine dumps the run's config next to its scalars
        (path.parent / "config.py").write_text(config)


@pytest.fixture()
def train_logs(tmp_path):
    """A work dir as `coprs train` leaves it: a run killed after iteration 40 (its last line cut
    mid-write), the run resumed from iteration 20, and a `coprs test` run without scalars."""
    w = tmp_path / "work"

    def rec(step, time, grpo=0, **kw):
        return dict(step=step, iter=step, time=time, loss=10.0 / step, stage_grpo=grpo, **kw)

    config = "log_processor = dict(type='FreshLogProcessor', by_epoch=False, window_size=10)\n"
    _write_run(w, "20260101_100000", [rec(10, 0.2), rec(20, 0.1), {"shapes/val/gIoU": 0.3,
               "step": 20}, rec(30, 0.5), rec(40, 0.5), '{"step": 50, "ti'], config)
    _write_run(w, "20260101_110000", [
        rec(30, 0.1), rec(40, 0.1), {"shapes/val/gIoU": 0.6, "step": 40},
        rec(50, 1.0, grpo=1, **{"reward/mask": 0.2, "time/rollout": 0.4, "time/reward": 0.1,
                                "time/reference": 0.1, "time/actor": 0.4}),
        rec(60, 2.0, grpo=1, **{"reward/mask": 0.4, "time/rollout": 1.0, "time/reward": 0.2,
                                "time/reference": 0.2, "time/actor": 0.6})], config)
    (w / "20260101_120000" / "vis_data").mkdir(parents=True)  # a test run: config.py only
    return w


def test_analyze_logs_merges_resumed_runs_by_iteration(train_logs, capsys):
    records = analyze_logs.read_records(train_logs)
    assert "scalars.json:6: not a JSON record" in capsys.readouterr().err
    assert list(records) == [10, 20, 30, 40, 50, 60]
    assert records[30]["time"] == 0.1  # the resumed run replaces the killed run's iterations
    assert records[20]["shapes/val/gIoU"] == 0.3 and records[20]["time"] == 0.1
    assert analyze_logs.series(records, "shapes/val/gIoU") == ([20, 40], [0.3, 0.6])
    assert analyze_logs.grpo_start(records) == 40
    assert analyze_logs.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert analyze_logs.validation_keys(records) == {"shapes/val/gIoU"}


def test_analyze_logs_train_time_per_stage_and_phase(train_logs, capsys):
    assert analyze_logs.main(["cal_train_time", str(train_logs)]) == 0
    stages = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    warm, grpo = stages["warm-up"], stages["grpo"]
    assert warm["iters"] == 40 and grpo["iters"] == 20
    assert warm["seconds"] == pytest.approx(10 * (0.2 + 0.1 + 0.1 + 0.1))
    assert grpo["seconds"] == pytest.approx(10 * (1.0 + 2.0))
    assert grpo["phase_share"]["rollout"] == pytest.approx(14 / 30)
    assert grpo["phase_share"]["actor"] == pytest.approx(10 / 30)
    assert grpo["phase_share"]["other"] == pytest.approx(0.0, abs=1e-9)  # phases take it all
    assert warm["slowest_interval_s_per_iter"] == pytest.approx(0.2)
    assert "phase_share" not in warm


def _write_logged_run(work_dir: Path, interval: int, skip: bool) -> None:
    """A run's scalars.json written as `coprs train` writes it: each iteration's scalars go to
    mmengine's message hub, and every `interval` iterations FreshLogProcessor (window 20, the
    configs' default) turns them into a record. 90 warm-up iterations of 0.1 s (the update
    0.08 s), then 50 GRPO iterations: rollout 1.0-1.3 s, reward 0.3, reference 0.2, actor
    0.25/0.30, 0.05 s of other, plus 0.95 s at GRPO iteration 25 (a checkpoint); with `skip`,
    GRPO iteration 8 skips the reward's end and the update (non-finite rewards)."""
    from mmengine.logging import MessageHub

    from coprs.engine.log_processor import FreshLogProcessor

    warm, total = 90, 140
    hub = MessageHub.get_instance(f"cal_train_time_{work_dir}")
    processor = FreshLogProcessor(by_epoch=False, window_size=20)
    runner = SimpleNamespace(message_hub=hub, iter=0, max_iters=total, _train_loop=object(),
                             model=None)
    lines = []
    for i in range(total):
        runner.iter = i
        if i < warm:
            out, other = {"time/actor": 0.08, "stage_grpo": 0.0}, 0.02
        else:
            j = i - warm
            out = {"time/rollout": 1.0 + 0.1 * (j % 4), "time/reward": 0.3,
                   "time/reference": 0.2, "time/actor": 0.25 + 0.05 * (j % 2), "stage_grpo": 1.0}
            if skip and j == 7:
                del out["time/reward"], out["time/actor"]
            other = 0.05 + 0.95 * (j == 24)
        hub.update_scalar("train/time", other + sum(v for k, v in out.items() if "time/" in k))
        for key, value in out.items():
            hub.update_scalar(f"train/{key}", value)
        if (i + 1) % interval == 0:
            tag, _ = processor.get_log_after_iter(runner, i, "train")
            lines.append({**tag, "step": i + 1})
    _write_run(work_dir, "20260101_100000", lines,
               "log_processor = dict(type='FreshLogProcessor', by_epoch=False, window_size=20)\n"
               "train_cfg = dict(type='ReasoningSegTrainLoop', stages=[dict(kind='sft', iters=90),"
               " dict(kind='grpo', iters=50)])\n")


@pytest.mark.parametrize("interval, skip", [(1, True), (20, False)])
def test_analyze_logs_train_time_whatever_the_logger_interval(tmp_path, capsys, interval, skip):
    """mmengine logs `time` and `time/<phase>` as the mean of each key's last 20 updates, not
    over the logging interval: with interval 1, GRPO's first 19 records still average warm-up
    iterations into `time` (and `time/actor`), and with interval 20 the record after GRPO
    begins (at iteration 91) averages 10 warm-up iterations. The tool must still give each
    stage's seconds and each phase's, summed over the same iterations."""
    w = tmp_path / "work"
    _write_logged_run(w, interval, skip)
    assert analyze_logs.main(["cal_train_time", str(w)]) == 0
    out = capsys.readouterr().out
    stages = json.loads(out.strip().splitlines()[-1])
    warm, grpo = stages["warm-up"], stages["grpo"]
    assert (warm["iters"], grpo["iters"]) == (90, 50)
    assert warm["seconds"] == pytest.approx(90 * 0.1)
    # by hand: rollout 50 + 0.1 * (12 * 6 + 0 + 1), actor 25 * 0.25 + 25 * 0.30, other
    # 50 * 0.05 + 0.95; a skipped iteration 8 (odd: its update 0.30 s) loses 0.3 + 0.3 s
    phases = {"rollout": 57.3, "reward": 15.0 - 0.3 * skip, "reference": 10.0,
              "actor": 13.75 - 0.3 * skip, "other": 3.45}
    assert grpo["seconds"] == pytest.approx(sum(phases.values()))
    assert grpo["phase_seconds"] == pytest.approx(phases)
    assert grpo["phase_share"] == pytest.approx({k: v / sum(phases.values())
                                                 for k, v in phases.items()})
    # GRPO iteration 25 (j = 24) alone, or in iterations 101-120 (j = 10..29) on average
    assert grpo["slowest_interval_s_per_iter"] == pytest.approx(
        1.0 + 0.3 + 0.2 + 0.25 + 1.0 if interval == 1 else 1.15 + 0.3 + 0.2 + 0.275 + 0.0975)
    assert f"of the 50 GRPO iterations' {sum(phases.values()):.1f} s" in out
    assert "add up to" not in out


def test_analyze_logs_train_time_needs_the_window(tmp_path, capsys):
    w = tmp_path / "work"
    _write_run(w, "20260101_100000", [dict(step=10, time=0.5, stage_grpo=0)])
    assert analyze_logs.main(["cal_train_time", str(w)]) == 2
    assert "pass --window-size" in capsys.readouterr().err
    assert analyze_logs.main(["cal_train_time", str(w), "--window-size", "10"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["warm-up"]["seconds"] == 5.0


def test_analyze_logs_plots_a_panel_per_key(train_logs, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "curves" / "c.png"
    assert analyze_logs.main(["plot_curve", str(train_logs), str(train_logs), "--legend", "a",
                              "b", "--smooth", "2", "--out", str(out)]) == 0
    assert "(loss, reward/mask, shapes/val/gIoU)" in capsys.readouterr().out
    one = tmp_path / "one.png"
    assert analyze_logs.main(["plot_curve", str(train_logs / "20260101_110000" / "vis_data" /
                                                "scalars.json"), "--keys", "loss",
                              "--out", str(one)]) == 0
    tall, short = Image.open(out), Image.open(one)
    assert tall.format == short.format == "PNG"
    assert tall.size[0] == short.size[0] and tall.size[1] > 2 * short.size[1]  # 3 panels vs 1

    assert analyze_logs.main(["plot_curve", str(train_logs), "--keys", "reward/mask",
                              "rewards/mask", "--out", str(one)]) == 2
    err = capsys.readouterr().err
    assert "no log has rewards/mask" in err and "reward/mask" in err.split("logged keys:")[1]
    assert analyze_logs.main(["plot_curve", str(tmp_path / "nowhere")]) == 2
    assert analyze_logs.main(["plot_curve", str(train_logs / "20260101_120000")]) == 2
    assert "scalars.json" in capsys.readouterr().err
    assert analyze_logs.main(["plot_curve", str(train_logs), "--legend", "a", "b"]) == 2


def test_analyze_logs_writes_next_to_the_logs_by_default(train_logs, tmp_path, capsys,
                                                        monkeypatch):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert analyze_logs.main(["plot_curve", str(train_logs), "--keys", "loss"]) == 0
    assert (train_logs / "curves.png").is_file() and not (cwd / "curves.png").exists()
    assert f"wrote {train_logs / 'curves.png'} (loss)" in capsys.readouterr().out
    scalars = train_logs / "20260101_110000" / "vis_data" / "scalars.json"
    assert analyze_logs.main(["plot_curve", str(scalars), "--keys", "loss"]) == 0
    assert (scalars.parent / "curves.png").is_file()  # next to the file given
    assert list(cwd.iterdir()) == []


def test_analyze_logs_train_correlation(tmp_path, capsys, monkeypatch):
    """Paper Fig. 3 (a)-(d): 1 - prior BCE against 1 - mask Dice, one point per training record;
    validation records, records without both losses and (with --stage) other stages are left
    out."""
    w = tmp_path / "work"
    rng = np.random.default_rng(0)
    bce = rng.uniform(0.05, 0.3, size=12)
    dice = np.clip(0.1 + 2.0 * bce + rng.normal(scale=0.02, size=12), 0, 1)
    lines = [dict(step=10 * (i + 1), time=0.1, stage_grpo=int(i >= 8),
                  **{"seg/bce": float(b), "seg/dice": float(d)})
             for i, (b, d) in enumerate(zip(bce, dice))]
    lines += [dict(step=130, time=0.1, stage_grpo=1), {"shapes/val/gIoU": 0.5, "step": 120}]
    _write_run(w, "20260101_100000", lines)
    out = tmp_path / "tc" / "train.png"
    assert analyze_logs.main(["train_correlation", str(w), "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n"] == 12 and summary["x"] == "1 - seg/bce"
    assert summary["pearson_r"] == pytest.approx(np.corrcoef(1 - bce, 1 - dice)[0, 1])
    slope, intercept = np.polyfit(1 - bce, 1 - dice, 1)
    assert summary["slope"] == pytest.approx(slope)
    assert summary["intercept"] == pytest.approx(intercept)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == summary
    monkeypatch.chdir(tmp_path / "tc")  # without --out: into the work dir, not here
    assert analyze_logs.main(["train_correlation", str(w)]) == 0
    assert (w / "train_correlation.png").is_file() and (w / "train_correlation.json").is_file()
    assert f"wrote {w / 'train_correlation.png'} and" in capsys.readouterr().out
    assert not (tmp_path / "tc" / "train_correlation.json").exists()

    assert analyze_logs.main(["train_correlation", str(w), "--stage", "warm-up", "--raw",
                              "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n"] == 8 and summary["y"] == "seg/dice"
    assert summary["pearson_r"] == pytest.approx(np.corrcoef(bce[:8], dice[:8])[0, 1])
    capsys.readouterr()
    assert analyze_logs.main(["train_correlation", str(w), "--x", "seg/focal",
                              "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "0 training record(s) with both seg/focal and seg/dice" in err and "seg/bce" in err


def test_pass_at_k_summary_by_hand():
    tool = _load("pass_at_k")
    out = tool.summarize([0.2, 0.9], [[0.1, 0.6, 0.3], [0.4, 0.4, 0.4]], threshold=0.5)
    assert out["n"] == 2 and out["greedy_giou"] == pytest.approx(0.55)
    assert out["sampled_giou"] == pytest.approx(2.2 / 6, abs=1e-4)
    assert out["best_of_k_giou"] == pytest.approx(0.5)  # (0.6 + 0.4) / 2
    assert out["pass_at_k"] == 0.5 and out["greedy_found"] == 0.5
    assert out["flat_groups"] == 0.5  # the second sample's three IoUs are equal


def test_pass_at_k_samples_k_responses_and_scores_each(tmp_path, capsys):
    tool = _load("pass_at_k")
    out = tmp_path / "records.jsonl"
    assert tool.main([TINY_CONFIG, "--k", "3", "--num-samples", "2", "--batch-size", "2",
                      "--max-new-tokens", "8", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["k"] == 3 and set(report["splits"]) == {"shapes/test", "shapes/test_novel"}
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert len(r["ious"]) == len(r["responses"]) == 3
        assert all(0.0 <= v <= 1.0 for v in r["ious"])
    test = [r for r in records if r["split"] == "shapes/test"]
    split = report["splits"]["shapes/test"]
    assert split["best_of_k_giou"] == pytest.approx(
        np.mean([max(r["ious"]) for r in test]), abs=1e-4)
    assert split["greedy_giou"] == pytest.approx(np.mean([r["greedy_iou"] for r in test]),
                                                 abs=1e-4)
    assert split["best_of_k_giou"] >= split["sampled_giou"]
