"""Identification: names, unknowns, candidates, thresholds, JSON/CSV, annotation, video, errors, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.embedders import FakeEmbedder
from helpers.gallery import CODES, FakeFace, SidecarDetector, people_folder, render_photo

from kface_cli.console import to_json
from kface_cli.defaults import DEFAULT_THRESHOLD
from kface_cli.deploy.enroll import enroll_folder
from kface_cli.deploy.identify import UNKNOWN, identify, table_rows, write_csv
from kface_cli.errors import InputError, ModelMismatchError

PEOPLE = {"김철수": "19072651", "Alice": "19072652", "Bob": "19072653"}
STRANGER = "19072659"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A gallery of three people (3 photos each) and held-out probe photos (another expression)."""
    root = tmp_path_factory.mktemp("world")
    people = people_folder(root / "people", PEOPLE, photos_each=3)
    probes = root / "probes"
    for name, ident in PEOPLE.items():
        render_photo(probes / f"{name}.jpg", ident, CODES[3])
    render_photo(root / "stranger" / "x.jpg", STRANGER, CODES[3])
    gallery = root / "gallery.h5"
    enroll_folder(people, gallery, FakeEmbedder("pixels"), detector=SidecarDetector())
    return {
        "root": root,
        "people": people,
        "probes": probes,
        "gallery": gallery,
        "stranger": root / "stranger" / "x.jpg",
    }


def _identify(world, paths, **kw):
    kw.setdefault("detector", SidecarDetector())
    return identify(paths, world["gallery"], FakeEmbedder("pixels"), **kw)


def test_held_out_photos_are_named(world):
    result = _identify(world, [world["probes"]], top_k=3)
    assert result.threshold == DEFAULT_THRESHOLD and result.threshold_source == "uncalibrated"
    named = {Path(i.image).stem: i.faces[0] for i in result.images}
    assert {k: f.name for k, f in named.items()} == {n: n for n in PEOPLE}
    for face in named.values():
        assert len(face.candidates) == 2 and face.name not in {c.name for c in face.candidates}
        assert face.distance <= min(c.distance for c in face.candidates)
        assert 0.0 <= face.distance < DEFAULT_THRESHOLD
    assert result.matched_any()


def test_threshold_decides_unknown(world):
    loose = _identify(world, [world["stranger"]])
    best = loose.images[0].faces[0]
    strict = _identify(world, [world["stranger"]], threshold=best.distance * 0.5)
    face = strict.images[0].faces[0]
    assert face.name == UNKNOWN and strict.threshold_source == "given"
    assert face.distance == pytest.approx(best.distance) and len(face.candidates) == 3  # all nearest listed
    # JSON: null for no match, and the same candidates (best first) whether the face was named or not
    assert face.to_json()["name"] is None
    assert [c["name"] for c in face.to_json()["candidates"]] == [c["name"] for c in best.to_json()["candidates"]]
    assert not strict.matched_any()
    with pytest.raises(InputError, match="outside 0..4"):
        _identify(world, [world["stranger"]], threshold=7.0)


def test_calibrated_1n_threshold_is_preferred_over_the_1to1_one(world, tmp_path):
    from kface_cli.embedding.calibration import IDENTIFICATION, VERIFICATION, save_calibration

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    emb = FakeEmbedder("pixels")
    emb.source = model
    best = _identify(world, [world["stranger"]]).images[0].faces[0].distance
    one_to_one = {"threshold": 3.9, "target_far": 1e-2, "n_same": 10, "n_diff": 100}
    save_calibration(emb, VERIFICATION, one_to_one)
    loose = identify([world["stranger"]], world["gallery"], emb, detector=SidecarDetector())
    assert (loose.threshold, loose.threshold_source) == (3.9, "calibrated_verification")
    assert loose.threshold_detail == "calibrated 1:1 at FAR 1e-02; no 1:N calibration"
    assert loose.images[0].faces[0].name != UNKNOWN  # 3.9 accepts anyone
    save_calibration(emb, IDENTIFICATION, {"threshold": best * 0.5, "target_fpir": 1e-1, "n_known": 5, "n_unknown": 10})
    strict = identify([world["stranger"]], world["gallery"], emb, detector=SidecarDetector())
    assert (strict.threshold, strict.threshold_source) == (pytest.approx(best * 0.5), "calibrated_identification")
    assert strict.threshold_detail == "calibrated 1:N at FPIR 1e-01"
    assert strict.images[0].faces[0].name == UNKNOWN


def test_json_csv_and_table(world, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"not an image")
    result = _identify(
        world, [world["probes"] / "김철수.jpg", tmp_path / "empty.jpg", world["people"] / "Bob" / "0.jpg"]
    )
    report = json.loads(to_json(result.to_json()))
    assert report["threshold"] == DEFAULT_THRESHOLD and report["threshold_source"] == "uncalibrated"
    assert report["model"]["fingerprint"] == FakeEmbedder("pixels").fingerprint and report["face_count"] == 2
    data = report["images"]
    assert [Path(d["image"]).name for d in data] == ["김철수.jpg", "empty.jpg", "0.jpg"]
    face = data[0]["faces"][0]
    assert set(face) >= {"box", "name", "distance", "candidates"} and face["name"] == "김철수" and len(face["box"]) == 4
    assert face["candidates"][0] == {"name": "김철수", "distance": face["distance"]}  # the best match comes first
    assert data[0]["error"] is None and data[1]["faces"] == [] and "cannot read image" in data[1]["error"]
    assert data[2]["faces"][0]["name"] == "Bob" and data[2]["faces"][0]["distance"] < 1e-3  # an enrolled photo
    assert [d["face_count"] for d in data] == [1, 0, 1]
    rows = list(csv.DictReader(write_csv(result, tmp_path / "out.csv").open(encoding="utf-8")))
    assert [r["name"] for r in rows] == ["김철수", "Bob"] and rows[0]["candidate1"] == "김철수"
    assert [r["candidate3"] for r in rows].count("") == 0 and float(rows[0]["distance1"]) == float(rows[0]["distance"])
    assert all(float(r[k]) >= 0 for r in rows for k in ("x", "y", "w", "h"))  # numbers in their own columns
    assert rows[0]["matched"] == "true" and float(rows[0]["cosine"]) == pytest.approx(
        1 - float(rows[0]["distance"]) / 2, abs=1e-3
    )
    columns, table = table_rows(result)
    assert len(table) == 3 and "cannot read image" in table[1][3]


def test_annotate_draws_korean_names_without_crashing(world, tmp_path):
    from kface_cli.face.imageio import read_image

    out = tmp_path / "annotated"
    result = _identify(world, [world["probes"]], annotate=out)
    assert sorted(p.name for p in result.annotated) == sorted(f"{n}.jpg" for n in PEOPLE)
    src = read_image(world["probes"] / "김철수.jpg")
    drawn = read_image(out / "김철수.jpg")
    assert drawn.shape == src.shape and np.abs(drawn.astype(int) - src.astype(int)).sum() > 1000


def test_video_frames(world, tmp_path):
    import cv2

    from kface_cli.dataset.annotation import read_annotation
    from kface_cli.face.imageio import read_image

    probe = world["probes"] / "Alice.jpg"
    image = read_image(probe)
    ann = read_annotation(probe.with_suffix(".txt"))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (image.shape[1], image.shape[0]))
    for _ in range(6):
        writer.write(image)
    writer.release()

    class Fixed:  # video frames have no sidecar: always "detect" the probe's face
        def detect(self, img, path=None):
            return [FakeFace(tuple(ann.face_box), 0.9, np.asarray(ann.points5, np.float32))]

    result = _identify(world, [video], every=2, detector=Fixed())
    assert [i.image.split("#")[1] for i in result.images] == ["frame=0", "frame=2", "frame=4"]
    assert all(i.faces[0].name == "Alice" for i in result.images)


def test_errors_are_clear(world, tmp_path):
    with pytest.raises(InputError, match="no camera 97"):
        _identify(world, [], camera=97)
    with pytest.raises(InputError, match="not found"):
        _identify(world, [tmp_path / "nope.jpg"])
    with pytest.raises(InputError, match="gallery not found"):
        identify([world["stranger"]], tmp_path / "none.h5", FakeEmbedder("pixels"), detector=SidecarDetector())
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(InputError, match="cannot open gallery"):
        identify([world["stranger"]], junk, FakeEmbedder("pixels"), detector=SidecarDetector())
    with pytest.raises(ModelMismatchError, match="another model"):
        identify([world["stranger"]], world["gallery"], FakeEmbedder("pixels", seed=5), detector=SidecarDetector())


@pytest.mark.slow
def test_cli_identify(world, tmp_path, mbf_model):
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.embedding.loading import load_embedder

    gallery = tmp_path / "g.h5"
    enroll_folder(world["people"], gallery, load_embedder(mbf_model, network="mbf"), landmarks="annotation")
    runner = CliRunner()
    base = ["identify", "--model", str(mbf_model), "--network", "mbf", "--landmarks", "annotation", "-g", str(gallery)]
    probe = world["people"] / "김철수" / "1.jpg"  # enrolled: distance ~0 whatever the weights
    r = runner.invoke(
        app, [*base, str(probe), "--json", "--csv", str(tmp_path / "o.csv"), "--annotate", str(tmp_path / "ann")]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    face = data["images"][0]["faces"][0]
    assert data["schema"] == 2 and face["name"] == "김철수" and face["distance"] < 1e-3
    assert (tmp_path / "o.csv").is_file() and (tmp_path / "ann" / "1.jpg").is_file()
    r = runner.invoke(app, [*base, str(probe), "--threshold", "0", "--fail-unknown"])
    assert r.exit_code == 1, r.output
    assert UNKNOWN in r.stdout
    r = runner.invoke(app, [*base[:-1], str(tmp_path / "missing.h5"), str(probe)])
    assert r.exit_code == 2 and "gallery not found" in r.output
    r = runner.invoke(app, ["identify", "-g", str(gallery)])
    assert r.exit_code == 2 and "nothing to identify" in r.output
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    r = runner.invoke(app, [*base, str(tmp_path / "bad.jpg")])  # no photo readable: reported, exit 1
    assert r.exit_code == 1 and "cannot read image" in r.output
    r = runner.invoke(app, [*base, str(tmp_path / "bad.jpg"), str(probe)])  # one readable: a normal result
    assert r.exit_code == 0, r.output


def test_camera_frames_stream_until_max_frames(world, monkeypatch, capsys):
    import kface_cli.deploy.sources as sources_mod
    from kface_cli.dataset.annotation import read_annotation
    from kface_cli.face.imageio import read_image

    probe = world["probes"] / "Bob.jpg"
    image = read_image(probe)
    ann = read_annotation(probe.with_suffix(".txt"))

    class FakeCamera:  # stands in for cv2.VideoCapture(0) on a machine without a webcam
        released = False

        def read(self):
            return True, image.copy()

        def release(self):
            FakeCamera.released = True

    class Fixed:
        def detect(self, img, path=None):
            return [FakeFace(tuple(ann.face_box), 0.9, np.asarray(ann.points5, np.float32))]

    monkeypatch.setattr(sources_mod, "open_capture", lambda source: FakeCamera())
    result = _identify(world, [], camera=0, every=3, max_frames=2, detector=Fixed())
    assert [i.image for i in result.images] == ["camera0#frame=0", "camera0#frame=3"]
    assert all(i.faces[0].name == "Bob" for i in result.images) and FakeCamera.released
    assert "camera0#frame=3: Bob" in capsys.readouterr().err


def test_threads_keep_photo_order_and_errors(world, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    paths = [world["probes"], broken, world["stranger"], world["people"]]
    one, many = (
        {k: v for k, v in _identify(world, paths, workers=w).to_json().items() if k != "seconds"} for w in (1, 3)
    )
    assert one == many
    images = one["images"]
    assert [Path(i["image"]).name for i in images][3:5] == ["broken.jpg", "x.jpg"]
    assert images[3]["error"] and images[4]["error"] is None


@pytest.mark.parametrize("workers", [None, 1])
def test_first_photo_is_searched_while_the_model_loads(world, workers):
    """One photo, whole process: its faces are searched on a worker thread while the model loads
    (the loader sees the detection started); with ``workers=1`` everything stays in order, in the
    calling thread. The result is the same either way."""
    import threading

    started = threading.Event()

    class Recording(SidecarDetector):
        def detect(self, image, path=None):
            started.set()
            return super().detect(image, path)

    seen: list[bool] = []

    def load_model():
        seen.append(started.wait(30) if workers is None else started.is_set())
        return FakeEmbedder("pixels")

    result = identify(
        [world["probes"] / "Alice.jpg"], world["gallery"], load_model, detector=Recording(), workers=workers
    )
    assert seen == [workers is None]
    assert [f.name for f in result.images[0].faces] == ["Alice"]


def test_the_gallery_is_opened_twice(world, monkeypatch):
    """Once to check it before the model loads, once to read it (names and embeddings together)."""
    from kface_cli.gallery.store import Gallery

    opened = []
    original = Gallery._open
    monkeypatch.setattr(Gallery, "_open", lambda self, *a, **kw: opened.append(a) or original(self, *a, **kw))
    result = _identify(world, [world["probes"]])
    assert len(result.images) == len(PEOPLE) and len(opened) == 2
