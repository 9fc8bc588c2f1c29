"""Option values converted without pydantic, where the conversion is not in doubt.

Typer 0.25+ converts every command-line value through a pydantic ``TypeAdapter`` built per option:
importing pydantic and building the adapters of one command cost about 70 ms of CPU, a tenth of a
whole `kface identify` of one photo (docs/performance.md). The option types kface declares (str,
bool, int and float with bounds, Path, a choice, a list of these) are converted here directly for
the values whose conversion is certain: a string, a bool, a canonical decimal number within its
bounds, a path, a choice spelled as listed. Anything else (a number out of bounds, ``1_000``, a
misspelt choice, a ``--parser`` option) goes to Typer's own adapter, built only then, so every
error message and every unusual spelling is Typer's. ``tests/test_cli_coercion.py`` checks both
give the same value, of the same type, for each kind.

:func:`install` replaces ``typer.core.build_runtime_param`` (a Typer internal, as the flag-type
patch in :mod:`kface_cli.cli.common`); a Typer without it (older: Click converts; or changed) is
left as it is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

#: A converter's answer when the value is not certain to convert the same way as Typer's adapter.
SLOW = object()
#: Canonical decimal integers and reals: what Python's int()/float() and pydantic read alike
#: (no "_", "+", spaces, leading zeros, "inf" or "nan"); 18 digits at most.
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?(?:[eE][-+]?[0-9]{1,3})?")

Converter = Callable[[Any, Any, Any], Any]  # (value, ctx, param) -> converted value or SLOW


def converter(annotation: Any, info: Any) -> Converter | None:
    """The direct converter of an option declared as ``annotation`` with Typer's parameter
    ``info``, or None where Typer's adapter must convert every value."""
    if info.parser is not None:
        return None
    if get_origin(annotation) is list:
        args = get_args(annotation)
        item = converter(args[0], info) if len(args) == 1 else None
        return None if item is None else _many(item)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _choice(annotation, info.case_sensitive)
    if annotation is bool or annotation is str:
        return lambda value, ctx, param: value if type(value) is annotation else SLOW
    if annotation is int or annotation is float:
        return None if info.clamp else _number(annotation, info.min, info.max)
    if annotation is Path and info.path_type is None:
        return _path(info)
    return None


def _many(item: Converter) -> Converter:
    def convert(value: Any, ctx: Any, param: Any) -> Any:
        if not isinstance(value, list | tuple):
            return SLOW
        out = [item(v, ctx, param) for v in value]
        return SLOW if any(v is SLOW for v in out) else out

    return convert


def _choice(enum: type[Enum], case_sensitive: bool) -> Converter:
    from typer._param_types import coerce_cli_choice

    choices = list(enum)

    def convert(value: Any, ctx: Any, param: Any) -> Any:
        try:
            return coerce_cli_choice(value, choices=choices, case_sensitive=case_sensitive, ctx=ctx)
        except ValueError:  # not one of the choices: Typer's adapter words the error
            return SLOW

    return convert


def _number(kind: type, low: float | None, high: float | None) -> Converter:
    pattern = _INT if kind is int else _FLOAT

    def convert(value: Any, ctx: Any, param: Any) -> Any:
        if type(value) is str and pattern.fullmatch(value):
            number = kind(value)
        elif type(value) is kind or (kind is float and type(value) is int):
            number = kind(value)
        else:
            return SLOW
        if (low is not None and not number >= low) or (high is not None and not number <= high):
            return SLOW  # out of bounds: Typer's adapter says so
        return number

    return convert


def _path(info: Any) -> Converter:
    from typer._param_types import coerce_cli_path

    def convert(value: Any, ctx: Any, param: Any) -> Any:
        if type(value) is str:
            value = Path(value)  # what pydantic's Path makes of any string
        elif not isinstance(value, Path):
            return SLOW
        try:
            return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)
        except ValueError:  # e.g. a NUL in the path: pydantic turns it into Typer's error
            return SLOW

    return convert


def install() -> bool:
    """Convert option values with :func:`converter` where it can (True when installed)."""
    try:
        import typer.core
        from typer import _coercion
    except ImportError:  # pragma: no cover - Typer's layout changed
        return False
    typer_build = getattr(typer.core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if typer_build is None or base is None or getattr(typer_build, "_kface", False):
        return typer_build is not None and getattr(typer_build, "_kface", False)

    try:
        direct = _direct_param_class(base, typer_build)
    except Exception:  # noqa: BLE001 - another Typer's internals: its own conversion, unchanged
        return False

    def build_runtime_param(descriptor: Any) -> Any:
        convert = None
        if getattr(descriptor, "file_annotation", None) is None:
            convert = converter(descriptor.annotation, descriptor.parameter_info)
        if convert is None:
            return typer_build(descriptor)
        return direct(
            parameter_info=descriptor.parameter_info,
            annotation=descriptor.annotation,
            convert=convert,
            descriptor=descriptor,
        )

    build_runtime_param._kface = True  # type: ignore[attr-defined]
    build_runtime_param.typer_build = typer_build  # type: ignore[attr-defined]
    typer.core.build_runtime_param = build_runtime_param
    return True


def _direct_param_class(base: type, typer_build: Callable[[Any], Any]) -> type:
    """Typer's ``RuntimeParam`` with :func:`converter`'s conversion first (raises where that
    class is not the dataclass this module was written against)."""

    @dataclass(frozen=True)
    class DirectParam(base):  # type: ignore[misc, valid-type]
        """One option's conversion: :func:`converter`'s, else Typer's adapter (built on first use)."""

        convert: Converter
        descriptor: Any
        typer_param: list = field(default_factory=list)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            out = self.convert(value, ctx, param)
            if out is SLOW:
                if not self.typer_param:
                    self.typer_param.append(typer_build(self.descriptor))
                out = self.typer_param[0]._coerce_value(value, param=param, ctx=ctx)
            return out

    if not callable(getattr(base, "_coerce_value", None)):  # the method Typer converts with
        raise TypeError("Typer's RuntimeParam converts with another method")
    for name in ("parameter_info", "annotation"):  # what build_runtime_param above passes
        if name not in {f.name for f in dataclasses.fields(DirectParam)}:
            raise TypeError(f"Typer's RuntimeParam has no field {name!r}")
    return DirectParam
