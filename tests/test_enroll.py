"""Enrolment: layouts, unicode names, duplicates, bad photos, modes, wrong model, crashes, concurrency, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from gallery_helpers import CODES, PixelEmbedder, SidecarDetector, mbf_model, people_folder, render_photo  # noqa: F401 (fixture)

from kface_cli.deploy.enroll import Status, enroll_folder, find_photos
from kface_cli.errors import InputError, ModelMismatchError
from kface_cli.gallery.store import Gallery

REPO = Path(__file__).resolve().parents[1]
PEOPLE = {"김철수": "19072641", "Alice": "19072642", "Bob": "19072643"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """people/<name>/{0,1,2}.jpg with K-Face sidecars (rendered once for the module)."""
    return people_folder(tmp_path_factory.mktemp("photos") / "people", PEOPLE, photos_each=3)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_find_photos_both_layouts(tmp_path, photos):
    root = _copy(photos, tmp_path / "mixed")
    shutil.copy(photos / "Bob" / "0.jpg", root / "Carol.jpg")
    (root / "notes.txt").write_text("not a photo")
    found = find_photos(root)
    names = sorted({p.name for p in found})
    assert names == sorted(["Alice", "Bob", "Carol", "김철수"])
    assert sum(p.name == "Carol" for p in found) == 1 and sum(p.name == "김철수" for p in found) == 3
    with pytest.raises(InputError, match="no photos"):
        find_photos(_empty(tmp_path))
    with pytest.raises(InputError, match="not found"):
        find_photos(tmp_path / "nope")


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_enroll_folders_then_again_is_a_no_op(tmp_path, photos):
    emb = PixelEmbedder()
    g = tmp_path / "gallery.h5"
    first = enroll_folder(photos, g, emb, detector=SidecarDetector())
    assert first.added_templates == 9 and not first.problems
    assert Gallery(g).identities() == {"Alice": 3, "Bob": 3, "김철수": 3}
    rows = Gallery(g).read(details=True)
    assert all(Path(s).is_file() for s in rows.sources) and np.all(rows.scores > 0)
    second = enroll_folder(photos, g, emb, detector=SidecarDetector())
    assert second.added_templates == 0 and second.totals()["duplicates"] == 9
    assert Gallery(g).facts().templates == 9


def test_one_photo_per_person_layout_and_unicode_stems(tmp_path):
    root = tmp_path / "one"
    render_photo(root / "박지성.jpg", "19072644")
    render_photo(root / "Zoë.jpg", "19072645")
    result = enroll_folder(root, tmp_path / "g.h5", PixelEmbedder(), detector=SidecarDetector())
    assert {i.name: i.added for i in result.identities} == {"Zoë": 1, "박지성": 1}
    assert Gallery(tmp_path / "g.h5").read().names == ["Zoë", "박지성"]


def test_bad_photos_are_reported_and_skipped(tmp_path, photos):
    root = _copy(photos, tmp_path / "people")
    (root / "Alice" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    render_photo(root / "Bob" / "noface.jpg", PEOPLE["Bob"], CODES[3], sidecar=False)  # the stub detector finds nothing
    result = enroll_folder(root, tmp_path / "g.h5", PixelEmbedder(), detector=SidecarDetector())
    status = {p.path.name: p.status for p in result.problems}
    assert status == {"broken.jpg": Status.UNREADABLE, "noface.jpg": Status.NO_FACE}
    summary = {i.name: i for i in result.identities}
    assert summary["Alice"].skipped == 1 and summary["Alice"].added == 3
    assert summary["Bob"].skipped == 1 and summary["Bob"].added == 3


def test_several_faces_use_the_largest_and_warn(tmp_path, photos, capsys):
    result = enroll_folder(photos, tmp_path / "g.h5", PixelEmbedder(), detector=SidecarDetector(extra=True))
    notes = [p for p in result.problems if p.status is Status.ADDED]
    assert len(notes) == 9 and all("2 faces" in p.note for p in notes)
    rows = Gallery(tmp_path / "g.h5").read(details=True)
    # the stored box is the larger face's
    assert np.all(rows.boxes[:, 2] > 40)
    assert "2 faces: used the largest" in capsys.readouterr().err


def test_mean_mode_and_replace(tmp_path, photos):
    emb = PixelEmbedder()
    g = tmp_path / "g.h5"
    result = enroll_folder(photos, g, emb, detector=SidecarDetector(), per_identity="mean")
    assert Gallery(g).identities() == {"Alice": 1, "Bob": 1, "김철수": 1}
    rows = Gallery(g).read()
    np.testing.assert_allclose(np.linalg.norm(rows.embeddings, axis=1), 1.0, atol=1e-5)
    assert result.added_templates == 3
    again = enroll_folder(photos, g, emb, detector=SidecarDetector(), per_identity="mean")
    assert again.added_templates == 0  # same photos, same mean: a no-op
    replaced = enroll_folder(photos, g, emb, detector=SidecarDetector(), replace=True)
    assert replaced.removed_templates == 3 and Gallery(g).identities() == {"Alice": 3, "Bob": 3, "김철수": 3}
    with pytest.raises(InputError, match="all, mean"):
        enroll_folder(photos, g, emb, detector=SidecarDetector(), per_identity="median")


def test_replace_without_new_faces_keeps_the_old_templates(tmp_path, photos, capsys):
    emb = PixelEmbedder()
    g = tmp_path / "g.h5"
    enroll_folder(photos, g, emb, detector=SidecarDetector())
    before = Gallery(g).read(details=True)
    faceless = tmp_path / "faceless"
    for name, code in [("Alice", PEOPLE["Alice"]), ("Bob", PEOPLE["Bob"])]:
        render_photo(faceless / name / "0.jpg", code, CODES[3], sidecar=False)  # no face found
    with pytest.raises(InputError, match="no usable face for Alice, Bob") as err:
        enroll_folder(faceless, g, emb, detector=SidecarDetector(), replace=True)
    assert "gallery is unchanged" in str(err.value)
    after = Gallery(g).read(details=True)
    assert after.names == before.names and after.hashes == before.hashes
    # one person with new faces is swapped, the other keeps the old ones (and a warning says so)
    shutil.copy(photos / "Bob" / "1.jpg", faceless / "Bob" / "1.jpg")
    shutil.copy(photos / "Bob" / "1.txt", faceless / "Bob" / "1.txt")
    capsys.readouterr()
    result = enroll_folder(faceless, g, emb, detector=SidecarDetector(), replace=True)
    assert result.removed_templates == 3 and result.added_templates == 1
    assert Gallery(g).identities() == {"Alice": 3, "Bob": 1, "김철수": 3}
    assert "no photo of Alice gave a face, so its 3 templates are kept" in capsys.readouterr().err
    assert Gallery(g).verify()["verified"]


def test_an_interrupted_replace_changes_nothing(tmp_path, photos, monkeypatch):
    emb = PixelEmbedder()
    g = tmp_path / "g.h5"
    enroll_folder(photos, g, emb, detector=SidecarDetector())
    before = Gallery(g).read(details=True)
    calls = []

    def interrupted(*a, **k):
        calls.append(a)
        raise KeyboardInterrupt

    monkeypatch.setattr(PixelEmbedder, "embed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        enroll_folder(photos, g, emb, detector=SidecarDetector(), replace=True, batch_size=2)
    assert calls and Gallery(g).read(details=True).hashes == before.hashes
    # and a crash inside the swap itself (before its rename) leaves the old file too
    monkeypatch.undo()
    from kface_cli import atomic

    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        enroll_folder(photos, g, emb, detector=SidecarDetector(), replace=True)
    monkeypatch.undo()
    assert Gallery(g).read(details=True).hashes == before.hashes and Gallery(g).verify()["verified"]


def test_wrong_model_is_refused(tmp_path, photos):
    g = tmp_path / "g.h5"
    enroll_folder(photos, g, PixelEmbedder(seed=0), detector=SidecarDetector())
    with pytest.raises(ModelMismatchError, match="another model"):
        enroll_folder(photos, g, PixelEmbedder(seed=1), detector=SidecarDetector())


def test_aligned_crops(tmp_path, photos):
    from kface_cli.dataset.annotation import read_annotation
    from kface_cli.face.align import norm_crop
    from kface_cli.face.imageio import read_image, write_image

    root = tmp_path / "faces"
    for p in sorted(photos.rglob("*.jpg")):
        crop = norm_crop(read_image(p), read_annotation(p.with_suffix(".txt")).points5)
        write_image(root / p.parent.name / p.name, crop)
    result = enroll_folder(root, tmp_path / "g.h5", PixelEmbedder(), aligned=True)
    assert result.added_templates == 9
    rows = Gallery(tmp_path / "g.h5").read(details=True)
    assert (rows.boxes == [0, 0, 112, 112]).all() and np.isnan(rows.scores).all()  # the whole crop, no detection


# -- real processes ------------------------------------------------------------------------------

_ENROLL = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[4])
    from gallery_helpers import PixelEmbedder, SidecarDetector
    from kface_cli.deploy.enroll import enroll_folder
    enroll_folder(sys.argv[1], sys.argv[2], PixelEmbedder(delay=float(sys.argv[3])), detector=SidecarDetector(), batch_size=2, update_index=False)
    """
)


def _spawn(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KFACE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _ENROLL, *map(str, args), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _count(path: Path) -> int:
    try:
        return Gallery(path).facts().templates if path.exists() else 0
    except InputError:
        return 0


@pytest.mark.slow
def test_kill_9_mid_enroll_keeps_committed_batches_and_resumes(tmp_path, photos):
    g = tmp_path / "g.h5"
    proc = _spawn(photos, g, 0.25)
    deadline = time.monotonic() + 60
    while _count(g) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = Gallery(g).read(details=True)
    assert 4 <= len(kept) < 9 and len(kept) % 2 == 0, len(kept)
    # every kept row is exactly what that photo embeds to
    emb = PixelEmbedder()
    det = SidecarDetector()
    from kface_cli.face.align import norm_crop
    from kface_cli.face.imageio import read_image

    for source, vector in zip(kept.sources, kept.embeddings):
        img = read_image(source)
        face = norm_crop(img, det.detect(img, source)[0].points5)
        # stored as float16 (gallery schema 2): a unit vector's components round by at most 2**-11
        np.testing.assert_allclose(vector, emb.embed(face[None])[0], atol=2**-11)
    # running it again finishes the job without duplicates
    result = enroll_folder(photos, g, emb, detector=det)
    assert result.added_templates == 9 - len(kept)
    rows = Gallery(g).read(details=True)
    assert len(rows) == 9 and len(set(rows.hashes)) == 9


@pytest.mark.slow
def test_two_enrolls_at_once_lose_nothing(tmp_path, photos):
    a = _copy(photos, tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    for name in PEOPLE:  # different photos (other codes) of other names
        render_photo(b / f"{name}-2" / "0.jpg", PEOPLE[name], CODES[3])
        render_photo(b / f"{name}-2" / "1.jpg", PEOPLE[name], ("S001", "L2", "E02", "C6"))
    g = tmp_path / "g.h5"
    procs = [_spawn(a, g, 0.05), _spawn(b, g, 0.05)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(set(Gallery(g).read(details=True).hashes)) == 15
    ids = Gallery(g).identities()
    assert ids == {"Alice": 3, "Bob": 3, "김철수": 3, "Alice-2": 2, "Bob-2": 2, "김철수-2": 2}


# -- the command -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_enroll_with_a_model_file(tmp_path, photos, mbf_model):
    from typer.testing import CliRunner

    from kface_cli.cli import app

    runner = CliRunner()
    g = tmp_path / "g.h5"
    r = runner.invoke(
        app,
        [
            "enroll",
            str(photos),
            "--model",
            str(mbf_model),
            "--network",
            "mbf",
            "--landmarks",
            "annotation",
            "-g",
            str(g),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["templates_added"] == 9 and out["model"]["network"] == "mbf"
    assert {i["name"] for i in out["identities"]} == set(PEOPLE)
    assert Gallery(g).facts().embedding_size == 128
    missing = runner.invoke(app, ["enroll", str(tmp_path / "nope"), "--model", str(mbf_model), "-g", str(g)])
    assert missing.exit_code == 2 and "folder not found" in missing.output


def test_threads_enroll_exactly_what_one_thread_does(tmp_path, photos):
    root = _copy(photos, tmp_path / "people")
    for suffix in (".jpg", ".txt"):  # the same photo twice in one run
        shutil.copy(root / "Bob" / f"0{suffix}", root / "Alice" / f"bob-again{suffix}")
    rows, outcomes = [], []
    for workers in (1, 3):
        result = enroll_folder(
            root, tmp_path / f"g{workers}.h5", PixelEmbedder(), detector=SidecarDetector(), workers=workers
        )
        outcomes.append((result.totals(), result.identities))
        rows.append(Gallery(tmp_path / f"g{workers}.h5").read(details=True))
    assert outcomes[0] == outcomes[1] and outcomes[0][0]["duplicates"] == 1
    assert rows[0].sources == rows[1].sources and rows[0].names == rows[1].names  # photo order kept
    assert np.array_equal(rows[0].embeddings, rows[1].embeddings)
