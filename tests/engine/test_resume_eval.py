"""``coprs test --resume``: an evaluation killed part way continues where it stopped and gives
the metrics of an uninterrupted one."""

import json

import pytest
from mmengine.config import Config

from coprs.cli import main
from coprs.models.segmentor import ReasoningSegmentor

from ..conftest import TINY_CONFIG  # noqa: TID252


def _config(tmp_path):
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [dict(type="ShapesReasonDataset", split="test", num_samples=6,
                                  pipeline=[dict(type="LoadImage"),
                                            dict(type="PackReasonSegInputs")])]
    cfg.test_dataloader.batch_size = 2
    path = tmp_path / "cfg.py"
    cfg.dump(str(path))
    return str(path)


def _records(work):
    path = work / "per_sample_generated" / "shapes_test" / "per_sample.jsonl"
    return {r["sample_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_an_interrupted_evaluation_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    cfg = _config(tmp_path)
    real = ReasoningSegmentor.predict_images
    predicted, fail_at = [], []

    def counting(self, images, *args, **kwargs):
        if fail_at and len(predicted) >= fail_at[0]:
            raise RuntimeError("killed")  # the job is preempted after some batches
        predicted.extend([None] * len(images))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(ReasoningSegmentor, "predict_images", counting)
    args = ["test", cfg, "--max-new-tokens", "4"]

    # the reference: one uninterrupted run
    assert main([*args, "--work-dir", str(tmp_path / "ref"), "--out", str(tmp_path / "ref.json")]
                ) == 0
    reference = json.loads((tmp_path / "ref.json").read_text())["shapes/test"]
    assert len(predicted) == 6

    # killed after two batches: their four records are on disk, the split's file is not
    work = tmp_path / "run"
    predicted.clear()
    fail_at.append(4)
    with pytest.raises(RuntimeError, match="killed"):
        main([*args, "--work-dir", str(work)])
    split_dir = work / "per_sample_generated" / "shapes_test"
    lines = (split_dir / "progress" / "rank0.jsonl").read_text().splitlines()
    assert len(lines) == 4 and not (split_dir / "per_sample.jsonl").exists()

    # another response budget is another evaluation: refused, naming it
    fail_at.clear()
    capsys.readouterr()
    assert main(["test", cfg, "--max-new-tokens", "5", "--work-dir", str(work), "--resume"]) == 2
    assert "max_new_tokens: 4 then, 5 now" in capsys.readouterr().err
    # --resume predicts only the last two samples and ends with the reference's metrics
    predicted.clear()
    assert main([*args, "--work-dir", str(work), "--resume", "--out", str(tmp_path / "r.json")]
                ) == 0
    assert len(predicted) == 2
    resumed = json.loads((tmp_path / "r.json").read_text())["shapes/test"]
    for key in ("gIoU", "cIoU", "n", "heatmap_IoU", "format_rate", "Pr@0.5"):
        assert resumed[key] == pytest.approx(reference[key]), key
    ref_records, records = _records(tmp_path / "ref"), _records(work)
    assert {k: (r["iou"], r["response"]) for k, r in records.items()} == \
           {k: (r["iou"], r["response"]) for k, r in ref_records.items()}
    assert json.loads((split_dir / "run.json").read_text())["complete"] is True

    # a finished split resumed again predicts nothing
    predicted.clear()
    assert main([*args, "--work-dir", str(work), "--resume"]) == 0
    assert predicted == []

    # a finished split of another evaluation (another budget) is evaluated from the start
    assert main(["test", cfg, "--max-new-tokens", "5", "--work-dir", str(work), "--resume"]) == 0
    assert len(predicted) == 6


def test_a_limited_run_continues_over_the_whole_split(tmp_path, monkeypatch):
    """``--limit`` is not part of the fingerprint: a quick check on the first samples is the
    start of the full run."""
    cfg = _config(tmp_path)
    real, predicted = ReasoningSegmentor.predict_images, []

    def counting(self, images, *args, **kwargs):
        predicted.extend(images)
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(ReasoningSegmentor, "predict_images", counting)
    args = ["test", cfg, "--reasoning", "gold", "--work-dir", str(tmp_path / "w")]
    assert main([*args, "--limit", "2"]) == 0
    assert len(predicted) == 2
    assert main([*args, "--resume", "--out", str(tmp_path / "r.json")]) == 0
    assert len(predicted) == 6
    assert json.loads((tmp_path / "r.json").read_text())["shapes/test"]["n"] == 6
    # a quick --limit look at a finished run loses none of its records for the next resume
    assert main([*args, "--resume", "--limit", "2"]) == 0
    assert main([*args, "--resume", "--out", str(tmp_path / "again.json")]) == 0
    assert len(predicted) == 6
    assert json.loads((tmp_path / "again.json").read_text())["shapes/test"]["n"] == 6


def test_records_scored_against_an_edited_annotation_file_are_not_reused(tmp_path, capsys):
    """The dataset's annotation file is part of the fingerprint, by content: an edited JSON-lines
    file refuses --resume, naming it."""
    from coprs.testing.data_fixtures import make_jsonl_fixture

    make_jsonl_fixture(tmp_path / "data")
    base = Config.fromfile(str(TINY_CONFIG.parents[1] / "_base_" / "datasets" / "jsonl.py"))
    ds = base.test_cfg.datasets[0]
    ds.update(data_root=str(tmp_path / "data"), ann_file="val.jsonl")
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [ds]
    cfg.dump(str(tmp_path / "cfg.py"))
    args = ["test", str(tmp_path / "cfg.py"), "--reasoning", "gold", "--work-dir",
            str(tmp_path / "w")]
    assert main(args) == 0
    split = next((tmp_path / "w" / "per_sample_gold").iterdir())
    run = json.loads((split / "run.json").read_text())
    (split / "run.json").write_text(json.dumps(dict(run, complete=False)))  # as if killed
    assert main([*args, "--resume"]) == 0  # unchanged: resumes
    jsonl = tmp_path / "data" / "val.jsonl"
    jsonl.write_text(jsonl.read_text().replace('"the box"', '"the large box"', 1))
    (split / "run.json").write_text(json.dumps(dict(run, complete=False)))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "another, interrupted evaluation (annotations.val.jsonl.sha256_ends: " in err
