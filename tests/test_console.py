"""What the user sees: tables that lose nothing at 80 columns, progress bars, --format csv/tsv, the JSON envelope."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from kface_cli import console
from kface_cli.errors import InputError

NAMES = [f"probes/1907264{i}_L3_E02_C8.jpg" for i in range(3)]


@pytest.fixture
def screen(monkeypatch):
    """An 80-column results console whose output the test reads."""
    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=80, soft_wrap=True))
    return buf


def _identify_like_rows():
    return [
        [name, 1, "116, 82, 117, 117", "19072641", 0.3468, "19073026:1.326, 19080224:1.501, 19072642:1.440"]
        for name in NAMES
    ]


def test_table_at_80_columns_keeps_file_names_and_numbers(screen):
    columns = ["image", "face", "box (x, y, w, h)", "name", "distance", "candidates (name:distance)"]
    console.show(console.table("Faces", columns, _identify_like_rows()))
    conditions = ["condition", "description", "pairs", "acc@thr", "10-fold", "AUC", "EER", "probes", "rank-1"]
    row = ["light L1", "1000 lux, all lamps", 6308, "92.56%", "92.53%", 0.9746, "7.62%", 112, "94.64%"]
    console.show(console.table("By condition", conditions, [row]))
    text = screen.getvalue()
    assert "…" not in text
    for word in [*NAMES, "19073026:1.326,", "0.3468", "6308", "92.56%", "92.53%", "0.9746", "7.62%", "94.64%"]:
        assert word in text, word  # whole, on one line


def test_table_fits_when_its_words_do(screen):
    """Rich alone would shrink every column evenly and overflow; the space is shared by need instead."""
    rows = [[Path(r[0]).name, *r[1:]] for r in _identify_like_rows()]
    console.show(console.table("Faces", ["image", "face", "box (x, y, w, h)", "name", "distance", "candidates"], rows))
    lines = screen.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert all(Path(n).name in screen.getvalue() for n in NAMES)


def test_paths_are_shown_relative_to_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert console.display_path(tmp_path / "probes" / "a.jpg") == str(Path("probes") / "a.jpg")
    assert console.display_path("/elsewhere/a.jpg") == "/elsewhere/a.jpg"
    assert console._fmt(tmp_path / "x.jpg") == "x.jpg"
    assert console._fmt(str(tmp_path / "split" / "train")) == str(Path("split") / "train")


def test_progress_bar_at_80_columns_is_readable(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=buf, width=80, force_terminal=True, soft_wrap=True))
    with console.progress("Epoch 1/8", total=27) as bar:
        for _ in range(27):
            bar.advance()
            bar.update(loss=13.61234, lr=0.1, samples_s=76.9)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # without colours and cursor moves
    assert "…" not in text
    assert "27/27" in text and "eta 0:00:00" in text and "samples_s 76.9" in text and "76.9000" not in text


@pytest.mark.parametrize(("fmt", "sep"), [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv(capsys, fmt, sep):
    console.set_mode(output_format=fmt)
    console.show(console.table("Faces", ["image", "name", "distance"], [["a b.jpg", "[yellow]unknown[/yellow]", 0.5]]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# Faces" and lines[1] == sep.join(["image", "name", "distance"])
    assert lines[2] == sep.join(["a b.jpg", "unknown", "0.5000"])  # markup stripped, every value whole
    console.show("Report: reports/demo")
    captured = capsys.readouterr()
    assert captured.out == "" and "Report: reports/demo" in captured.err  # text is not a table row


def test_json_envelope_and_formats(capsys):
    console.print_json([{"a": Path("x")}])
    assert json.loads(capsys.readouterr().out) == {"schema": console.SCHEMA_VERSION, "results": [{"a": "x"}]}
    console.print_json({"b": float("nan")})
    assert json.loads(capsys.readouterr().out) == {"schema": console.SCHEMA_VERSION, "b": None}
    console.set_mode(output_format="json")
    assert console.MODE.json
    with pytest.raises(InputError, match="unknown --format"):
        console.set_mode(output_format="xml")


def test_tqdm_progress(capsys):
    with console.use_tqdm():
        with console.progress("Working", total=3) as bar:
            for _ in range(3):
                bar.advance()
            bar.update(loss=0.5)
    assert not console.MODE.tqdm
    err = capsys.readouterr().err
    assert "Working" in err and "3/3" in err and "loss=0.5" in err
