"""Everything the user sees: messages, progress bars, tables and ``--json`` output.

Results go to stdout (a rich table; ``--format json|csv|tsv`` or ``--json`` for machines); progress
bars, warnings and errors go to stderr, so ``kface ... --json | jq`` always receives clean JSON.
Domain modules report progress through :func:`progress` and warnings through :func:`warn`; they
never print results themselves.

Tables never lose data: text wraps between words, a path only after a ``/`` (a file name is never
cut), a number is never split; a table that cannot fit even so is printed wider than the console.
When stdout is not a terminal (a pipe, a file) tables are laid out :data:`PIPE_WIDTH` columns wide
unless ``$COLUMNS`` says otherwise. ``--format csv|tsv`` prints data, not the table: a header row
and one row per record (a table's ``data``, numbers in their own columns), nothing before the
header, one table per command. Every JSON result is an object carrying ``"schema": SCHEMA_VERSION``
(the schema is documented in docs/json.md).

Progress bars are rich on the command line; :func:`use_tqdm` switches them to ``tqdm.auto`` (which
renders in Jupyter), as the Python API (:mod:`kface_cli.api`) does.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from kface_cli.choices import OutputFormat

#: Version of the JSON every ``--json`` result follows (docs/json.md). Bump it when a key is
#: renamed or removed or changes type; adding a key keeps the version. 2: a list of faces is always
#: ``faces``; face counts are ``face_count``; ``embed`` and ``verify`` report the faces they used.
SCHEMA_VERSION = 2
#: Result formats: ``--format table|json|csv|tsv`` (``--json`` is short for ``--format json``).
FORMATS = OutputFormat.values()
#: Table width when stdout is not a terminal and ``$COLUMNS`` is unset (rich would assume 80).
PIPE_WIDTH = 200


def _out_width() -> int | None:
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return None  # rich reads $COLUMNS or the terminal's size
    return PIPE_WIDTH


out = Console(soft_wrap=True, width=_out_width())  # results
err = Console(stderr=True, soft_wrap=True)  # progress, warnings, errors


@dataclass
class OutputMode:
    json: bool = False
    quiet: bool = False
    debug: bool = False
    format: str = "table"  # table, csv or tsv when json is off
    tqdm: bool = False  # progress bars through tqdm.auto (the Python API) instead of rich
    data_written: bool = False  # --format csv|tsv: the command's data table is out (one per command)


MODE = OutputMode()


def set_mode(
    *,
    json_output: bool | None = None,
    quiet: bool | None = None,
    debug: bool | None = None,
    output_format: str | None = None,
) -> None:
    """Set the output mode; ``output_format="json"`` is the same as ``json_output=True``."""
    if output_format is not None:
        output_format = OutputFormat.parse(output_format, "--format").value
        MODE.json = output_format == OutputFormat.JSON
        MODE.format = "table" if MODE.json else output_format
    if json_output is not None:
        MODE.json = json_output
    if quiet is not None:
        MODE.quiet = quiet
    if debug is not None:
        MODE.debug = debug


@contextmanager
def use_tqdm(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`progress` draws ``tqdm.auto`` bars (notebooks) instead of rich ones."""
    saved = MODE.tqdm
    MODE.tqdm = enabled
    try:
        yield
    finally:
        MODE.tqdm = saved


#: Environment variables that quiet the C libraries' own log lines (FFmpeg inside OpenCV, OpenCV,
#: TensorFlow Lite and glog inside MediaPipe; ONNX Runtime sessions are made with errors-only logging);
#: set unless the user set them or --debug.
QUIET_LIBRARY_ENV = {
    "OPENCV_FFMPEG_LOGLEVEL": "-8",  # AV_LOG_QUIET
    "OPENCV_LOG_LEVEL": "ERROR",
    "OPENCV_VIDEOIO_DEBUG": "0",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GLOG_minloglevel": "2",
}


@contextmanager
def quiet_third_party(enabled: bool = True) -> Iterator[None]:
    """Within the block, third-party warnings (torch, numpy, matplotlib, h5py, ONNX Runtime,
    FFmpeg) are not printed: kface says what matters in its own words. ``--debug`` shows them.

    This is the one place that decides: Python warnings are ignored inside the block (restored
    after it), so are "Exception ignored in ..." reports of objects that fail while being freed
    (h5py's, after a full disk: the real error is reported as one line), and the C libraries' log
    levels are set through their environment variables.
    """
    if not enabled:
        yield
        return
    for key, value in QUIET_LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    saved_hook = sys.unraisablehook
    sys.unraisablehook = _ignore_unraisable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.unraisablehook = saved_hook


def _ignore_unraisable(_unraisable: Any) -> None:
    """An exception raised while an object was freed: not the command's outcome, not shown."""


def close_stdout() -> None:
    """Flush stdout at exit; if it cannot take the output (a full disk, a closed pipe), point it
    at /dev/null so Python does not print "Exception ignored ..." while exiting."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass


def safe(text: Any) -> str:
    """``text`` (a file name, a person's name, anything a user named) escaped for Rich markup,
    with characters that are not valid text (non-UTF-8 bytes kept as surrogates) shown as U+FFFD.

    Every message, title and table cell that includes user data goes through this, so
    ``[draft] photo.jpg`` prints as itself and a path holding ``[/`` is not a markup error.
    """
    from rich.markup import escape

    return escape(printable(str(text)))


def printable(text: str) -> str:
    """``text`` with lone surrogates (the undecodable bytes of a file name, kept by
    ``surrogateescape``) shown as U+FFFD, so it can always be printed."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "replace").decode("utf-8")


def plain(value: Any) -> Text:
    """``value`` as a rich :class:`~rich.text.Text` that is never read as markup (a Text stays as is)."""
    return value if isinstance(value, Text) else Text(printable(str(value)))


def display_path(path: str | Path) -> str:
    """``path`` relative to the current folder when it lies inside it, else as given (for tables)."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)
    return str(p)


#: Held while a native library's start-up chatter is silenced by pointing file descriptor 2 at
#: /dev/null (:func:`kface_cli.face.graphs.quiet_native_stderr`): that is process-wide, so kface's
#: own stderr lines from other threads wait for it instead of being lost.
STDERR_LOCK = threading.RLock()


def _err_line(renderable: Any) -> None:
    with STDERR_LOCK:
        err.print(renderable, highlight=False)


def info(message: str | Text) -> None:
    """A status line on stderr (hidden with --quiet or --json); the message is text, never markup."""
    if not (MODE.quiet or MODE.json):
        _err_line(plain(message))


def warn(message: str | Text) -> None:
    """A warning on stderr (shown even with --json: it never pollutes stdout); text, never markup."""
    if not MODE.quiet:
        _err_line(Text.assemble(("warning:", "yellow"), " ", plain(message)))


def error(message: str | Text) -> None:
    """The one red line of a failed command; the message is text, never markup."""
    _err_line(Text.assemble(("error:", "bold red"), " ", plain(message)))


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


#: A lone surrogate: a byte of a non-UTF-8 file name kept by ``surrogateescape``.
_SURROGATE = re.compile("[\ud800-\udfff]")


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (dict, list, str, int, float, bool, None): what every ``to_json()`` returns."""
    return _jsonable(obj)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text; a non-UTF-8 name's undecodable bytes are written as ``\\udcXX`` escapes (valid
    JSON that Python's ``json.loads`` reads back as the same name), never as raw bytes."""
    text = json.dumps(_jsonable(obj), ensure_ascii=False, indent=indent)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_result(obj: Any) -> dict[str, Any]:
    """``obj`` as the JSON object every command prints: ``{"schema": SCHEMA_VERSION, ...}``.

    A dataclass or dict keeps its keys; anything else (a list) goes under ``"results"``.
    """
    data = _jsonable(obj)
    if not isinstance(data, dict):
        data = {"results": data}
    return {"schema": SCHEMA_VERSION, **{k: v for k, v in data.items() if k != "schema"}}


def print_json(obj: Any) -> None:
    """Machine-readable result on stdout (see :func:`json_result`)."""
    sys.stdout.write(to_json(json_result(obj)) + "\n")
    sys.stdout.flush()


#: Words longer than this may fold across lines in a table; shorter ones (file names, IDs, numbers,
#: header words) are never split.
UNBROKEN_WORD = 40


class DataTable(Table):
    """A rich table that remembers its data (for ``--format csv|tsv``) and shares space well.

    When the table is wider than the console, every column starts at its minimum (its longest
    unbroken word, or a path's longest part) and the space left is shared in proportion to what
    each column would need to be whole; rich's own fallback shrinks all columns evenly, which
    leaves short-worded columns wide and makes the table overflow sooner.
    """

    data_columns: list[str]
    data_rows: list[list[Any]]
    headers: list[str]
    record_cells: list[list[Any]]

    def narrowest(self, console: Console) -> int:
        """The narrowest this table can be without cutting a word or a file name."""
        options = console.options.update_width(10_000)
        return sum(self._measure_column(console, options, c).minimum for c in self.columns) + self._extra_width

    def stacked(self) -> Table:
        """The same rows as blocks of ``column  value`` lines, one block per row (for narrow consoles)."""
        blocks = DataTable(title=self.title, title_justify="left", show_header=False, show_lines=False)
        header_words = [w for h in self.headers for w in h.split()]
        blocks.add_column(style="bold", min_width=max((len(w) for w in header_words), default=1))
        blocks.add_column(overflow="fold")
        for cells in self.record_cells:
            for k, (header, cell) in enumerate(zip(self.headers, cells)):
                blocks.add_row(Text(header), cell, end_section=k == len(cells) - 1)
        return blocks

    def _calculate_column_widths(self, console: Console, options: Any) -> list[int]:
        widths = super()._calculate_column_widths(console, options)
        ranges = [self._measure_column(console, options, c) for c in self.columns]
        if sum(widths) <= options.max_width and all(w >= r.minimum for w, r in zip(widths, ranges)):
            return widths
        lows = [r.minimum for r in ranges]
        spare = options.max_width - sum(lows)
        wants = [max(0, r.maximum - r.minimum) for r in ranges]
        if spare <= 0 or not sum(wants):
            return lows
        return [low + want * spare // sum(wants) for low, want in zip(lows, wants)]


class PathCell:
    """A table cell holding a path: it wraps only after a ``/`` or at a space, never inside a name."""

    def __init__(self, text: str):
        self.text = text
        self.parts = re.findall(r"[^/ ]*(?:/+| +|$)", text)[:-1] or [text]  # each part keeps its separator

    def __str__(self) -> str:
        return self.text

    def __rich_measure__(self, console: Console, options: Any) -> Any:
        from rich.measure import Measurement

        return Measurement(max(len(p.rstrip(" ")) for p in self.parts), len(self.text))

    def __rich_console__(self, console: Console, options: Any) -> Any:
        width = max(1, options.max_width)
        line = ""
        for part in self.parts:
            if line and len(line) + len(part.rstrip(" ")) > width:
                yield Text(line.rstrip(" "), overflow="fold")
                line = ""
            line += part
        yield Text(line.rstrip(" "), overflow="fold")


def _is_path_text(value: Any, cell: str) -> bool:
    if isinstance(value, Path):
        return True
    return isinstance(value, str) and "/" in cell and "\n" not in cell


def table(
    title: str | Text | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    justify_numbers: bool = True,
    data: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None,
) -> DataTable:
    """A results table that loses nothing at any width.

    Cells wrap at spaces only (a word up to :data:`UNBROKEN_WORD` characters, e.g. a number, is
    never split), paths after a ``/`` (a file name is never split), longer words fold, nothing is
    cut with "…"; numeric columns align right. When even so the table cannot fit, it is shown as
    one block of ``column value`` lines per row, and printed wider than the console only when a
    single file name is wider than it.

    The title, headers and cells are text, never markup: a file named ``[draft] photo.jpg`` shows
    as itself. A cell that should be styled is a :class:`~rich.text.Text` (``Text("no face", "dim")``).

    ``data``: what ``--format csv|tsv`` writes, ``(columns, rows)`` of plain values (one record
    per row, numbers in their own columns); by default the table's own cells, as text.
    """
    t = DataTable(title=plain(title) if title is not None else None, title_justify="left", header_style="bold")
    cells = [[_fmt(v) for v in r] for r in rows]
    for i, c in enumerate(columns):
        values = [r[i] for r in rows if i < len(r) and r[i] is not None]
        numeric = (
            justify_numbers
            and bool(values)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        )
        texts = [str(c)] + [r[i].plain for r in cells if i < len(r)]
        longest = max((len(w) for p in texts for w in p.split() if len(w) <= UNBROKEN_WORD), default=0)
        t.add_column(
            plain(c),
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=numeric,
            min_width=longest or None,
        )
    t.headers = [str(c) for c in columns]
    t.record_cells = []
    for raw, r in zip(rows, cells):
        shown = [PathCell(cell.plain) if _is_path_text(v, cell.plain) else cell for v, cell in zip(raw, r)]
        t.record_cells.append(shown)
        t.add_row(*shown)
    if data is None:
        t.data_columns = [str(c) for c in columns]
        t.data_rows = [[v.plain for v in r] for r in cells]
    else:
        t.data_columns = list(data[0])
        t.data_rows = [list(r) for r in data[1]]
    return t


def _csv_value(v: Any) -> str:
    """A data cell: numbers as numbers (full precision), None and NaN empty, paths as given."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v.plain if isinstance(v, Text) else str(v)


def _fmt(v: Any) -> Text:
    if isinstance(v, Text):
        return v
    if v is None:
        return Text("-")
    if isinstance(v, float):
        if math.isnan(v):
            return Text("-")
        return Text(f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}")
    if isinstance(v, Path) or (isinstance(v, str) and os.path.isabs(v) and "\n" not in v):
        return plain(display_path(v))  # a path: relative to the current folder when inside it
    return plain(v)


def show(renderable: Any, *, secondary: bool = False) -> None:
    """Print a result (a table) unless --json is on: rich, or its data with ``--format csv|tsv``.

    CSV/TSV is data: a header row first and nothing before it, then one row per record. A command
    writes one table there: a ``secondary`` table (a breakdown shown under the main one) and any
    later table are left out with a note on stderr (``--json`` has everything); a line of text
    goes to stderr.
    """
    if MODE.json:
        return
    if MODE.format in (OutputFormat.CSV, OutputFormat.TSV):
        if not isinstance(renderable, DataTable):  # a line of text is not a table row: stderr
            info(renderable if isinstance(renderable, (str, Text)) else str(renderable))
            return
        if secondary or MODE.data_written:
            title = renderable.title
            title = title.plain if isinstance(title, Text) else str(title or "a table")
            info(f"({title}: not in --format {MODE.format}, which holds one table; --json has everything)")
            return
        write_data(sys.stdout, renderable.data_columns, renderable.data_rows, MODE.format)
        sys.stdout.flush()
        MODE.data_written = True
        return
    if isinstance(renderable, DataTable) and getattr(renderable, "record_cells", None):
        if renderable.narrowest(out) > out.width:
            renderable = renderable.stacked()  # too narrow for the columns: one block per row
    out.print(plain(renderable) if isinstance(renderable, str) else renderable)


def write_data(stream: Any, columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "csv") -> None:
    """Write ``columns`` and ``rows`` as CSV (``fmt="csv"``) or TSV: the one writer of every data file."""
    writer = csv.writer(stream, delimiter="," if fmt == OutputFormat.CSV else "\t", lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_value(v) for v in r] for r in rows)


def data_text(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "csv") -> str:
    """:func:`write_data` into a string (for ``--csv FILE``)."""
    buf = io.StringIO()
    write_data(buf, columns, rows, fmt)
    return buf.getvalue()


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
            kwargs["description"] = safe(description)
        if "total" in fields:
            kwargs["total"] = fields.pop("total")
        if fields:
            kwargs["info"] = "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
            )
        self._progress.update(self._task, **kwargs)


class _TqdmBar:
    """The same interface as :class:`_Bar`, drawn by ``tqdm.auto`` (a widget in notebooks)."""

    def __init__(self, bar: Any):
        self._bar = bar

    def advance(self, n: float = 1) -> None:
        self._bar.update(n)

    def update(self, **fields: Any) -> None:
        description = fields.pop("description", None)
        if description is not None:
            self._bar.set_description(description)
        if "total" in fields:
            self._bar.total = fields.pop("total")
            self._bar.refresh()
        if fields:
            self._bar.set_postfix(fields)


def _progress_enabled() -> bool:
    if MODE.quiet or MODE.json:
        return False
    return os.environ.get("KFACE_NO_PROGRESS", "") in ("", "0")


@contextmanager
def progress(description: str, total: float | None) -> Iterator[_Bar]:
    """A progress bar on stderr: ``with progress("Cropping", n) as bar: bar.advance()``.

    Rich on the command line (it keeps every column readable at 80 columns: the bar shrinks and
    the extra fields fold); ``tqdm.auto`` inside :func:`use_tqdm`.
    """
    if not _progress_enabled():
        yield _Bar(None, None)
        return
    if MODE.tqdm:
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=description, file=sys.stderr, dynamic_ncols=True) as t:
            yield _TqdmBar(t)  # type: ignore[misc]
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

    def fixed() -> Column:
        return Column(no_wrap=True)

    columns = [
        TextColumn("[bold]{task.description}", table_column=fixed()),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5)),
        MofNCompleteColumn(table_column=fixed()),
        TaskProgressColumn(table_column=fixed()),
        TimeElapsedColumn(table_column=fixed()),
        TextColumn("eta", table_column=fixed()),
        TimeRemainingColumn(table_column=fixed()),
        TextColumn("{task.fields[info]}", markup=False, table_column=Column(overflow="fold", ratio=2)),
    ]
    with Progress(*columns, console=err, transient=False, expand=True) as p:
        task = p.add_task(safe(description), total=total, info="")
        yield _Bar(p, task)
