"""Everything the user sees: messages, progress bars, tables and ``--json`` output.

Results go to stdout (a rich table, or JSON with ``--json``); progress bars, warnings and errors go
to stderr, so ``kface ... --json | jq`` always receives clean JSON. Domain modules report progress
through :func:`progress` and warnings through :func:`warn`; they never print results themselves.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)  # results
err = Console(stderr=True, soft_wrap=True)  # progress, warnings, errors


@dataclass
class OutputMode:
    json: bool = False
    quiet: bool = False
    debug: bool = False


MODE = OutputMode()


def set_mode(*, json_output: bool | None = None, quiet: bool | None = None, debug: bool | None = None) -> None:
    if json_output is not None:
        MODE.json = json_output
    if quiet is not None:
        MODE.quiet = quiet
    if debug is not None:
        MODE.debug = debug


def info(message: str) -> None:
    """A status line on stderr (hidden with --quiet or --json)."""
    if not (MODE.quiet or MODE.json):
        err.print(message, highlight=False)


def warn(message: str) -> None:
    """A warning on stderr (shown even with --json: it never pollutes stdout)."""
    if not MODE.quiet:
        err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and dataclasses to plain JSON types (NaN -> null)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return _jsonable(obj.tolist())
    return obj


def to_json(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(_jsonable(obj), ensure_ascii=False, indent=indent)


def print_json(obj: Any) -> None:
    """Machine-readable result on stdout."""
    sys.stdout.write(to_json(obj) + "\n")
    sys.stdout.flush()


def table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, justify_numbers: bool = True
) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    first = rows[0] if rows else []
    for i, c in enumerate(columns):
        numeric = (
            justify_numbers and i < len(first) and isinstance(first[i], (int, float)) and not isinstance(first[i], bool)
        )
        t.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    return t


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def show(renderable: Any) -> None:
    """Print a rich renderable (table, panel) as a result, unless --json is on."""
    if not MODE.json:
        out.print(renderable)


class _Bar:
    def __init__(self, progress: Any, task: Any):
        self._progress = progress
        self._task = task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **fields: Any) -> None:
        """Update extra fields shown after the bar, e.g. ``loss=0.12``; ``description=`` too."""
        if self._progress is None:
            return
        description = fields.pop("description", None)
        kwargs: dict[str, Any] = {}
        if description is not None:
            kwargs["description"] = description
        if "total" in fields:
            kwargs["total"] = fields.pop("total")
        if fields:
            kwargs["info"] = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._task, **kwargs)


def _progress_enabled() -> bool:
    if MODE.quiet or MODE.json:
        return False
    return os.environ.get("KFACE_NO_PROGRESS", "") in ("", "0")


@contextmanager
def progress(description: str, total: float | None) -> Iterator[_Bar]:
    """A rich progress bar on stderr: ``with progress("Cropping", n) as bar: bar.advance()``."""
    if not _progress_enabled():
        yield _Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=err, transient=False) as p:
        task = p.add_task(description, total=total, info="")
        yield _Bar(p, task)
