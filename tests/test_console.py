"""What the user sees: results on stdout, messages on stderr, --quiet/--json, JSON conversion, tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kface_cli import console


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
    assert json.loads(out) == {"ok": True}
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
    cells = [list(c.cells) for c in t.columns]
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
    assert "Cropping" in err and "4/4" in err and "loss 0.2500" in err
