import io
import os
import pickle

import pytest

from coprs.datasets.safe_pickle import UnsafePickleError, safe_load, safe_loads

REFS = [
    {
        "ref_id": 7,
        "ann_id": 50001,
        "image_id": 1000,
        "split": "testA",
        "category_id": 1,
        "file_name": "COCO_train2014_000000001000_50001.jpg",
        "sent_ids": [3, 4],
        "sentences": [
            {"tokens": ["man", "left"], "raw": "Man left", "sent_id": 3, "sent": "man left"},
            {"tokens": ["café"], "raw": "Café ☕", "sent_id": 4, "sent": "café"},
        ],
        "score": 0.5,
    }
]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Custom:
    pass


def test_refs_list_round_trips(tmp_path):
    path = tmp_path / "refs(unc).p"
    with open(path, "wb") as f:
        pickle.dump(REFS, f, protocol=2)
    assert safe_load(path) == REFS
    assert safe_load(str(path)) == REFS
    with open(path, "rb") as f:
        assert safe_load(f) == REFS


def test_python2_byte_strings_decode_per_string():
    # Python 2 protocol 2: [str('cafés' as UTF-8), str('café' as latin-1), {str('k'): 5}]
    data = b"\x80\x02](U\x06caf\xc3\xa9sU\x04caf\xe9}q\x01U\x01kK\x05se."
    assert safe_loads(data) == ["cafés", "café", {"k": 5}]


def test_python2_builtin_set_is_allowed():
    data = b"c__builtin__\nset\nq\x00]q\x01K\x01a\x85q\x02Rq\x03."
    assert safe_loads(data) == {1}


def test_os_system_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    with open(path, "wb") as f:
        pickle.dump([{"ref_id": 1, "x": Evil(marker)}], f, protocol=2)
    with pytest.raises(pickle.UnpicklingError) as err:
        safe_load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert f"{os.system.__module__}.system" in msg
    assert "not a plain refs pickle" in msg
    assert not marker.exists()


def test_custom_class_and_non_container_builtins_are_rejected(tmp_path):
    path = tmp_path / "custom.p"
    with open(path, "wb") as f:
        pickle.dump({"obj": Custom()}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"Custom"):
        safe_load(path)
    evil = pickle.dumps(eval, protocol=2)  # builtins.eval: builtin module, forbidden name
    with pytest.raises(UnsafePickleError, match=r"__builtin__\.eval"):
        safe_load(io.BytesIO(evil))


def test_corrupt_pickle_names_the_file(tmp_path):
    path = tmp_path / "refs(umd).p"
    path.write_bytes(pickle.dumps(REFS, protocol=2)[:40])
    with pytest.raises(UnsafePickleError, match=r"refs\(umd\)\.p.*truncated or corrupt"):
        safe_load(path)
