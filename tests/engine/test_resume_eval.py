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
    assert "another, interrupted evaluation (annotations.val.jsonl.sha256: " in err


def test_a_resume_with_another_option_refuses_before_any_split_is_replaced(tmp_path, monkeypatch,
                                                                           capsys):
    """A finished split is not replaced as "another evaluation's" when a later split, which the
    same command interrupted, refuses: the refusal comes first."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.test_cfg.datasets = [dict(type="ShapesReasonDataset", split=split, num_samples=2,
                                  pipeline=[dict(type="LoadImage"),
                                            dict(type="PackReasonSegInputs")])
                             for split in ("val", "test")]
    cfg.dump(str(tmp_path / "cfg.py"))
    real, predicted = ReasoningSegmentor.predict_images, []

    def counting(self, images, *args, **kwargs):
        predicted.extend(images)
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(ReasoningSegmentor, "predict_images", counting)
    args = ["test", str(tmp_path / "cfg.py"), "--reasoning", "gold", "--work-dir",
            str(tmp_path / "w")]
    assert main([*args, "--max-new-tokens", "4"]) == 0
    root = tmp_path / "w" / "per_sample_gold"
    run = json.loads((root / "shapes_test" / "run.json").read_text())
    (root / "shapes_test" / "run.json").write_text(json.dumps(dict(run, complete=False)))
    val_before = {p.name: p.read_bytes() for p in (root / "shapes_val").glob("*.json*")}
    predicted.clear()
    capsys.readouterr()
    assert main([*args, "--max-new-tokens", "5", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "shapes_test holds the records of an interrupted evaluation" in err
    assert "max_new_tokens: 4 then, 5 now" in err
    assert predicted == []
    assert {p.name: p.read_bytes() for p in (root / "shapes_val").glob("*.json*")} == val_before
    assert main([*args, "--max-new-tokens", "4", "--resume"]) == 0 and predicted == []


def test_fingerprint_leaves_out_what_changes_no_result(tmp_path):
    """The engine's memory settings and an export folder's location are not part of it; the
    annotation files of a ConcatDataset's parts are, each; shared sample ids refuse resume."""
    from types import SimpleNamespace

    from coprs.apis.inference import EXPORT_MANIFEST
    from coprs.engine.test_loop import ReasonSegTestLoop, _annotation_stamps, _check_unique_ids

    export = tmp_path / "export"
    (export / "policy").mkdir(parents=True)
    (export / "policy" / "config.json").write_text("{}")
    (export / "seg_head.pth").write_bytes(b"x")
    (export / EXPORT_MANIFEST).write_text("{}")

    def fingerprint(model_path, memory, checkpoint=export):
        runner = SimpleNamespace(cfg=Config(dict(model=dict(policy=dict(model_path=model_path)))))
        loop = ReasonSegTestLoop(runner, {}, {}, [{}], checkpoint=str(checkpoint),
                                 generation_engine=dict(type="VLLMRolloutEngine",
                                                        gpu_memory_utilization=memory,
                                                        dtype="bfloat16"))
        return loop._fingerprint()

    assert fingerprint("/a/policy", 0.5) == fingerprint("/b/policy", 0.7)
    # a responses folder: its per-sample files only, not its progress files
    from coprs.engine.test_loop import _responses_stamp

    given = tmp_path / "given" / "shapes_test"
    (given / "progress").mkdir(parents=True)
    (given / "per_sample.jsonl").write_text('{"sample_id": "1", "response": "r"}\n')
    before = _responses_stamp(tmp_path / "given")
    (given / "progress" / "rank0.jsonl").write_text("more")
    (given / "run.json").write_text("{}")
    assert _responses_stamp(tmp_path / "given") == before
    (given / "per_sample.jsonl").write_text('{"sample_id": "1", "response": "s"}\n')
    assert _responses_stamp(tmp_path / "given") != before
    runner = SimpleNamespace(cfg=Config(dict(model=dict(feature_cache=dict(root="/a")))))
    loop = ReasonSegTestLoop(runner, {}, {}, [{}], checkpoint=None)
    moved = SimpleNamespace(cfg=Config(dict(model=dict(feature_cache=dict(root="/b")))))
    assert ReasonSegTestLoop(moved, {}, {}, [{}])._fingerprint() == loop._fingerprint()
    metric = dict(type="ReasonSegMetric", out_dir="/a", collect_device="cpu")
    gathered = {c: ReasonSegTestLoop(runner, {}, dict(metric, collect_device=c), [{}])
                for c in ("cpu", "gpu")}
    assert gathered["cpu"]._fingerprint() == gathered["gpu"]._fingerprint()
    other_metric = ReasonSegTestLoop(runner, {}, dict(metric, type="OtherMetric"), [{}])
    assert other_metric._fingerprint() != gathered["cpu"]._fingerprint()
    shapes = dict(type="ShapesReasonDataset", split="test", num_samples=4)
    assert loop._fingerprint(shapes) == loop._fingerprint(dict(shapes, num_samples=6,
                                                               indices=2))
    assert loop._fingerprint(shapes) != loop._fingerprint(dict(shapes, split="val"))
    other = dict(type="JSONLReasonSegDataset", num_samples=4)  # a key of its own: kept
    assert loop._fingerprint(other) != loop._fingerprint(dict(other, num_samples=6))
    assert fingerprint("/a/policy", 0.5)["engine"] == dict(type="VLLMRolloutEngine",
                                                           dtype="bfloat16")
    pth = tmp_path / "iter_1.pth"
    pth.write_bytes(b"y")
    assert fingerprint("/a/policy", 0.5, pth) != fingerprint("/b/policy", 0.5, pth)

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "val.jsonl").write_text(name)
    parts = [SimpleNamespace(ann_file=str(tmp_path / n / "val.jsonl")) for n in ("a", "b")]
    stamps = _annotation_stamps(SimpleNamespace(datasets=parts))
    assert sorted(stamps) == ["val.jsonl", "val.jsonl#2"]
    assert stamps["val.jsonl"] != stamps["val.jsonl#2"]

    class Ids:
        def __init__(self, ids):
            self.ids = ids

        def __len__(self):
            return len(self.ids)

        def get_data_info(self, i):
            return dict(sample_id=self.ids[i])

    _check_unique_ids(Ids(["1", "2"]), "d/s")
    with pytest.raises(ValueError, match=r"1 sample_id\(s\) of d/s belong to several samples"):
        _check_unique_ids(Ids(["1", "2", "1"]), "d/s")
