"""The commands shown in README.md and docs/*.md parse, and their relative links resolve.

Every ``coprs …``, ``python tools/….py …``, ``torchrun … tools/….py …`` and
``[bash] tools/{dist,slurm}_{train,test}.sh …`` line of a fenced ``bash`` block is parsed (never
run) with the parser the command would use:

* ``coprs SUB ARGS``: :func:`coprs.cli.build_parser` (``--debug`` removed anywhere, as ``main``);
* ``python tools/X.py ARGS``: the tool must exist; ``tools/X.py`` calls ``main([SUB, *argv])``, so
  ``SUB ARGS`` goes through the same parser;
* ``tools/dist_train.sh CONFIG GPUS ARGS`` and the other launch scripts: the ``tools/X.py``
  command the script runs (``python tools/train.py CONFIG --launcher pytorch ARGS``);
* ``python tools/analysis/X.py ARGS``, ``python tools/benchmarks/X.py ARGS``: the module's
  own ``parse_args`` if it has one.

Every ``configs/….py`` a command names must exist. Usage synopses (``[--opt …]``) are skipped;
upper-case placeholders (CONFIG, IMAGE, CKPT) are ordinary arguments to the parser.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {">", ">>", "<", ">&", "<&"}
CONFIG_PATH = re.compile(r"(?<![\w/.-])configs/[^\s'\"=,;]+?\.py\b")
# a usage synopsis, not a command: "[--option …]", "[CHECKPOINT]", "…", "..."
SYNOPSIS = re.compile(r"(^|\s)(\[[-A-Z]|\.\.\.(\s|$)|…(\s|$))")
#: launch script -> (the tool it runs, its positional arguments, which of them go to the tool,
#: the launcher it passes)
LAUNCH_SCRIPTS = {
    "tools/dist_train.sh": ("tools/train.py", ("CONFIG", "GPUS"), (0,), "pytorch"),
    "tools/dist_test.sh": ("tools/test.py", ("CONFIG", "CHECKPOINT", "GPUS"), (0, 1), "pytorch"),
    "tools/slurm_train.sh": ("tools/train.py", ("PARTITION", "JOB_NAME", "CONFIG"), (2,),
                             "slurm"),
    "tools/slurm_test.sh": ("tools/test.py", ("PARTITION", "JOB_NAME", "CONFIG", "CHECKPOINT"),
                            (2, 3), "slurm"),
}
TOOL_SUBCOMMAND = re.compile(r"main\(\[\s*[\"']([\w-]+)[\"']\s*,\s*\*sys\.argv\[1:\]\s*\]\)")


@dataclass(frozen=True)
class DocCommand:
    """One command of a shell block: where it is, its logical line, and its own tokens."""

    source: str            # "docs/x.md:12"
    line: str              # the logical line (continuations joined)
    argv: tuple[str, ...]  # this command's tokens, from "coprs" / "python" on


def _tokens(text: str) -> list[str]:
    """Shell tokens; operators (&&, |, ;, >) become their own tokens; comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _shell_blocks(markdown: str):
    """(first line number, lines) of each fenced shell block; indented fences included."""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        if lang.lower() in SHELL_FENCES:
            yield start, body


def _logical_lines(start: int, body: list[str]):
    """(line number, text): backslash continuations joined, multi-line quotes kept whole."""
    buf, first = "", None
    for n, raw in enumerate(body, start):
        first = n if first is None else first
        if raw.rstrip().endswith("\\") and not raw.rstrip().endswith("\\\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        try:
            _tokens(buf)
        except ValueError:  # an open quote: the string goes on on the next line
            buf += "\n"
            continue
        if buf.strip():
            yield first, buf.strip()
        buf, first = "", None
    if buf.strip():
        yield first, buf.strip()


def _command_start(seg: list[str]) -> list[str] | None:
    """The part of a simple command that is a coprs / tools invocation, or None.

    ``VAR=value`` prefixes are dropped; ``pip install …`` is not a command of ours;
    ``torchrun [options] tools/X.py ARGS`` is checked as ``python tools/X.py ARGS``, and a
    launch script (``[bash] tools/dist_train.sh …``) as the tool command it runs.
    """
    while seg and re.match(r"^[A-Za-z_]\w*=", seg[0]):
        seg = seg[1:]
    if seg and seg[0] in ("bash", "sh"):
        seg = seg[1:]
    if not seg or seg[0] == "pip":
        return None
    script = seg[0][2:] if seg[0].startswith("./") else seg[0]
    if script.startswith("tools/") and script.endswith(".sh"):
        if script not in LAUNCH_SCRIPTS:
            return ["script", script]
        tool, positionals, kept, launcher = LAUNCH_SCRIPTS[script]
        if len(seg) <= len(positionals):
            return ["script", script, *seg[1:]]
        given = seg[1:1 + len(positionals)]
        return ["python", tool, *(given[i] for i in kept), "--launcher", launcher,
                *seg[1 + len(positionals):]]
    if seg[0] == "torchrun":
        rest = seg[1:]
        while rest and rest[0].startswith("-"):
            takes_value = ("=" not in rest[0] and len(rest) > 1
                           and not rest[1].startswith("-") and not rest[1].endswith(".py"))
            rest = rest[2:] if takes_value else rest[1:]
        seg = ["python", *rest]
    if seg[0] == "coprs":
        return seg
    if seg[0] in ("python", "python3") and len(seg) > 1:
        if seg[1].startswith("tools/"):
            return seg
        if seg[1] == "-m" and len(seg) > 2 and seg[2] in ("coprs", "coprs.cli"):
            return ["coprs", *seg[3:]]
    return None


def extract_commands(markdown: str, source: str) -> list[DocCommand]:
    """Every coprs / tools command of the fenced shell blocks of one Markdown text."""
    out = []
    for start, body in _shell_blocks(markdown):
        for n, line in _logical_lines(start, body):
            if SYNOPSIS.search(line):
                continue
            segment: list[str] = []
            for tok in [*_tokens(line), "&&"]:
                if tok not in SEPARATORS:
                    segment.append(tok)
                    continue
                for r in REDIRECTS:  # `cmd ARGS > file`: the redirection is not an argument
                    if r in segment:
                        segment = segment[:segment.index(r)]
                argv = _command_start(segment)
                if argv is not None:
                    out.append(DocCommand(f"{source}:{n}", line, tuple(argv)))
                segment = []
    return out


def _parse(parser_call, args: list[str], cmd: DocCommand, what: str) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser_call(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise AssertionError(f"{cmd.source}: `{cmd.line}` does not parse as {what}: "
                                 f"{err.getvalue().strip().splitlines()[-1:]}") from None


def _coprs_parse(argv: list[str]) -> None:
    from coprs.cli import build_parser

    build_parser().parse_args([a for a in argv if a != "--debug"])  # as coprs.cli.main


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True


def _analysis_parse_args(path: Path):
    """The tool's ``parse_args``, or None if it has none.

    Importing the tool would import torch (seconds), so only ``parse_args``, the ``argparse`` /
    ``pathlib`` imports and the module's literal assignments (epilog text, choices) are executed;
    a ``parse_args`` that needs more falls back to importing the whole module.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parse_args"]
    if not funcs:
        return None
    consts = [n for n in tree.body if isinstance(n, ast.Assign) and _is_literal(n.value)]
    code = "import argparse\nfrom pathlib import Path\n"
    code += "\n".join(ast.unparse(n) for n in [*consts, funcs[0]])
    namespace: dict = {}
    exec(compile(code, str(path), "exec"), namespace)  # noqa: S102 - the repo's own file
    parse_args = namespace["parse_args"]

    def call(args):
        try:
            return parse_args(args)
        except NameError:  # needs more of the module: import it as running it would, with
            # its own folder first on sys.path (tools/benchmarks/ scripts share _common.py)
            spec = importlib.util.spec_from_file_location(f"_doc_tool_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(path.parent))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
            return module.parse_args(args)

    return call


def check_command(cmd: DocCommand, root: Path = ROOT) -> None:
    """Raise AssertionError (naming the command) unless it parses and its configs exist."""
    for tok in cmd.argv:
        for path in CONFIG_PATH.findall(tok):
            if not (root / path).is_file():
                raise AssertionError(f"{cmd.source}: `{cmd.line}` names {path}, which does not "
                                     "exist")
    if cmd.argv[0] == "coprs":
        _parse(_coprs_parse, list(cmd.argv[1:]), cmd, "`coprs …`")
        return
    if cmd.argv[0] == "script":
        if cmd.argv[1] not in LAUNCH_SCRIPTS:
            raise AssertionError(f"{cmd.source}: `{cmd.line}` runs {cmd.argv[1]}, which is not a "
                                 f"launch script of tools/ ({', '.join(LAUNCH_SCRIPTS)})")
        raise AssertionError(f"{cmd.source}: `{cmd.line}`: {cmd.argv[1]} takes "
                             f"{' '.join(LAUNCH_SCRIPTS[cmd.argv[1]][1])} first")
    tool = root / cmd.argv[1]
    if not tool.is_file():
        raise AssertionError(f"{cmd.source}: `{cmd.line}` runs {cmd.argv[1]}, which does not exist")
    args = list(cmd.argv[2:])
    if tool.parent.name in ("analysis", "benchmarks"):
        parse_args = _analysis_parse_args(tool)
        if parse_args is not None:
            _parse(parse_args, args, cmd, cmd.argv[1])
        return
    m = TOOL_SUBCOMMAND.search(tool.read_text(encoding="utf-8"))
    if m is None:
        raise AssertionError(f"{cmd.argv[1]} does not call coprs.cli.main([SUB, *sys.argv[1:]]); "
                             "teach tests/test_docs.py how to parse it")
    _parse(_coprs_parse, [m.group(1), *args], cmd, f"`coprs {m.group(1)} …`")


def _all_commands() -> list[DocCommand]:
    cmds = []
    for path in DOC_FILES:
        cmds += extract_commands(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return cmds


COMMANDS = _all_commands()


def test_docs_have_commands():
    subcommands = {c.argv[1] for c in COMMANDS if c.argv[0] == "coprs" and len(c.argv) > 1}
    assert {"train", "test", "infer", "count-params"} <= subcommands, subcommands
    assert any(c.argv[0] == "python" for c in COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.source} {' '.join(c.argv[:2])}"
                                               for c in COMMANDS])
def test_documented_command_parses(cmd):
    check_command(cmd)


def test_extractor_and_checker_catch_mistakes():
    doc = "\n".join([
        "text",
        "```bash",
        "# a comment",
        "pip install -e . && coprs train configs/coprs/coprs_tiny_shapes_cpu.py && \\",
        "  coprs tset configs/coprs/coprs_tiny_shapes_cpu.py",
        "coprs infer --confg configs/coprs/coprs_tiny_shapes_cpu.py IMAGE \"a, b\" \\",
        "  --out o > log.txt",
        "torchrun --nproc_per_node=2 --nnodes 1 tools/train.py CONFIG --launcher pytorch",
        "python tools/trian.py CONFIG",
        "GPUS=16 bash tools/slurm_train.sh dev job configs/coprs/coprs_tiny_shapes_cpu.py "
        "--work-dir w",
        "tools/dist_test.sh configs/coprs/coprs_tiny_shapes_cpu.py 8",
        "bash tools/dist_train.sh CONFIG 8 --wrok-dir w",
        "tools/dist_trian.sh CONFIG 8",
        "coprs count-params configs/coprs/no_such_config.py",
        "python -c \"",
        "print('coprs infer')",
        "\"",
        "coprs train CONFIG [--work-dir DIR]",
        "```",
        "  ```bash",
        "  python tools/analysis/correlation.py RESULTS --levle 0.9",
        "  ```",
        "```python",
        "coprs_is_not_shell = 1",
        "```",
    ])
    cmds = extract_commands(doc, "x.md")
    assert [c.argv[:2] for c in cmds] == [
        ("coprs", "train"), ("coprs", "tset"), ("coprs", "infer"), ("python", "tools/train.py"),
        ("python", "tools/trian.py"), ("python", "tools/train.py"),
        ("script", "tools/dist_test.sh"), ("python", "tools/train.py"),
        ("script", "tools/dist_trian.sh"), ("coprs", "count-params"),
        ("python", "tools/analysis/correlation.py")]
    assert cmds[1].source == "x.md:4"
    assert cmds[2].argv[-2:] == ("--out", "o")  # the redirection is cut
    assert cmds[3].argv[2:] == ("CONFIG", "--launcher", "pytorch")
    assert cmds[5].argv[2:] == ("configs/coprs/coprs_tiny_shapes_cpu.py", "--launcher", "slurm",
                                "--work-dir", "w")
    good = {0, 3, 5}
    for i, cmd in enumerate(cmds):
        if i in good:
            check_command(cmd)
        else:
            with pytest.raises(AssertionError, match=re.escape(cmd.source)):
                check_command(cmd)


def test_mkdocs_nav_lists_every_page_once():
    """mkdocs.yml's nav names exactly the Markdown pages under docs/."""
    import yaml

    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = [next(iter(item.values())) for item in cfg["nav"]]
    assert len(pages) == len(set(pages))
    assert sorted(pages) == sorted(p.name for p in (ROOT / cfg["docs_dir"]).glob("*.md"))


#: a quoted config: a line that starts by naming `configs/….py` (optionally after "Leaves. "),
#: a blank line, then a python block holding that file
QUOTED_CONFIG = re.compile(r"^(?:Leaves\. )?`(configs/[^`]+\.py)`[^\n]*\n\n```python\n(.*?)\n```",
                           re.M | re.S)


def quoted_configs(text: str) -> list[tuple[str, str]]:
    return QUOTED_CONFIG.findall(text)


def test_quoted_configs_are_the_files():
    """docs/configs.md quotes config files whole: each quote is the file as it is now."""
    quotes = quoted_configs((ROOT / "docs" / "configs.md").read_text())
    assert len(quotes) >= 8
    for path, body in quotes:
        assert body == (ROOT / path).read_text().rstrip("\n"), f"docs/configs.md quotes an old {path}"
    text = "`configs/_base_/default_runtime.py`:\n\n```python\nlog_level = 'DEBUG'\n```\n"
    assert quoted_configs(text) == [("configs/_base_/default_runtime.py", "log_level = 'DEBUG'")]


#: a Markdown link (not an image): [text](target)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,}).*?^\1\2", re.M | re.S)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors a page offers: each heading's slug as mkdocs (Python-Markdown's ``toc``)
    and GitHub make it, and explicit ``<a id="…">`` tags."""
    import unicodedata

    text = FENCE.sub("", markdown)
    out = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        title = m.group(1).replace("`", "")
        ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
        out.add(re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_title).strip().lower()))
        out.add(re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-"))
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links of a page whose file or heading does not exist."""
    bad = []
    for m in LINK.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        target = m.group(1)
        if re.match(r"^[a-z][a-z+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = path.parent / file if file else path
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(
                dest.read_text(encoding="utf-8")):
            bad.append(f"{target} (no such heading)")
    return bad


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_link_checker_catches_mistakes(tmp_path):
    (tmp_path / "b.md").write_text("# The loop (`Loop`)\n\n<a id=\"x\"></a>\n## Metrics (SPEC §5)\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#the-loop-loop) [ok](b.md#metrics-spec-5) [ok](b.md#x) "
                    "[ok](https://example.org/#nope) ![img](pic.png)\n"
                    "[bad](b.md#the-loop) [bad](c.md)\n```\n[in a fence](d.md)\n```\n")
    assert broken_links(page) == ["b.md#the-loop (no such heading)", "c.md (no such file)"]
