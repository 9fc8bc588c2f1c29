"""`kface split`: identity-disjoint folders, tutorial order, classes, seeded pairs with codes."""

import csv
import os
from itertools import product

import cv2
import numpy as np
import pytest

from kface_cli.errors import InputError
from kface_cli.formats.pairs import read_pairs_csv
from kface_cli.prepare.split import choose_val_ids, split

IDS = [f"190625{d}{s}" for d in (1, 2) for s in range(1, 7)]  # 12 identities
CODES = [
    ("S001", light, expr, cam) for light, expr, cam in product(("L1", "L3"), ("E01", "E02"), ("C7", "C8"))
]  # 8 each


@pytest.fixture
def ws(tmp_path):
    faces = tmp_path / "faces" / "Middle"
    img = np.full((112, 112, 3), 128, np.uint8)
    ok, jpg = cv2.imencode(".jpg", img)
    for ident in IDS:
        (faces / ident).mkdir(parents=True)
        for acc, light, expr, cam in CODES:
            (faces / ident / f"{ident}_{acc}_{light}_{expr}_{cam}.jpg").write_bytes(jpg.tobytes())
    (faces / "manifest.csv").write_text("path\n")
    return tmp_path


def _ids_in(folder):
    return sorted(p.name for p in folder.iterdir())


def test_disjoint_split_with_links_classes_and_pairs(ws):
    r = split(ws, val_ids=3, seed=1)
    train, val = _ids_in(ws / "split" / "train"), _ids_in(ws / "split" / "val")
    assert len(val) == 3 and len(train) == 9 and not set(train) & set(val) and sorted(train + val) == IDS
    assert r.train_images == 9 * 8 and r.val_images == 3 * 8
    some = next((ws / "split" / "train" / train[0]).iterdir())
    assert r.linked and os.stat(some).st_nlink == 2  # hard link to the crop, no copy
    with open(ws / "split" / "classes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["id"] for row in rows] == train and [int(row["label"]) for row in rows] == list(range(9))
    pairs = read_pairs_csv(ws / "split" / "val_pairs.csv")
    same = [p for p in pairs if p.same]
    diff = [p for p in pairs if not p.same]
    assert len(same) == 3 * (8 * 7 // 2) and len(diff) == len(same)
    assert all(p.codes1["id"] == p.codes2["id"] for p in same) and all(p.codes1["id"] != p.codes2["id"] for p in diff)
    assert all(p.path1.is_file() and p.path2.is_file() and p.path1.parent.parent.name == "val" for p in pairs)
    assert len({frozenset((p.path1, p.path2)) for p in diff}) == len(diff)  # no repeats
    assert {p.codes1["light"] for p in pairs} == {"L1", "L3"} and {"acc", "expr", "cam"} <= set(pairs[0].codes1)
    assert {p.same for p in pairs[:20]} == {True, False}  # interleaved


def test_seed_determines_everything(ws, tmp_path):
    a = split(ws, val_ids=3, seed=7)
    text = (ws / "split" / "val_pairs.csv").read_text()
    b = split(ws, val_ids=3, seed=7)
    assert a.val_ids == b.val_ids and (ws / "split" / "val_pairs.csv").read_text() == text
    c = split(ws, val_ids=3, seed=8)
    assert c.val_ids != a.val_ids or (ws / "split" / "val_pairs.csv").read_text() != text
    assert _ids_in(ws / "split" / "val") == list(c.val_ids)  # re-split replaced the old folders
    assert not (ws / "split.tmp").exists() and not (ws / "split.old").exists()


def test_sorted_order_reproduces_the_tutorial():
    ids = [f"{i:08d}" for i in range(400)]
    val = choose_val_ids(ids, val_ids=10, val_frac=None, seed=0, order="sorted")
    assert val == tuple(ids[390:])  # first 390 train, last 10 validate
    assert choose_val_ids(ids, val_ids=None, val_frac=0.05, seed=0, order="random") != val
    assert len(choose_val_ids(ids, val_ids=None, val_frac=0.05, seed=0, order="random")) == 20


def test_max_pairs_caps_same_and_matches_different(ws):
    r = split(ws, val_frac=0.25, seed=0, max_pairs=25)
    assert len(r.val_ids) == 3 and r.same_pairs == 25 and r.diff_pairs == 25


def test_bad_requests(ws):
    with pytest.raises(InputError, match="either --val-ids or --val-frac"):
        split(ws, val_ids=2, val_frac=0.2)
    with pytest.raises(InputError, match="cannot hold out 12 of 12"):
        split(ws, val_ids=12)
    with pytest.raises(InputError, match="at least 2"):
        split(ws, val_ids=1)
    with pytest.raises(InputError, match="--order"):
        split(ws, val_ids=3, order="alphabetical")
    with pytest.raises(InputError, match="kface crop"):
        split(ws / "elsewhere")


def test_manifest_decides_which_crops_count(ws):
    faces = ws / "faces" / "Middle"
    header = "path,id,acc,light,expr,cam,source,method,status,detail\n"
    rows = []
    for ident in IDS:
        for acc, light, expr, cam in CODES[:3]:  # pretend the last crop used a smaller selection
            rows.append(
                f"{ident}/{ident}_{acc}_{light}_{expr}_{cam}.jpg,{ident},{acc},{light},{expr},{cam},x,align,ok,\n"
            )
    rows.append(f",{IDS[0]},S001,L1,E01,C9,x,,missing-annotation,no C9.txt\n")
    (faces / "manifest.csv").write_text(header + "".join(rows))
    r = split(ws, val_ids=3, seed=0)
    assert r.train_images == 9 * 3 and r.val_images == 3 * 3  # stale crops from earlier runs are left out


def test_test_part_is_a_third_identity_disjoint_part(ws):
    r = split(ws, val_ids=3, test_ids=4, seed=1)
    train, val, test = (_ids_in(ws / "split" / part) for part in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (5, 3, 4) and sorted(train + val + test) == IDS
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert r.test_ids == tuple(test) and r.test_images == 4 * 8 and r.test_pairs_csv == ws / "split" / "test_pairs.csv"
    pairs = read_pairs_csv(ws / "split" / "test_pairs.csv")
    assert all(p.path1.parent.parent.name == "test" and p.path2.parent.parent.name == "test" for p in pairs)
    assert r.test_same_pairs == 4 * (8 * 7 // 2) == r.test_diff_pairs == sum(not p.same for p in pairs)
    assert {p.codes1["id"] for p in pairs} == set(test)
    val_pairs = read_pairs_csv(ws / "split" / "val_pairs.csv")
    assert {p.codes1["id"] for p in val_pairs} == set(val)  # val pairs never touch test identities
    with open(ws / "split" / "classes.csv", newline="") as f:
        assert [row["id"] for row in csv.DictReader(f)] == train
    # --test-frac: the same kind of split; without a test part, a new split leaves no stale test folder
    assert len(split(ws, test_frac=0.25, seed=1).test_ids) == 3
    r = split(ws, val_ids=3, seed=1)
    assert r.test_ids == () and r.test_pairs_csv is None and not (ws / "split" / "test").exists()
    assert not (ws / "split" / "test_pairs.csv").exists()


def test_val_draw_is_the_same_with_or_without_a_test_part(ws):
    plain = split(ws, val_ids=3, seed=4)
    with_test = split(ws, val_ids=3, test_ids=2, seed=4)
    assert set(with_test.test_ids).isdisjoint(with_test.val_ids)
    sorted_split = split(ws, val_ids=3, test_ids=2, order="sorted")
    assert sorted_split.test_ids == tuple(IDS[-2:]) and sorted_split.val_ids == tuple(IDS[-5:-2])
    assert plain.val_ids  # drawn with the same stream as before test parts existed
    from kface_cli.prepare.split import choose_val_ids as choose

    rest = [i for i in IDS if i not in with_test.test_ids]
    assert with_test.val_ids == choose(rest, val_ids=3, val_frac=None, seed=4, order="random")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"test_ids": 1}, "cannot hold out 1 of 12 identities for testing"),
        ({"test_ids": 10}, "cannot hold out 10"),
        ({"test_ids": 2, "test_frac": 0.2}, "either --test-ids or --test-frac"),
        ({"test_frac": 1.5}, "--test-frac must be between 0 and 1"),
    ],
)
def test_bad_test_requests(ws, kwargs, match):
    with pytest.raises(InputError, match=match):
        split(ws, **kwargs)


def test_cli_split_with_a_test_part(ws):
    from typer.testing import CliRunner

    from kface_cli.cli import app

    res = CliRunner().invoke(app, ["split", "-w", str(ws), "--test-ids", "4", "--val-ids", "3", "--json"])
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.stdout)
    assert len(out["test_ids"]) == 4 and out["test_pairs_csv"].endswith("test_pairs.csv")
