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


def test_source_version_names_the_commit_of_a_git_checkout(tmp_path):
    """``coprs.__version__`` plus ``+g<commit>`` from a git checkout (what checkpoints and
    evaluation fingerprints record), the plain version elsewhere."""
    import subprocess

    from coprs import __version__
    from coprs.utils import source_version

    assert source_version(tmp_path) == __version__  # no .git: an installed package
    # git is on any machine with this checkout (.ci/run runs in a clone)
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b", "PATH": os.environ["PATH"]}
    repo = tmp_path / "repo"
    for cmd in (["init", "-q", str(repo)],
                ["-C", str(repo), "commit", "-q", "--allow-empty", "-m", "one"]):
        subprocess.run(["git", *cmd], check=True, env=env, capture_output=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert source_version(repo) == f"{__version__}+g{head[:7]}"
    (tmp_path / "broken" / ".git").mkdir(parents=True)  # not a repository git can read
    assert source_version(tmp_path / "broken") == __version__
