"""What the user sees: results on stdout, messages on stderr, --quiet/--json, JSON conversion, tables that lose
nothing at 80 columns, progress bars, --format csv/tsv, the JSON envelope."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.text import Text

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
    assert console._fmt(tmp_path / "x.jpg").plain == "x.jpg"
    assert console._fmt(str(tmp_path / "split" / "train")).plain == str(Path("split") / "train")


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
    styled = Text("unknown", "yellow")
    console.show(
        console.table("Faces", ["image", "name", "distance"], [["a b.jpg", styled, 0.5], ["[x].jpg", "[b]", 1]])
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == sep.join(["image", "name", "distance"])  # the header first, nothing before it
    assert lines[1] == sep.join(["a b.jpg", "unknown", "0.5000"])  # style dropped, every value whole
    assert lines[2] == sep.join(["[x].jpg", "[b]", "1"])  # a user's text is never read as markup
    console.show("Report: reports/demo")
    captured = capsys.readouterr()
    assert captured.out == "" and "Report: reports/demo" in captured.err  # text is not a table row
    console.show(console.table("Second", ["x"], [[1]]))  # one table per command: the data stays data
    captured = capsys.readouterr()
    assert captured.out == "" and "Second: not in --format" in captured.err


def test_csv_writes_the_tables_data_not_its_cells(capsys):
    console.set_mode(output_format="csv")
    data = (["image", "x", "y", "name"], [['a, "b".jpg', 1.5, 2, 'Lee, "Jr"'], ["c.jpg", None, float("nan"), True]])
    console.show(console.table("Faces", ["image", "box"], [["a.jpg", "1, 2"]], data=data))
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == {"image": 'a, "b".jpg', "x": "1.5", "y": "2", "name": 'Lee, "Jr"'}
    assert rows[1] == {"image": "c.jpg", "x": "", "y": "", "name": "true"}
    console.set_mode(output_format="tsv")
    console.MODE.data_written = False
    console.show(console.table("Gallery", ["fact"], [["a"]]), secondary=True)  # a breakdown: not data
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("width", [80, 60])
def test_narrow_tables_never_cut_a_file_name(monkeypatch, width):
    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=width, soft_wrap=True))
    path = "some/deeper/folder/unmistakable_photo_name_0042.jpg"
    rows = [[path, k, "451,282,131,131", 0.8056, "490,319  537,331  507,364  485,370  530,381", "mesh"] for k in (1, 2)]
    columns = ["image", "face", "box x,y,w,h", "score", "5 points (eyes, nose, mouth corners)", "points from"]
    console.show(console.table("Faces", columns, rows))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width  # fits: one block of lines per face when narrow
    text = buf.getvalue()
    assert text.count("unmistakable_photo_name_0042.jpg") == 2 and text.count("some/deeper/folder/") == 2
    assert "451,282,131,131" in text


def test_path_cells_wrap_after_slashes_only():
    cell = console.PathCell("/very/long/dir/name_0042.jpg")
    assert cell.parts == ["/", "very/", "long/", "dir/", "name_0042.jpg"]
    buf = io.StringIO()
    Console(file=buf, width=16).print(cell)
    assert buf.getvalue().splitlines() == ["/very/long/dir/", "name_0042.jpg"]


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


def test_results_go_to_stdout_and_messages_to_stderr(capsys):
    console.info("status line")
    console.warn("careful")
    console.error("broken")
    console.show(console.table("T", ["a"], [[1]]))
    out, err = capsys.readouterr()
    assert "status line" in err and "warning: careful" in err and "error: broken" in err
    assert "T" in out and "status" not in out and "careful" not in out


def test_json_mode_keeps_stdout_clean_and_still_warns(capsys):
    console.set_mode(json_output=True)
    console.info("hidden")
    console.show(console.table("hidden table", ["a"], [[1]]))
    console.warn("still shown")
    console.print_json({"ok": True})
    out, err = capsys.readouterr()
    assert json.loads(out) == {"schema": console.SCHEMA_VERSION, "ok": True}
    assert "hidden" not in out + err and "still shown" in err


def test_quiet_mode_hides_status_and_warnings_but_not_errors(capsys):
    console.set_mode(quiet=True)
    console.info("status")
    console.warn("warning")
    console.error("error")
    _, err = capsys.readouterr()
    assert "status" not in err and "warning" not in err and "error" in err


@dataclass
class _Result:
    path: Path
    score: float
    values: np.ndarray


def test_json_conversion_of_numpy_paths_dataclasses_and_nan():
    data = {
        "result": _Result(Path("/a/b.jpg"), float("nan"), np.array([1.5, 2.0], np.float32)),
        "count": np.int64(3),
        "inf": float("inf"),
        "names": ("김철수", "Bob"),
        1: {2},
    }
    back = json.loads(console.to_json(data))
    assert back == {
        "result": {"path": "/a/b.jpg", "score": None, "values": [1.5, 2.0]},
        "count": 3,
        "inf": None,
        "names": ["김철수", "Bob"],
        "1": [2],
    }
    assert "김철수" in console.to_json(data)  # not \\u-escaped


def test_table_right_aligns_numbers_and_formats_values():
    t = console.table("title", ["name", "score", "count"], [["a", 0.123456, 12345.6], ["b", None, float("nan")]])
    assert [c.justify for c in t.columns] == ["left", "right", "right"]
    cells = [[str(v) for v in c.cells] for c in t.columns]
    assert cells == [["a", "b"], ["0.1235", "-"], ["12,346", "-"]]
    flat = console.table(None, ["k", "v"], [["x", 1]], justify_numbers=False)
    assert [c.justify for c in flat.columns] == ["left", "left"]


@pytest.mark.parametrize("mode", ["quiet", "json", "env"])
def test_progress_is_a_no_op_when_disabled(capsys, monkeypatch, mode):
    monkeypatch.setenv("KFACE_NO_PROGRESS", "1" if mode == "env" else "0")
    console.set_mode(quiet=mode == "quiet", json_output=mode == "json")
    with console.progress("Working", total=3) as bar:
        bar.advance()
        bar.update(loss=0.5, description="still working")
    assert capsys.readouterr().err == ""


def test_progress_shows_the_bar_and_fields(capsys, monkeypatch):
    monkeypatch.setenv("KFACE_NO_PROGRESS", "0")
    with console.progress("Cropping", total=4) as bar:
        bar.advance(4)
        bar.update(loss=0.25)
    err = capsys.readouterr().err
    assert "Cropping" in err and "4/4" in err and "loss 0.25" in err


_SILENCE_RACE = """
import threading
from kface_cli import console
from kface_cli.face.graphs import quiet_native_stderr

silenced, release = threading.Event(), threading.Event()

def silence():
    with quiet_native_stderr():
        silenced.set()
        release.wait(10)

holder = threading.Thread(target=silence)
holder.start()
assert silenced.wait(10)
writer = threading.Thread(target=console.warn, args=("rebuilding the search index",))
writer.start()
writer.join(0.3)  # with the lock it waits here; without it, it has written into /dev/null
release.set()
holder.join(10)
writer.join(10)
"""


def test_a_warning_from_another_thread_waits_out_the_native_silence():
    """mediapipe's start-up chatter is silenced by pointing file descriptor 2, the whole
    process's, at /dev/null; a kface warning printed by another thread meanwhile must still reach
    stderr (after the silence), not vanish. (A real process: pytest's capture would not see it.)"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SILENCE_RACE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rebuilding the search index" in done.stderr
