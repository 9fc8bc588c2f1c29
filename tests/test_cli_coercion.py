"""Option values converted without pydantic (kface_cli/cli/coercion.py) give what Typer's own
pydantic adapters give: the same value of the same type, or Typer's own error message."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import pytest
import typer
import typer.core
import typer.main

from kface_cli.choices import IndexKind
from kface_cli.cli import coercion


class Exact(Enum):
    LOW = "low"
    HIGH = "high"


def _command(
    bounded: Annotated[int, typer.Option(min=0, max=10)] = 1,
    count: Annotated[int, typer.Option()] = 0,
    positive: Annotated[int, typer.Option(min=1)] = 1,
    share: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    real: Annotated[float | None, typer.Option()] = None,
    text: Annotated[str, typer.Option()] = "",
    flag: Annotated[bool, typer.Option()] = False,
    kind: Annotated[IndexKind, typer.Option(case_sensitive=False)] = IndexKind.AUTO,
    exact: Annotated[Exact, typer.Option(case_sensitive=True)] = Exact.LOW,
    where: Annotated[Path | None, typer.Option()] = None,
    texts: Annotated[list[str] | None, typer.Option()] = None,
    paths: Annotated[list[Path] | None, typer.Argument()] = None,
) -> None:
    """Every kind of option kface declares."""


_app = typer.Typer()
_app.command("command")(_command)
_app.command("other")(lambda: None)  # two commands: Typer makes a group

VALUES = {
    "bounded": ["0", "5", "10", "11", "-1", "007", "+5", " 5", "5.0", "1_0", "x", "", 5, 10, 11, True, "9" * 30],
    "count": ["-0", "0", "-5", "123456789012345678", "1234567890123456789", 7, -7, 2.0],
    "positive": ["1", "0", "2"],
    "share": [
        "0.5",
        "1",
        "1.0",
        "0",
        "-0.0",
        "1e-3",
        "1E0",
        "2",
        ".5",
        "5.",
        "0.1234567890123456789",
        "inf",
        "nan",
        "1_0",
        0,
        1,
        0.25,
        True,
        "x",
    ],  # fmt: skip
    "real": ["1e308", "1e309", "-1e-320", "3.14159", "12345678901234567.123", "1e-999", 3, 2.5],
    "text": ["abc", "", "ü ß", " spaced ", 5, b"bytes"],
    "flag": [True, False, "true", "no", "1"],
    "kind": ["flat", "FLAT", "Flat", " flat", "bogus", "", IndexKind.IVF],
    "exact": ["low", "LOW", "High", "high", "x", Exact.HIGH],
    "where": ["a/b", "", "~/x", " a ", "a\x00b", Path("p"), 5],
    "texts": [("x", "y"), (), ["a"], "single"],
    "paths": [("a", "b/c"), (), [Path("d")]],
}


def _outcome(runtime, value, param, ctx):
    try:
        out = runtime._coerce_value(value, param=param, ctx=ctx)
    except Exception as e:  # the error itself is compared: its type and message
        return ("error", type(e).__name__, getattr(e, "message", str(e)))
    kinds = [type(v) for v in out] if isinstance(out, list) else None
    return ("value", type(out), out, kinds)


def _same(a, b) -> bool:
    if a[0] == "value" and b[0] == "value" and isinstance(a[2], float) and isinstance(b[2], float):
        return a[1] is b[1] and (a[2] == b[2] or (a[2] != a[2] and b[2] != b[2]))  # nan == nan here
    return a == b


def test_installed_for_typer():
    assert coercion.install() is True  # idempotent: kface_cli.cli.common installed it already
    assert getattr(typer.core.build_runtime_param, "_kface", False)


@pytest.mark.parametrize("name", list(VALUES))
def test_direct_conversion_equals_typers(name):
    group = typer.main.get_command(_app)
    command = group.commands["command"]
    ctx = command.make_context("command", [], resilient_parsing=True)
    param = next(p for p in command.params if p.name == name)
    direct = typer.core.build_runtime_param(param.type_descriptor)
    assert type(direct).__name__ == "DirectParam", f"{name} is not converted directly"
    typers = typer.core.build_runtime_param.typer_build(param.type_descriptor)
    assert type(typers).__name__ == "AdapterRuntimeParam"
    for value in VALUES[name]:
        ours, theirs = _outcome(direct, value, param, ctx), _outcome(typers, value, param, ctx)
        assert _same(ours, theirs), f"--{name} {value!r}: {ours} != Typer's {theirs}"


def test_fast_path_takes_the_common_values():
    """The direct path really answers for ordinary values (else pydantic would be imported anyway)."""
    group = typer.main.get_command(_app)
    command = group.commands["command"]
    ctx = command.make_context("command", [], resilient_parsing=True)
    params = {p.name: p for p in command.params}
    for name, value in (("bounded", "5"), ("share", "0.5"), ("text", "a"), ("kind", "FLAT"), ("where", "x"),
                        ("paths", ("a", "b")), ("texts", ("x",))):  # fmt: skip
        info = params[name].type_descriptor
        convert = coercion.converter(info.annotation, info.parameter_info)
        assert convert is not None and convert(value, ctx, params[name]) is not coercion.SLOW, name
    bounded = params["bounded"].type_descriptor
    convert = coercion.converter(bounded.annotation, bounded.parameter_info)
    assert convert("11", ctx, params["bounded"]) is coercion.SLOW  # out of bounds: Typer words the error


def test_every_kface_option_is_converted_directly():
    """kface's own options all take the direct path (a new kind of option would silently bring pydantic back)."""
    from kface_cli.cli import all_commands

    group = all_commands()
    commands = [*group.commands.values()]
    commands += [sub for c in list(commands) for sub in getattr(c, "commands", {}).values()]
    slow = [
        f"{c.name} {p.name}"
        for c in commands
        for p in c.params
        if hasattr(p, "type_descriptor")
        and coercion.converter(p.type_descriptor.annotation, p.type_descriptor.parameter_info) is None
    ]
    assert slow == []


def test_another_typers_internals_leave_its_own_conversion(monkeypatch):
    """A Typer whose RuntimeParam is not the dataclass coercion.py was written against keeps its
    own conversion: kface still starts, nothing is patched."""
    from typer import _coercion

    typer_build = typer.core.build_runtime_param.typer_build

    class Other:  # no dataclass fields, no _coerce_value
        pass

    monkeypatch.setattr(typer.core, "build_runtime_param", typer_build)
    monkeypatch.setattr(_coercion, "RuntimeParam", Other)
    assert coercion.install() is False
    assert typer.core.build_runtime_param is typer_build
