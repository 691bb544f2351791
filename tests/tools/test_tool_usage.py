"""The scripts under tools/ that wrap a ``coprs`` subcommand name themselves, as they were run, in
their usage line and errors (``usage: python tools/train.py …``), and ``coprs train`` still
names ``coprs train``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coprs.cli import as_script, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.name for p in (ROOT / "tools").glob("*.py"))
ENV = {**os.environ, "COPRS_DISABLE_PLUGINS": "1"}


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def _command_of(tool: str) -> str:
    source = (ROOT / "tools" / tool).read_text()
    (command,) = re.findall(r'\n        sys\.exit\(main\(\["([\w-]+)", \*sys\.argv\[1:\]\]\)\)',
                            source)
    assert "\n    with as_script():" in source, tool  # … inside as_script()
    return command


def test_every_top_level_tool_wraps_a_coprs_subcommand_inside_as_script():
    assert "train.py" in TOOLS and "test.py" in TOOLS
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for tool in TOOLS:
        assert _command_of(tool) in sub.choices, tool


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help_names_the_script_as_it_was_run(tool):
    done = _run(f"tools/{tool}", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python tools/{tool} [-h]"), done.stdout[:200]
    assert f"coprs {_command_of(tool)} [" not in done.stdout


def test_tool_errors_name_the_script_and_coprs_still_names_coprs(capsys):
    done = _run("tools/test.py", "CONFIG", "CKPT", "--limt", "3")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: python tools/test.py ")
    assert ("python tools/test.py: error: unrecognized arguments: --limt (did you mean "
            "--limit?)") in done.stderr
    done = _run("train.py", cwd=ROOT / "tools")  # run from inside tools/: as typed
    assert done.returncode == 2
    assert "python train.py: error: the following arguments are required: config" in done.stderr
    for argv in (["train", "--help"], ["test", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: coprs {argv[0]} [-h]")
    with as_script("python my_train.py"), pytest.raises(SystemExit):
        main(["train", "--help"])
    assert capsys.readouterr().out.startswith("usage: python my_train.py [-h]")
    with pytest.raises(SystemExit):  # … only inside
        main(["train", "--help"])
    assert capsys.readouterr().out.startswith("usage: coprs train [-h]")
