"""Resumable evaluation's records (coprs.evaluation.progress): written as a split goes, read
back only for the same fingerprint."""

import json

import pytest

from coprs.evaluation.functional import PER_SAMPLE_FILENAME, write_per_sample
from coprs.evaluation.progress import (
    EvalProgress,
    config_digest,
    file_stamp,
    fingerprint_changes,
)

COUNTS = dict(inter_exclude=1, union_exclude=2, inter_background=1, union_background=2,
              inter_foreground=1, union_foreground=2, pred_area=1, gt_area=2, ignore_area=0)


def _record(sample_id, iou=0.5):
    return dict(COUNTS, sample_id=sample_id, instruction="x", iou=iou, heatmap_iou=0.25,
                format_ok=True)


def test_records_written_as_it_goes_come_back_on_resume(tmp_path):
    fp = dict(checkpoint={"path": "/c.pth", "size": 3}, reasoning="generated")
    first = EvalProgress(tmp_path / "shapes_test", fp, "shapes/test")
    assert first.start(resume=False) == {}
    assert json.loads(first.run_file.read_text()) == {"fingerprint": fp, "complete": False}
    first.append([_record("a"), _record("b", 0.75)])
    first.append([])  # a batch of unreadable samples only
    with (first.progress_dir / "rank0.jsonl").open("a") as f:
        f.write('{"sample_id": "d"}\n')  # not a whole record: predicted again
        f.write('{"sample_id": "c", "inter_ex')  # killed while writing the line: left out
    again = EvalProgress(tmp_path / "shapes_test", dict(fp), "shapes/test")
    done = again.start(resume=True)
    assert sorted(done) == ["a", "b"] and done["b"]["iou"] == 0.75
    # the same again without --resume: everything starts over
    assert EvalProgress(tmp_path / "shapes_test", fp, "shapes/test").start(resume=False) == {}
    assert not list(first.progress_dir.glob("*.jsonl"))


def test_a_different_fingerprint_is_an_error_naming_what_changed(tmp_path, monkeypatch):
    import coprs.evaluation.progress as progress

    said = []
    monkeypatch.setattr(progress, "print_log", lambda msg, **kw: said.append(msg))
    run = EvalProgress(tmp_path, dict(reasoning="generated", max_new_tokens=None), "s/t")
    run.start(False)
    later = EvalProgress(tmp_path, dict(reasoning="generated", max_new_tokens=64), "s/t")
    with pytest.raises(ValueError, match=r"max_new_tokens: None then, 64 now.*delete "
                                         r".* to evaluate this split from the start"):
        later.start(resume=True)
    # another evaluation that had finished the split (another checkpoint into the same work
    # dir): this one never reached it, so it starts it, saying so
    run.append([_record("a")])
    run.finish()
    assert later.start(resume=True) == {}
    assert "those of another, finished evaluation (max_new_tokens: None then, 64 now)" in said[-1]
    assert not json.loads(later.run_file.read_text())["complete"]
    assert not list(later.progress_dir.glob("*.jsonl"))
    # nothing earlier: --resume evaluates everything
    assert EvalProgress(tmp_path / "other", {}, "s/t").start(resume=True) == {}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable.*delete it"):
        EvalProgress(tmp_path / "bad", {}, "s/t").start(resume=True)


def test_a_finished_split_is_reused_only_while_it_is_marked_complete(tmp_path):
    fp = dict(reasoning="gold")
    run = EvalProgress(tmp_path, fp, "s/t")
    run.start(resume=False)
    run.append([_record("a")])
    write_per_sample(tmp_path / PER_SAMPLE_FILENAME, [_record("a"), _record("b")])
    run.finish()
    assert json.loads(run.run_file.read_text())["complete"] is True
    assert sorted(EvalProgress(tmp_path, fp, "s/t").start(resume=True)) == ["a", "b"]
    # a --limit run rewrites per_sample.jsonl with fewer records; the progress files keep the
    # others for the next --resume
    write_per_sample(tmp_path / PER_SAMPLE_FILENAME, [_record("b")])
    run.append([_record("c")])
    assert sorted(EvalProgress(tmp_path, fp, "s/t").start(resume=True)) == ["a", "b", "c"]
    # a fresh start leaves the old per_sample.jsonl in place until it is replaced, but a
    # later --resume must not take it for this run's records
    EvalProgress(tmp_path, fp, "s/t").start(resume=False)
    assert (tmp_path / PER_SAMPLE_FILENAME).is_file()
    assert EvalProgress(tmp_path, fp, "s/t").start(resume=True) == {}


def test_fingerprint_parts(tmp_path):
    import os
    import shutil

    ckpt = tmp_path / "iter_10.pth"
    body = os.urandom(3 << 20)
    ckpt.write_bytes(body)
    stamp = file_stamp(ckpt)
    assert stamp["size"] == 3 << 20
    shutil.copy(ckpt, tmp_path / "moved.pth")  # a copy elsewhere (node-local disk): the same
    assert file_stamp(tmp_path / "moved.pth") == stamp
    ckpt.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))  # another checkpoint under that name
    assert file_stamp(ckpt) != stamp
    middle = bytearray(body)
    middle[len(body) // 2 + 7] ^= 1  # an annotation edited in place, in the middle
    ckpt.write_bytes(bytes(middle))
    assert file_stamp(ckpt) not in (stamp, None)
    folder = tmp_path / "export"
    (folder / "policy").mkdir(parents=True)
    (folder / "policy" / "a.bin").write_bytes(b"12")
    (folder / "seg_head.pth").write_bytes(b"345")
    assert sorted(file_stamp(folder)["files"]) == ["policy/a.bin", "seg_head.pth"]
    assert file_stamp(None) is None
    a = dict(type="ShapesReasonDataset", split="test", indices=4)
    assert config_digest(a, drop=("indices",)) == config_digest(dict(a, indices=8),
                                                                drop=("indices",))
    assert config_digest(a) != config_digest(dict(a, split="val"))
    assert config_digest(None) is None


def test_starting_over_says_what_resume_would_have_kept(tmp_path, monkeypatch):
    import coprs.evaluation.progress as progress

    said = []
    monkeypatch.setattr(progress, "print_log", lambda msg, **kw: said.append(msg))
    run = EvalProgress(tmp_path, {"reasoning": "gold"}, "s/t")
    run.start(resume=False)
    run.append([_record("a"), _record("b")])
    EvalProgress(tmp_path, {"reasoning": "gold"}, "s/t").start(resume=False)
    assert len(said) == 1 and "2 records of an interrupted evaluation" in said[0]
    run.append([_record("a")])
    EvalProgress(tmp_path, {"reasoning": "generated"}, "s/t").start(resume=False)
    assert len(said) == 1  # another evaluation's records: --resume would not have kept them


def test_progress_that_cannot_be_written_warns_once_and_the_evaluation_goes_on(tmp_path,
                                                                                monkeypatch):
    import coprs.evaluation.progress as progress

    said = []
    monkeypatch.setattr(progress, "print_log", lambda msg, **kw: said.append(msg))
    run = EvalProgress(tmp_path, {}, "s/t")
    run.start(resume=False)
    (run.progress_dir / "rank0.jsonl").mkdir()  # cannot be opened as a file
    run.append([_record("a")])
    run.append([_record("b")])
    assert len(said) == 1 and "cannot write" in said[0] and "cannot be resumed" in said[0]


def test_fingerprint_changes_name_the_nested_keys_that_differ():
    then = {"model": {"policy": {"max_pixels": 705600, "tiny": None}}, "reasoning": "generated"}
    now = {"model": {"policy": {"max_pixels": 12544, "tiny": None}}, "reasoning": "gold"}
    assert fingerprint_changes(then, now) == ("model.policy.max_pixels: 705600 then, 12544 now; "
                                              "reasoning: 'generated' then, 'gold' now")
    assert fingerprint_changes(then, then) == ""
    many = ({f"k{i}": i for i in range(7)}, {f"k{i}": -i - 1 for i in range(7)})
    assert fingerprint_changes(*many, limit=2).endswith("k1: 1 then, -2 now (+5 more)")


def test_a_large_file_is_stamped_by_pieces_across_all_of_it(tmp_path, monkeypatch):
    """Above the whole-file size, pieces spread over the file: a change anywhere in a
    piece changes the stamp (a safetensors shard whose middle tensors changed)."""
    import coprs.evaluation.progress as progress

    monkeypatch.setattr(progress, "_STAMP_WHOLE", 1 << 16)
    monkeypatch.setattr(progress, "_STAMP_PIECES", 8)
    monkeypatch.setattr(progress, "_STAMP_PIECE", 1 << 10)
    path = tmp_path / "model.safetensors"
    body = bytearray(1 << 20)
    path.write_bytes(bytes(body))
    stamp = file_stamp(path)
    step = ((1 << 20) - (1 << 10)) // 8
    for offset in (5 * step + 3, (1 << 20) - 1, 0):
        changed = bytearray(body)
        changed[offset] = 1
        path.write_bytes(bytes(changed))
        assert file_stamp(path) != stamp, offset


def test_a_line_cut_inside_a_character_is_left_out_and_later_records_stay_whole(tmp_path,
                                                                                monkeypatch):
    import coprs.evaluation.progress as progress

    said = []
    monkeypatch.setattr(progress, "print_log", lambda msg, **kw: said.append(msg))
    fp = dict(reasoning="generated")
    run = EvalProgress(tmp_path, fp, "s/t")
    run.start(False)
    run.append([dict(_record("a"), response="I see … a star")])
    path = run.progress_dir / "rank0.jsonl"
    whole = json.dumps(dict(_record("b"), response="…"), ensure_ascii=False).encode()
    with path.open("ab") as f:  # killed in the middle of the three bytes of '…'
        f.write(whole[:whole.index("…".encode()) + 1])
    # starting over and resuming both read it: the cut line is left out with a warning
    EvalProgress(tmp_path, fp, "s/t")._warn_discarded()
    again = EvalProgress(tmp_path, fp, "s/t")
    assert sorted(again.start(resume=True)) == ["a"]
    assert "1 unreadable line(s) left out" in said[-1]
    # the resumed run appends after the cut line, not onto it: its records stay readable
    again.append([_record("c")])
    assert sorted(EvalProgress(tmp_path, fp, "s/t").start(resume=True)) == ["a", "c"]


def test_a_resume_with_other_options_refuses_before_touching_any_split(tmp_path):
    from coprs.evaluation.progress import check_interrupted

    fp = dict(checkpoint={"size": 1}, max_new_tokens=4, dataset={"split": "val"},
              annotations={})
    val = EvalProgress(tmp_path / "shapes_val", fp, "shapes/val")
    val.start(False)
    val.finish()
    test = EvalProgress(tmp_path / "shapes_test", dict(fp, dataset={"split": "test"}), "s/t")
    test.start(False)  # interrupted
    same = dict(fp, dataset={"split": "other"}, annotations={"x.jsonl": {"size": 2}})
    check_interrupted(tmp_path, same)  # per-split parts differ between splits: fine
    with pytest.raises(ValueError, match=r"shapes_test holds the records of an interrupted "
                                         r"evaluation .*max_new_tokens: 4 then, 5 now.*nothing "
                                         r"was evaluated or replaced"):
        check_interrupted(tmp_path, dict(fp, max_new_tokens=5))
    test.finish()  # nothing interrupted: another evaluation may replace them
    check_interrupted(tmp_path, dict(fp, max_new_tokens=5))
    (tmp_path / "shapes_test" / "run.json").write_text("{")  # its split reports it
    check_interrupted(tmp_path, dict(fp, max_new_tokens=5))


def test_results_written_atomically_keep_the_usual_file_mode(tmp_path):
    import os

    from coprs.utils import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new.json", "{}")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "new.json").chmod(0o640)
        atomic_write(tmp_path / "new.json", "[]")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "new.json").read_text() == "[]"
    finally:
        os.umask(old)
