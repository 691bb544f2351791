import json

import pytest
from mmengine.config import Config

from coprs.cli import main
from coprs.commands import test as test_command
from coprs.commands.test import format_mode_comparison
from coprs.engine.test_loop import REASONING_MODES
from coprs.testing.data_fixtures import make_reasonseg_fixture, make_refcoco_fixture

from ..conftest import TINY_CONFIG  # noqa: TID252

FILE_PIPELINE = [dict(type="LoadImage"), dict(type="LoadSegAnnotations", skip_errors=True),
                 dict(type="PackReasonSegInputs")]


def _config(tmp_path, datasets, batch_size=4):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = datasets
    cfg.test_dataloader.batch_size = batch_size
    cfg.work_dir = str(tmp_path / "work")
    path = tmp_path / "cfg.py"
    cfg.dump(str(path))
    return str(path)


def test_shapes_generated_gold_and_empty_modes(tmp_path, capsys):
    cfg = _config(tmp_path, [dict(type="ShapesReasonDataset", split="test", num_samples=6,
                                  pipeline=[dict(type="LoadImage"),
                                            dict(type="PackReasonSegInputs")])])
    out = tmp_path / "all.json"
    # several modes run one after another on one model; 'all' repeats gold and is deduplicated
    rc = main(["test", cfg, "--out", str(out), "--reasoning", "generated", "all",
               "--max-new-tokens", "4", "--show-dir", str(tmp_path / "show")])
    assert rc == 0
    by_mode = json.loads(out.read_text())
    assert list(by_mode) == ["generated", "gold", "empty"]
    results = {mode: res["shapes/test"] for mode, res in by_mode.items()}
    assert results["gold"]["format_rate"] == 1.0  # gold responses are well formed
    assert results["generated"]["format_rate"] == 0.0  # the untrained tiny policy is not
    assert all(r["n"] == 6 for r in results.values())
    table = capsys.readouterr().out
    assert "| shapes |" in table and "test gIoU / cIoU" in table
    for mode in results:  # one panel folder and one record folder per mode
        assert len(list((tmp_path / "show" / mode / "shapes_test").glob("*.png"))) == 6
        assert (tmp_path / "work" / f"per_sample_{mode}" / "shapes_test" /
                "per_sample.jsonl").is_file()
    per_sample = tmp_path / "work" / "per_sample_gold" / "shapes_test" / "per_sample.jsonl"
    records = [json.loads(x) for x in per_sample.read_text().splitlines()]
    assert len(records) == 6
    # each record keeps the response the mask came from: here the gold one, teacher-forced
    from coprs.datasets import ShapesReasonDataset

    ds = ShapesReasonDataset(split="test", num_samples=6, pipeline=[dict(type="LoadImage"),
                                                                   dict(type="PackReasonSegInputs")])
    gold = {s["sample_id"]: s["response_coprs"] for s in (ds[i]["data_samples"] for i in range(6))}
    assert {r["sample_id"]: r["response"] for r in records} == gold
    # Pr@X is the share of these samples with IoU >= X, and the summary line prints Pr@0.5
    for t in (0.5, 0.7, 0.9):
        assert results["gold"][f"Pr@{t}"] == pytest.approx(
            sum(r["iou"] >= t for r in records) / 6)
    assert "shapes/test: n=6, Pr@0.5 " in table
    gap = results["generated"]["gIoU"] - results["empty"]["gIoU"]
    assert "| generated gIoU | gold gIoU | empty gIoU | generated − empty |" in table
    assert (f"| shapes/test | {results['generated']['gIoU']:.3f} | "
            f"{results['gold']['gIoU']:.3f} | {results['empty']['gIoU']:.3f} | {gap:+.3f} |"
            in table)


def test_mode_comparison_table():
    def res(giou, by_type):
        return {"s/test": {"gIoU": giou, "by_type": {t: {"gIoU": g, "n": 2}
                                                     for t, g in by_type.items()}}}

    table = format_mode_comparison({"gold": res(0.9, {"a": 0.8, "b": 1.0}),
                                    "empty": res(0.25, {"a": 0.5})})
    lines = table.splitlines()
    assert lines[0] == "| split | gold gIoU | empty gIoU |"  # no gap without generated
    assert lines[2] == "| s/test | 0.900 | 0.250 |"
    assert "| a | 80.0 / 50.0 | 2 |" in lines and "| b | 100.0 / – | 2 |" in lines
    with_gap = format_mode_comparison({"generated": res(0.4, {}), "empty": res(0.25, {})})
    assert with_gap.splitlines()[2] == "| s/test | 0.400 | 0.250 | +0.150 |"


def test_reasoning_modes_match_the_test_loop():
    assert REASONING_MODES == test_command.REASONING_MODES


def test_corrupt_image_is_reported_and_skipped(tmp_path, capsys):
    fx = make_refcoco_fixture(tmp_path / "refer", datasets=("refcoco",))
    val_image = next(r["image_id"] for r in fx.refs["refcoco"] if r["split"] == "val")
    name = next(i["file_name"] for i in fx.images if i["id"] == val_image)
    victim = tmp_path / "refer" / "images" / "mscoco" / "images" / "train2014" / name
    victim.write_bytes(b"corrupt")
    cfg = _config(tmp_path, [dict(type="RefCOCODataset", data_root=fx.data_root,
                                  img_dir=fx.img_dir, dataset="refcoco", split="val",
                                  pipeline=FILE_PIPELINE)])
    assert main(["test", cfg, "--out", str(tmp_path / "r.json"), "--max-new-tokens", "2"]) == 0
    res = json.loads((tmp_path / "r.json").read_text())["refcoco/val"]
    n_total = fx.sentences("refcoco", "val")
    assert res["n_unreadable"] >= 1 and res["n"] + res["n_unreadable"] == n_total
    assert any(victim.name in u for u in res["unreadable"])
    assert victim.name in capsys.readouterr().out


def test_reasonseg_split_with_ignore_region(tmp_path):
    fx = make_reasonseg_fixture(tmp_path / "rs", split="val")
    cfg = _config(tmp_path, [dict(type="ReasonSegDataset", data_root=fx.data_root, split="val",
                                  pipeline=FILE_PIPELINE)])
    assert main(["test", cfg, "--out", str(tmp_path / "r.json"), "--max-new-tokens", "2"]) == 0
    res = json.loads((tmp_path / "r.json").read_text())["reasonseg/val"]
    assert res["n"] == 3 and res["n_unreadable"] == 0
    # short and long queries apart, as LISA reports ReasonSeg
    assert {t: m["n"] for t, m in res["by_type"].items()} == {"long_query": 1, "short_query": 2}
    path = tmp_path / "work" / "per_sample_generated" / "reasonseg_val" / "per_sample.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(records) == 3
    assert sum(r["ignore_area"] > 0 for r in records) == 1  # the 'with_ignore' sample


def test_limit_evaluates_the_first_samples_of_every_split(tmp_path, capsys):
    fx = make_reasonseg_fixture(tmp_path / "rs", split="val")
    cfg = _config(tmp_path, [
        dict(type="ShapesReasonDataset", split="test", num_samples=6,
             pipeline=[dict(type="LoadImage"), dict(type="PackReasonSegInputs")]),
        dict(type="ReasonSegDataset", data_root=fx.data_root, split="val",
             pipeline=FILE_PIPELINE)])
    training_copy = tmp_path / "work" / "cfg.py"  # as `coprs train` leaves it in its work dir
    training_copy.parent.mkdir()
    training_copy.write_text("# the training run's config\n")
    assert main(["test", cfg, "--limit", "2", "--reasoning", "empty", "--max-new-tokens", "2",
                 "--out", str(tmp_path / "r.json")]) == 0
    assert training_copy.read_text() == "# the training run's config\n"  # not the test's
    res = json.loads((tmp_path / "r.json").read_text())
    assert {k: v["n"] for k, v in res.items()} == {"shapes/test": 2, "reasonseg/val": 2}
    records = tmp_path / "work" / "per_sample_empty" / "shapes_test" / "per_sample.jsonl"
    assert [json.loads(x)["sample_id"] for x in records.read_text().splitlines()] == [
        "test/000000", "test/000001"]
    assert main(["test", cfg, "--limit", "0"]) == 2
    assert "--limit 0" in capsys.readouterr().err


def test_reasonseg_config_evaluates_val_and_test(tmp_path, capsys):
    """The 7B ReasonSeg config's splits, loader and metric, with the tiny model in its place."""
    root = tmp_path / "ReasonSeg"
    for split in ("val", "test"):
        make_reasonseg_fixture(root, split=split)
    cfg = Config.fromfile(str(TINY_CONFIG.parent / "coprs_qwen2.5-vl-7b_sam-vit-h_reasonseg.py"))
    assert "train_cfg" not in cfg  # evaluation only
    cfg.model = Config.fromfile(str(TINY_CONFIG)).model
    for ds in cfg.test_cfg.datasets:
        ds.data_root = str(root)
    cfg.work_dir = str(tmp_path / "work")
    cfg.dump(str(tmp_path / "cfg.py"))
    assert main(["test", str(tmp_path / "cfg.py"), "--max-new-tokens", "2", "--out",
                 str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert sorted(res) == ["reasonseg/test", "reasonseg/val"]
    assert all(r["n"] == 3 and set(r["by_type"]) == {"long_query", "short_query"}
               for r in res.values())
    assert "long_query" in capsys.readouterr().out  # the per-type table


def test_given_responses_from_another_run_or_a_file(tmp_path, capsys):
    """--reasoning given teacher-forces responses read from another run's per-sample folder (each
    split its own file) or from one JSON-lines file; samples it has no response for are
    reported and skipped, on any dataset."""
    ds = [dict(type="ShapesReasonDataset", split=split, num_samples=4,
               pipeline=[dict(type="LoadImage"), dict(type="PackReasonSegInputs")])
          for split in ("test", "test_novel")]
    cfg = _config(tmp_path, ds)
    assert main(["test", cfg, "--reasoning", "gold", "--out", str(tmp_path / "gold.json")]) == 0
    gold = json.loads((tmp_path / "gold.json").read_text())
    folder = tmp_path / "work" / "per_sample_gold"
    assert main(["test", cfg, "--reasoning", "given", "--responses", str(folder),
                 "--out", str(tmp_path / "given.json")]) == 0
    given = json.loads((tmp_path / "given.json").read_text())
    for split in ("shapes/test", "shapes/test_novel"):  # the same responses, the same masks
        for key in ("n", "gIoU", "cIoU", "heatmap_IoU", "format_rate"):
            assert given[split][key] == gold[split][key], (split, key)
    records = (folder / "shapes_test" / "per_sample.jsonl").read_text().splitlines()
    edited = [json.loads(x) for x in records[:2]]
    edited[1]["response"] = "no special token here"
    (tmp_path / "two.jsonl").write_text("\n".join(json.dumps(r) for r in edited) + "\n")
    (tmp_path / "one").mkdir()
    cfg_test = _config(tmp_path / "one", ds[:1])
    assert main(["test", cfg_test, "--reasoning", "given", "--responses",
                 str(tmp_path / "two.jsonl"), "--out", str(tmp_path / "two.json")]) == 0
    two = json.loads((tmp_path / "two.json").read_text())["shapes/test"]
    assert two["n"] == 2 and two["n_unreadable"] == 2 and two["format_rate"] == 0.5
    assert "no response for this sample" in two["unreadable"][0]
    out = tmp_path / "one" / "work" / "per_sample_given" / "shapes_test" / "per_sample.jsonl"
    assert [json.loads(x)["response"] for x in out.read_text().splitlines()] == [
        r["response"] for r in edited]
    capsys.readouterr()
    # responses of another split, a folder without the split, a line without a response
    (tmp_path / "other.jsonl").write_text(json.dumps({"sample_id": "val/9", "response": "x"}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sample_id": "test/000000"}) + "\n")
    for path, message in [(tmp_path / "other.jsonl", "no response for any sample of shapes/test"),
                          (tmp_path / "one" / "work" / "per_sample_given",
                           "has no folder shapes_test_novel/"),
                          (bad, "bad.jsonl:1: expected a JSON object with 'sample_id' and "
                                "'response'")]:
        assert main(["test", cfg, "--reasoning", "given", "--responses", str(path)]) == 2
        assert message in capsys.readouterr().err, message
    assert main(["test", cfg, "--reasoning", "given"]) == 2
    assert main(["test", cfg, "--responses", str(bad)]) == 2
    assert "go together" in capsys.readouterr().err


def test_test_command_errors(tmp_path, capsys):
    assert main(["test", "configs/none.py"]) == 2
    assert main(["test", str(TINY_CONFIG), str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["test", str(TINY_CONFIG), "--reasoning", "telepathy"])


def test_without_a_checkpoint_it_warns_and_keeps_a_trained_runs_records(tmp_path, capsys,
                                                                        monkeypatch):
    cfg = _config(tmp_path, [dict(type="ShapesReasonDataset", split="test", num_samples=2,
                                  pipeline=[dict(type="LoadImage"),
                                            dict(type="PackReasonSegInputs")])])
    args = ["--reasoning", "gold", "--out", str(tmp_path / "r.json")]
    assert main(["test", cfg, *args]) == 0  # the weights the config builds, said so
    assert "warning: no CHECKPOINT given" in capsys.readouterr().err
    # the work dir now holds a trained run: without a CHECKPOINT or --work-dir, an error
    (tmp_path / "work" / "last_checkpoint").write_text(str(tmp_path / "work" / "iter_4.pth"))
    monkeypatch.setattr("mmengine.runner.Runner.from_cfg",
                        lambda cfg: pytest.fail("built a runner"))
    assert main(["test", cfg, *args]) == 2
    err = capsys.readouterr().err
    assert f"pass {tmp_path / 'work'} as CHECKPOINT" in err and len(err.strip().splitlines()) == 1
    # a file that is not a checkpoint: named before the runner is built
    assert main(["test", cfg, str(tmp_path / "cfg.py"), *args, "--work-dir", str(tmp_path)]) == 2
    assert f"CHECKPOINT '{tmp_path / 'cfg.py'}' is a config file, not a checkpoint" in (
        capsys.readouterr().err)
    # a config's load_from is the checkpoint when none is given (here: one that is not there)
    assert main(["test", cfg, *args, "--cfg-options", f"load_from={tmp_path / 'gone.pth'}"]) == 2
    assert "gone.pth" in capsys.readouterr().err
