"""kface detect: every face of a photo with box, 5 points and score; annotated copies; errors; CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gallery_helpers import CODES, render_photo

from kface_cli.deploy.detect import detect_photos, photo_paths, table_rows
from kface_cli.errors import InputError
from kface_cli.face.detector import get_detector
from kface_cli.face.imageio import read_image

ASTRONAUT = Path(__file__).parent / "fixtures" / "astronaut.jpg"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    render_photo(root / "a.jpg", "19072651", CODES[0])
    render_photo(root / "sub" / "b.jpg", "19072652", CODES[2])
    render_photo(root / "c.jpg", "19072653", CODES[0], sidecar=False)  # no sidecar: no face in sidecar mode
    return root


def test_faces_boxes_points_and_scores(photos):
    from kface_cli.dataset.annotation import read_annotation

    result = detect_photos([photos], detector=get_detector("annotation"))
    assert [p.image.name for p in result.images] == ["a.jpg", "c.jpg", "b.jpg"]
    a = result.images[0]
    ann = read_annotation(photos / "a.txt")
    assert len(a.faces) == 1 and np.allclose(a.faces[0].points5, ann.points5)
    assert (a.width, a.height) == read_image(photos / "a.jpg").shape[1::-1]
    assert result.images[1].faces == [] and "no K-Face annotation" in (result.images[1].error or "")
    assert result.faces == 2
    data = result.to_json()
    face = data["images"][0]["faces"][0]
    assert len(face["box"]) == 4 and len(face["points5"]) == 5 and face["landmarks"] == "annotation"
    columns, rows = table_rows(result)
    assert len(rows) == 3 and rows[0][0].name == "a.jpg" and rows[0][1] == 1 and len(rows[0][4].split()) == 5


def test_annotate_draws_boxes_and_points(photos, tmp_path):
    result = detect_photos([photos / "a.jpg"], detector=get_detector("annotation"), annotate=tmp_path / "out")
    assert [p.name for p in result.annotated] == ["a.jpg"]
    src, drawn = read_image(photos / "a.jpg"), read_image(tmp_path / "out" / "a.jpg")
    assert drawn.shape == src.shape and np.abs(drawn.astype(int) - src.astype(int)).sum() > 1000


def test_errors(photos, tmp_path):
    with pytest.raises(InputError, match="not found"):
        photo_paths([tmp_path / "missing.jpg"])
    (tmp_path / "clip.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match="is a video"):
        photo_paths([tmp_path / "clip.mp4"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="needs a folder"):
        detect_photos([photos / "a.jpg"], detector=get_detector("annotation"), annotate=tmp_path / "file")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    result = detect_photos([tmp_path / "bad.jpg"], detector=get_detector("annotation"))
    assert result.images[0].faces == [] and "cannot read image" in result.images[0].error


def test_cli_detect_finds_the_real_face(tmp_path):
    """The real detector on a real photo, through the command line."""
    from typer.testing import CliRunner

    from kface_cli.cli import app

    r = CliRunner().invoke(app, ["detect", str(ASTRONAUT), "--json", "--annotate", str(tmp_path / "ann")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    (face,) = data["images"][0]["faces"]
    assert face["score"] > 0.5 and face["landmarks"] in ("mesh", "detector")
    x, y, w, h = face["box"]
    eye = face["points5"][0]
    assert x < eye[0] < x + w and y < eye[1] < y + h
    assert (tmp_path / "ann" / "astronaut.jpg").is_file()


def test_cli_detect_exits_1_when_no_photo_can_be_read(tmp_path):
    from typer.testing import CliRunner

    from kface_cli.cli import app

    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(app, ["detect", str(tmp_path / "bad.jpg"), *extra])
        assert r.exit_code == 1 and "cannot read image" in r.output
    r = CliRunner().invoke(app, ["detect", str(tmp_path / "bad.jpg"), str(ASTRONAUT), "--json"])
    assert r.exit_code == 0, r.output  # one readable photo: a normal result
