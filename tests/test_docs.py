"""The docs cannot drift from the code: every ``kface`` command line shown in README.md and docs/*.md
parses with the real command-line app, and every JSON key shown in an example output is one the
command can produce.

Where commands are found, in fenced code blocks:

* a line starting with ``$ `` is a shell prompt: the command is what follows (output lines until
  the next prompt belong to it);
* in ``bash``/``sh``/``shell`` blocks, every line is a command (``#`` starts a comment); in plain
  blocks without prompts, every line that starts with ``kface``;
* a line ending in ``\\`` continues on the next one; ``;``, ``&&``, ``||`` and ``|`` separate
  commands; only the ones that start with ``kface`` are checked. A lone ``...`` elides arguments.

Parsing uses the Typer/Click app itself (``make_context``): the command, its options, the values of
choice options and the number of arguments are checked, and nothing runs.

JSON keys: output that follows a ``$ kface CMD ... --json`` prompt (or ``--format json``), or a
``json`` block right after a prose line naming ``kface CMD`` (the nearest such mention before it),
is read leniently (``...`` may trim it). Each snake_case key must be a key the code of that command
writes: a string used as a dict key, a subscript, a ``dict(...)`` keyword or a dataclass field in
the modules listed in :data:`COMMAND_SOURCES`. Keys inside maps keyed by data (``tar_at_far``,
``per_condition``...) are not field names and are skipped.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "kface_cli"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: Per command, the modules (globs under kface_cli/) whose code writes its JSON output.
COMMAND_SOURCES = {
    "sample-data": ["synth/*.py", "cli/data.py"],
    "extract": ["prepare/extract.py", "cli/data.py"],
    "crop": ["prepare/crop.py", "face/*.py", "cli/data.py"],
    "split": ["prepare/split.py", "cli/data.py"],
    "train": ["train/**/*.py", "cli/train.py"],
    "export": ["embedding/export.py", "embedding/loading.py", "cli/train.py"],
    "enroll": ["deploy/enroll.py", "gallery/**/*.py"],
    "identify": ["deploy/identify.py", "deploy/sources.py", "gallery/index.py"],
    "gallery": ["gallery/**/*.py"],
    "verify": ["deploy/compare.py"],
    "embed": ["deploy/compare.py"],
    "detect": ["deploy/detect.py", "face/detector.py"],
    "evaluate": ["evaluate/**/*.py", "embedding/metrics.py", "embedding/calibration.py"],
    "clean": ["research/clean.py"],
    "invert": ["research/invert.py"],
}
#: What every command's JSON may hold: the schema version, the model's description, warnings.
COMMON_SOURCES = ["console.py", "embedding/embedder.py", "deploy/model.py"]
#: Keys whose value is a map keyed by data (rates, codes, metadata), not by field names.
MAPS = {
    "metadata", "tar_at_far", "dir_at_fpir", "per_condition", "missing_by_code", "methods", "problems",
    "examples", "by_camera", "landmark_sources", "sources", "by_condition",
}  # fmt: skip
SNAKE = re.compile(r"[a-z][a-z0-9_]*")
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
ELISIONS = {"...", "…"}


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list[str]
    before: str  # the prose between the previous block and this one


@dataclass
class Shown:
    """A command line shown in the docs, and the output printed under it (prompt blocks)."""

    where: str
    argv: list[str]
    output: str = ""


def _rel(doc: Path) -> str:
    return str(doc.relative_to(REPO)) if doc.is_relative_to(REPO) else doc.name


def code_blocks(doc: Path) -> list[Block]:
    blocks: list[Block] = []
    prose: list[str] = []
    fence: str | None = None
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            m = re.match(r"^(```+|~~~+)\s*([\w+-]*)", stripped)
            if m:
                fence = m.group(1)
                blocks.append(Block(doc, number, m.group(2).lower(), [], "\n".join(prose)))
                prose = []
            else:
                prose.append(line)
        elif stripped.startswith(fence):
            fence = None
        else:
            blocks[-1].lines.append(line)
    return blocks


def _logical_lines(lines: list[str]) -> list[tuple[int, str]]:
    """Join lines that end in a backslash; (index of the first line, text)."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            pending = (i, line)
        if pending[1].rstrip().endswith("\\"):
            pending = (pending[0], pending[1].rstrip()[:-1])
            continue
        out.append(pending)
        pending = None
    if pending is not None:
        out.append(pending)
    return out


def kface_commands(shell_line: str) -> list[list[str]]:
    """The ``kface`` invocations in one shell line, as argv lists without the program name."""
    try:
        lexer = shlex.shlex(shell_line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: not a command line
        return []
    commands: list[list[str]] = []
    current: list[str] = []
    for token in [*tokens, ";"]:
        if token and set(token) <= set(";&|<>"):
            if current and Path(current[0]).name == "kface":
                commands.append([t for t in current[1:] if t not in ELISIONS])
            current = []
            if set(token) <= set("<>"):  # a redirection: its target is not an argument
                current = ["<redirect>"]
            continue
        current.append(token)
    return commands


def shown_commands(block: Block) -> list[Shown]:
    where = f"{_rel(block.doc)}:{block.line}"
    prompts = any(line.lstrip().startswith("$ ") for line in block.lines)
    shown: list[Shown] = []
    if prompts:
        current: list[Shown] = []
        for i, text in _logical_lines(block.lines):
            if text.lstrip().startswith("$ "):
                current = [Shown(f"{where}+{i + 1}", argv) for argv in kface_commands(text.lstrip()[2:])]
                shown += current
            elif current:
                current[-1].output += text + "\n"
    elif block.lang in SHELL_LANGS:
        for i, text in _logical_lines(block.lines):
            shown += [Shown(f"{where}+{i + 1}", argv) for argv in kface_commands(text)]
    elif block.lang in ("", "text"):  # a plain block: the lines that start with `kface`
        for i, text in _logical_lines(block.lines):
            if text.startswith("kface "):
                shown += [Shown(f"{where}+{i + 1}", argv) for argv in kface_commands(text)]
    return shown


def all_shown() -> list[Shown]:
    return [s for doc in DOCS for block in code_blocks(doc) for s in shown_commands(block)]


# -- parsing -------------------------------------------------------------------------------------


@cache
def _app():
    import typer.main

    from kface_cli.cli import app

    return typer.main.get_command(app)


def parse_problem(argv: list[str]) -> str | None:
    """Why ``kface *argv`` does not parse (None when it does). Nothing is run."""
    group = _app()
    global_opts = {o: p for p in group.params for o in (*p.opts, *p.secondary_opts)}
    args = list(argv)
    while args and args[0].startswith("-"):  # global options before the command name
        option = args[0].split("=")[0]
        if option not in global_opts:
            return f"no such global option {args[0]}"
        if option in ("--version", "--help"):
            return None
        takes_value = not getattr(global_opts[option], "is_flag", False) and "=" not in args[0]
        args = args[2:] if takes_value else args[1:]
    if not args:
        return None  # `kface` or `kface --help`
    name, rest = args[0], args[1:]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ctx = group.make_context("kface", [name])
            command = group.get_command(ctx, name)
            if command is None:
                return f"no such command {name!r}"
            command.make_context(name, rest, parent=ctx)
    except Exception as e:  # click's UsageError family; an eager --help exits (fine)
        if type(e).__name__ == "Exit":
            return None
        return f"{type(e).__name__}: {e}"
    return None


def test_docs_show_commands():
    """The check below has something to check: the pages show commands of every stage."""
    names = {s.argv[0] for s in all_shown() if s.argv}
    assert {"sample-data", "train", "enroll", "identify", "verify", "evaluate"} <= names, names


@pytest.mark.parametrize("shown", all_shown(), ids=lambda s: s.where)
def test_every_command_shown_parses(shown):
    problem = parse_problem(shown.argv)
    assert problem is None, f"{shown.where}: kface {shlex.join(shown.argv)}: {problem}"


# -- JSON keys -----------------------------------------------------------------------------------


def _string_keys(tree: ast.AST) -> set[str]:
    """Strings the code uses as keys: dict literal keys, subscripts, dict(...)/.get(...) and
    dataclass fields (``asdict``), and the strings of module-level tuples of key names."""
    keys: set[str] = set()

    def const(node) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys.update(k for k in map(const, node.keys) if k)
        elif isinstance(node, ast.Subscript) and const(node.slice):
            keys.add(const(node.slice))
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id == "dict":
                keys.update(k.arg for k in node.keywords if k.arg)
            if isinstance(fn, ast.Attribute) and fn.attr in ("get", "setdefault", "pop") and node.args:
                keys.update(k for k in [const(node.args[0])] if k)
        elif isinstance(node, ast.ClassDef):
            keys.update(
                s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            )
            keys.update(s.name for s in node.body if isinstance(s, ast.FunctionDef) and s.decorator_list)  # properties
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple | ast.List | ast.Set):
            keys.update(k for k in map(const, node.value.elts) if k)
    return keys


@cache
def command_keys(command: str) -> frozenset[str]:
    assert command in COMMAND_SOURCES, f"tests/test_docs.py: add `kface {command}` to COMMAND_SOURCES"
    keys: set[str] = set()
    for pattern in (*COMMAND_SOURCES[command], *COMMON_SOURCES):
        files = sorted(PACKAGE.glob(pattern))
        assert files, f"COMMAND_SOURCES: nothing matches kface_cli/{pattern}"
        for path in files:
            keys |= _string_keys(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(keys)


def json_keys(text: str) -> list[tuple[tuple[str, ...], str]]:
    """``(parents, key)`` of every ``"key":`` in a (possibly trimmed) JSON text."""
    found: list[tuple[tuple[str, ...], str]] = []
    stack: list[str | None] = []
    last_key: str | None = None
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"(\s*:)?|[{}\[\]]', text):
        token = m.group(0)
        if token in ("{", "["):
            stack.append(last_key)
            last_key = None
        elif token in ("}", "]"):
            if stack:
                stack.pop()
            last_key = None
        elif m.group(2):
            key = m.group(1)
            found.append((tuple(k for k in stack if k), key))
            last_key = key
    return found


@dataclass
class JsonExample:
    where: str
    command: str
    text: str


def _json_output(argv: list[str]) -> bool:
    return "--json" in argv or any(a == "--format" and b == "json" for a, b in zip(argv, argv[1:]))


def json_examples() -> list[JsonExample]:
    examples: list[JsonExample] = []
    for doc in DOCS:
        for block in code_blocks(doc):
            for shown in shown_commands(block):
                if shown.argv and _json_output(shown.argv) and "{" in shown.output:
                    examples.append(JsonExample(shown.where, shown.argv[0], shown.output))
            if block.lang == "json":
                mentioned = re.findall(r"kface ([a-z][a-z-]*)", block.before)
                commands = [m for m in mentioned if m in COMMAND_SOURCES]
                assert commands, f"{_rel(doc)}:{block.line}: say which `kface` command prints this JSON"
                examples.append(JsonExample(f"{_rel(doc)}:{block.line}", commands[-1], "\n".join(block.lines)))
    return examples


def unknown_keys(example: JsonExample) -> list[str]:
    known = command_keys(example.command) | {"schema"}
    return [
        "/".join((*parents, key))
        for parents, key in json_keys(example.text)
        if SNAKE.fullmatch(key) and not MAPS.intersection(parents) and key not in known
    ]


def test_docs_show_json_outputs():
    assert len({e.command for e in json_examples()}) >= 2


@pytest.mark.parametrize("example", json_examples(), ids=lambda e: e.where)
def test_every_json_key_shown_exists(example):
    assert unknown_keys(example) == [], f"{example.where}: kface {example.command} --json has no such key"


# -- the checks catch drift ------------------------------------------------------------------------


def test_a_wrong_option_command_or_value_is_caught(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(
        '```\n$ kface verify a.jpg b.jpg --model demo.onnx --json\n{"same": true}\n```\n\n'
        "```bash\nkface identify photos/ --modle demo.onnx   # misspelt option\n"
        "kface enrol people/\nkface detect probes --landmarks eyes \\\n  --json | jq .faces\n"
        "kface verify a.jpg\n```\n",
        encoding="utf-8",
    )
    shown = [s for block in code_blocks(doc) for s in shown_commands(block)]
    assert [s.argv[0] for s in shown] == ["verify", "identify", "enrol", "detect", "verify"]
    assert parse_problem(shown[0].argv) is None
    assert "--modle" in parse_problem(shown[1].argv)
    assert "enrol" in parse_problem(shown[2].argv)
    assert "eyes" in parse_problem(shown[3].argv)  # not a --landmarks choice
    assert "image2" in parse_problem(shown[4].argv)  # a missing argument


def test_a_key_the_command_does_not_write_is_caught():
    good = JsonExample("t", "verify", '{"schema": 1, "same": false, "model": {"fingerprint": "ab"}, ...}')
    stale = JsonExample("t", "verify", '{"same": false, "verdict": "different", "model": {"colour": 1}}')
    maps = JsonExample("t", "evaluate", '{"tar_at_far": {"1e-02": {"whatever_key": 1}}, "accuracy": 0.9}')
    assert unknown_keys(good) == [] and unknown_keys(maps) == []
    assert unknown_keys(stale) == ["verdict", "model/colour"]
