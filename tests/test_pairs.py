"""The pairs CSV (``val_pairs.csv``): round trip with codes, relative paths, foreign CSVs, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kface_cli.errors import InputError
from kface_cli.formats.pairs import PAIR_COLUMNS, Pair, read_pairs_csv, write_pairs_csv


def test_round_trip_keeps_paths_flags_and_codes(tmp_path):
    codes = {"id": "19062531", "acc": "S001", "light": "L1", "expr": "E01", "cam": "C7"}
    pairs = [
        Pair(tmp_path / "val" / "a" / "1.jpg", tmp_path / "val" / "a" / "2.jpg", True, codes, {**codes, "cam": "C8"}),
        Pair(tmp_path / "val" / "a" / "1.jpg", tmp_path / "val" / "b" / "1.jpg", False),
    ]
    csv_path = tmp_path / "val_pairs.csv"
    assert write_pairs_csv(csv_path, pairs) == 2
    back = read_pairs_csv(csv_path)
    assert back == pairs  # paths and same flags
    assert back[0].codes1 == codes and back[0].codes2["cam"] == "C8"
    assert back[1].codes1 == {} and back[1].codes2 == {}  # unknown codes stay empty, not ""
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(PAIR_COLUMNS)
    assert lines[1].startswith("val/a/1.jpg,val/a/2.jpg,1,19062531,")  # relative to the CSV's folder


def test_the_folder_can_move(tmp_path):
    """Paths are stored relative to the CSV, so a moved split still reads (kface split swaps folders in)."""
    old = tmp_path / "old"
    write_pairs_csv(old / "pairs.csv", [Pair(old / "x" / "1.jpg", old / "y" / "1.jpg", False)])
    new = tmp_path / "new"
    old.rename(new)
    (pair,) = read_pairs_csv(new / "pairs.csv")
    assert (pair.path1, pair.path2) == (new / "x" / "1.jpg", new / "y" / "1.jpg")


def test_paths_outside_the_folder_are_written_absolute(tmp_path):
    outside = (tmp_path / "elsewhere" / "1.jpg").resolve()
    write_pairs_csv(tmp_path / "csv" / "pairs.csv", [Pair(outside, outside, True)])
    (pair,) = read_pairs_csv(tmp_path / "csv" / "pairs.csv")
    assert pair.path1 == outside and pair.path1.is_absolute()


def test_a_three_column_csv_reads(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("path1,path2,same\n/data/a.jpg,b.jpg,true\nc.jpg,d.jpg,0\n", encoding="utf-8")
    first, second = read_pairs_csv(f)
    assert first.path1 == Path("/data/a.jpg") and first.path2 == tmp_path / "b.jpg" and first.same
    assert not second.same and second.codes1 == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,label\nx.jpg,y.jpg,1\n", "missing column"),
        ("path1,path2,same\nx.jpg,y.jpg,yes\n", ":2: 'same' must be 0 or 1"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, text, message):
    f = tmp_path / "bad.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_pairs_csv(f)
    with pytest.raises(InputError, match="pairs file not found"):
        read_pairs_csv(tmp_path / "missing.csv")
