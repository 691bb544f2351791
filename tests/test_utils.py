import os

from coprs.utils import coprs_home, using_coprs_home


def test_using_coprs_home_sets_and_restores_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("COPRS_HOME", str(tmp_path / "outer"))
    with using_coprs_home(tmp_path / "inner") as home:
        assert coprs_home() == home == tmp_path / "inner"
    assert os.environ["COPRS_HOME"] == str(tmp_path / "outer")
    monkeypatch.delenv("COPRS_HOME")
    try:
        with using_coprs_home(tmp_path / "inner"):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert "COPRS_HOME" not in os.environ  # unset before, unset after, even on an error
