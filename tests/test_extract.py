"""`kface extract` as a domain function: selection, re-runs, zip safety, corrupt zips, missing codes."""

import io
import zipfile
from pathlib import Path

import pytest
from helpers.synth import make_source

from kface_cli.dataset.source import list_identities
from kface_cli.errors import InputError
from kface_cli.prepare.extract import DONE_MARKER, Selection, extract

TUTORIAL_IN_SMALL = 4  # SMALL_COMBOS holds 4 of the tutorial's 24 images


@pytest.fixture
def source(tmp_path):
    return make_source(tmp_path / "kface", n_ids=3)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_default_selection_extracts_images_and_annotations(source, tmp_path):
    ws = tmp_path / "ws"
    r = extract(source, workdir=ws, res="Low", workers=2)
    assert r.ok and r.identities == 3 and r.extracted == 3
    assert r.images == 3 * TUTORIAL_IN_SMALL and r.annotations == r.images
    first = sorted(s.id for s in list_identities(source, "Low"))[0]
    files = _files(ws / "raw" / "Low" / first)
    assert {"S001/L1/E01/C7.jpg", "S001/L1/E01/C7.txt", "S001/L3/E02/C8.jpg", DONE_MARKER} <= files
    assert not any(f.startswith("S002") or "/L7/" in f for f in files)  # outside the tutorial selection
    # the 20 tutorial images this source lacks are counted per code
    assert r.missing_images == 3 * (24 - TUTORIAL_IN_SMALL)
    assert r.missing_by_code["L3"] == 3 * 11 and "L1" in r.missing_by_code


def test_selection_of_other_codes(source, tmp_path):
    sel = Selection.parse(acc="S001-S002", light="L1,L7", expr="E01", cam="C1,C7")
    r = extract(source, workdir=tmp_path / "ws", res="Low", selection=sel, ids=None)
    assert r.images == 3 * 4 and r.missing_images == 3 * 4  # S002 L7 and S002 C1 do not exist, nor S001 L7 C1
    assert r.annotations == 3 * 3  # S002 images have no annotation in K-Face


def test_rerun_skips_complete_and_redoes_partial(source, tmp_path):
    ws = tmp_path / "ws"
    extract(source, workdir=ws, res="Low")
    again = extract(source, workdir=ws, res="Low")
    assert again.skipped == 3 and again.written == 0 and again.images == 3 * TUTORIAL_IN_SMALL
    raw = ws / "raw" / "Low"
    victim = sorted(raw.iterdir())[0]
    (victim / "S001" / "L1" / "E01" / "C7.jpg").unlink()  # damage one identity
    (victim / DONE_MARKER).unlink()  # as if interrupted
    (sorted(raw.iterdir())[1] / "S001" / "L3" / "E02" / "C8.txt").write_text("half")  # truncated file, marker intact
    third = extract(source, workdir=ws, res="Low")
    assert third.extracted == 2 and third.skipped == 1
    assert third.written == 2  # only the two missing or wrong files were rewritten
    assert (victim / "S001" / "L1" / "E01" / "C7.jpg").stat().st_size > 1000


def test_zip_slip_members_never_escape(tmp_path):
    root = tmp_path / "kface"
    good = make_source(tmp_path / "good", n_ids=1)
    (zpath,) = (good / "Low_Resolution").glob("*.zip")
    evil = io.BytesIO()
    with zipfile.ZipFile(zpath) as src, zipfile.ZipFile(evil, "w") as dst:
        jpg = src.read("S001/L1/E01/C7.jpg")
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        # tutorial-selection codes this identity lacks, under hostile names
        dst.writestr("../../escaped/S001/L1/E02/C8.jpg", jpg)
        dst.writestr("/tmp/escaped-abs/S001/L3/E03/C9.jpg", jpg)
        dst.writestr("..\\..\\escaped-win\\S001\\L3\\E01\\C6.jpg", jpg)
    target = root / "Low_Resolution" / zpath.name
    target.parent.mkdir(parents=True)
    target.write_bytes(evil.getvalue())
    ws = tmp_path / "deep" / "ws"
    r = extract(root, workdir=ws, res="Low")
    assert r.ok and r.unsafe_members == 3
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    assert not Path("/tmp/escaped-abs").exists()
    (ident,) = (ws / "raw" / "Low").iterdir()
    for rel in ("S001/L1/E02/C8.jpg", "S001/L3/E03/C9.jpg", "S001/L3/E01/C6.jpg"):
        assert not (ident / rel).exists(), rel  # hostile members are not taken for real images either
    assert r.images == TUTORIAL_IN_SMALL
    assert all(str(p).startswith(str(ws)) for p in (ws / "raw").rglob("*"))


def test_corrupt_zip_is_reported_and_others_finish(source, tmp_path):
    zips = sorted((source / "Low_Resolution").glob("*.zip"))
    zips[0].write_bytes(b"PK\x03\x04 truncated garbage")
    data = bytearray(zips[1].read_bytes())  # flip bytes inside a stored JPEG: CRC error on read
    with zipfile.ZipFile(zips[1]) as zf:
        info = zf.getinfo("S001/L1/E01/C7.jpg")
    start = info.header_offset + 30 + len(info.filename) + 200
    data[start : start + 16] = bytes(16)
    zips[1].write_bytes(bytes(data))
    r = extract(source, workdir=tmp_path / "ws", res="Low")
    assert not r.ok and r.failed == 2 and r.extracted == 1
    failed = {f["id"]: f["error"] for f in r.failures}
    assert "corrupt or unreadable zip" in failed[zips[0].stem]
    assert "S001/L1/E01/C7.jpg" in failed[zips[1].stem] and "CRC" in failed[zips[1].stem]
    raw = tmp_path / "ws" / "raw" / "Low"
    healthy = raw / zips[2].stem
    assert len(list(healthy.rglob("*.jpg"))) == TUTORIAL_IN_SMALL and (healthy / DONE_MARKER).is_file()
    assert not (raw / zips[1].stem / DONE_MARKER).exists()  # a failed identity is never marked complete


def test_ids_filter_and_unknown_ids(source, tmp_path):
    ids = sorted(s.id for s in list_identities(source, "Low"))
    r = extract(source, workdir=tmp_path / "ws", res="Low", ids=(ids[1],))
    assert r.identities == 1 and sorted(p.name for p in (tmp_path / "ws" / "raw" / "Low").iterdir()) == [ids[1]]
    with pytest.raises(InputError, match="not in"):
        extract(source, workdir=tmp_path / "ws", res="Low", ids=("19990101",))


def test_unpacked_source_and_default_source(source, tmp_path):
    for z in (source / "Low_Resolution").glob("*.zip"):
        with zipfile.ZipFile(z) as zf:
            zf.extractall(z.with_suffix(""))
        z.unlink()
    r = extract(source, workdir=tmp_path / "ws", res="Low")
    assert r.ok and r.images == 3 * TUTORIAL_IN_SMALL
    with pytest.raises(InputError, match="no SOURCE given"):
        extract(None, workdir=tmp_path / "empty", res="Low")
