"""The Python API: load, detect, align, embed, verify, and a Gallery, with tqdm progress bars."""

from __future__ import annotations

import numpy as np
import pytest
from gallery_helpers import CODES, PixelEmbedder, mbf_model, people_folder, render_photo  # noqa: F401 (fixture)

from kface_cli import api, console


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    people = people_folder(root / "people", {"Alice": "19072651", "Bob": "19072652"}, photos_each=2)
    probe = render_photo(root / "probe.jpg", "19072651", CODES[3])
    return {"root": root, "people": people, "probe": probe}


def test_detect_align_embed(world):
    faces = api.detect(world["probe"], landmarks="annotation")
    crops = api.align(world["probe"], landmarks="annotation")
    assert len(faces) == len(crops) == 1 and faces[0].points5.shape == (5, 2) and crops[0].shape == (112, 112, 3)
    model = PixelEmbedder()
    from_crops = api.embed_aligned(model, np.stack(crops))  # RGB crops back in: the same face
    from_path = api.embed(model, world["probe"], landmarks="annotation")  # one photo: its largest face, (D,)
    assert from_crops.shape == (1, 64) and from_path.shape == (64,)
    assert np.allclose(from_crops[0], from_path, atol=1e-5)
    assert np.allclose(api.embed_aligned(model, crops[0]), from_path, atol=1e-5)  # one crop: (D,)
    (world["root"] / "blank.jpg").write_bytes(b"junk")
    with pytest.raises(Exception, match="cannot read image"):
        api.embed(model, [world["probe"], world["root"] / "blank.jpg"])


def test_verify(world):
    alice = world["people"] / "Alice"
    result = api.verify(PixelEmbedder(), alice / "0.jpg", alice / "0.jpg")
    assert result.same and result.distance < 1e-5 and result.threshold_source == "uncalibrated"
    assert not api.verify(PixelEmbedder(), alice / "0.jpg", world["people"] / "Bob" / "0.jpg", threshold=0.0).same


def test_gallery_enroll_identify_remove(world, tmp_path, monkeypatch):
    seen = []
    real_progress = console.progress

    def spy(description, total):
        seen.append((description, console.MODE.tqdm))
        return real_progress(description, total)

    monkeypatch.setattr(console, "progress", spy)
    gallery = api.Gallery(tmp_path / "g.h5", PixelEmbedder())
    enrolled = gallery.enroll(world["people"], landmarks="annotation")
    assert enrolled.added_templates == 4 and gallery.identities() == {"Alice": 2, "Bob": 2}
    found = gallery.identify(world["probe"], landmarks="annotation")
    assert found.images[0].faces[0].name == "Alice"
    assert ("Enrolling", True) in seen and ("Identifying", True) in seen  # tqdm.auto bars inside the API
    assert not console.MODE.tqdm  # and rich again outside it
    assert gallery.remove("Bob") == 2 and gallery.identities() == {"Alice": 2}
    assert "Gallery(" in repr(gallery)


def test_load_model(mbf_model):
    model = api.load_model(mbf_model, network="mbf", backend="torch")
    assert (
        model.backend == "torch"
        and model.network == "mbf"
        and model.embedding_size == 128
        and len(model.fingerprint) == 20
    )


# ------------------------------------------------------------------------------------------
# photos as notebooks hand them: paths, RGB arrays, PIL images, OpenCV frames (bgr=True)
# ------------------------------------------------------------------------------------------


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_load_image_is_rgb_and_upright(tmp_path):
    import cv2
    from photo_helpers import astronaut_bgr

    bgr = astronaut_bgr()
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    rgb = api.load_image(tmp_path / "a.png")
    assert rgb.dtype == np.uint8 and rgb.shape == bgr.shape
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    # a phone JPEG stored turned, with EXIF orientation 6: upright once loaded
    from test_pipeline import _exif_rotated_jpeg

    (tmp_path / "phone.jpg").write_bytes(_exif_rotated_jpeg(bgr))
    assert api.load_image(tmp_path / "phone.jpg").shape == bgr.shape


def test_every_photo_kind_gives_the_same_embedding(tmp_path):
    import cv2
    from photo_helpers import ColourEmbedder, head_and_shoulders
    from PIL import Image

    path = tmp_path / "profile.png"
    head_and_shoulders(path)  # a 224 px square portrait: detected, not taken as a crop
    model = ColourEmbedder()
    by_path = api.embed(model, path)
    kinds = {
        "str": api.embed(model, str(path)),
        "rgb": api.embed(model, api.load_image(path)),
        "pil": api.embed(model, Image.open(path)),
        "bgr": api.embed(model, cv2.imread(str(path)), bgr=True),
    }
    for kind, vector in kinds.items():
        assert vector.shape == (model.embedding_size,)
        assert _cos(vector, by_path) >= 0.999, kind
    # the check can fail: an OpenCV frame passed as if it were RGB is another embedding
    assert _cos(api.embed(model, cv2.imread(str(path))), by_path) < 0.99
    faces = api.detect(api.load_image(path))
    assert len(faces) == 1 and faces[0].box[2] < 120  # the face, not the whole 224 px square


def test_wrong_shapes_and_dtypes_say_what_was_expected(tmp_path):
    from photo_helpers import ColourEmbedder, head_and_shoulders

    from kface_cli.errors import KFaceError

    model = ColourEmbedder()
    rgb = head_and_shoulders()[..., ::-1]
    with pytest.raises(KFaceError, match=r"uint8 image .* got dtype float64"):
        api.embed(model, rgb / 255.0)
    with pytest.raises(KFaceError, match=r"shape \(H, W, 3\), got shape \(224, 224\)"):
        api.embed(model, rgb[..., 0])
    with pytest.raises(KFaceError, match=r"embed_aligned"):
        api.embed(model, np.stack([rgb, rgb]))
    with pytest.raises(KFaceError, match=r"\(112, 112, 3\) or \(N, 112, 112, 3\), got \(224, 224, 3\)"):
        api.embed_aligned(model, rgb)
    with pytest.raises(KFaceError, match="file path, an RGB"):
        api.detect(12345)
    with pytest.raises(KFaceError, match="photo2 must be a uint8"):
        api.verify(model, rgb, rgb.astype(np.float32))
    with pytest.raises(KFaceError, match=r"shape \(32,\) or \(N, 32\)"):
        api.Gallery(tmp_path / "g.h5", model).add("Eileen", np.ones(31, np.float32))
    with pytest.raises(KFaceError, match="no face found in <array>"):
        api.embed(model, np.full((200, 200, 3), 128, np.uint8))


def test_gallery_add_from_arrays_identifies_an_array(tmp_path):
    import json

    import cv2
    from photo_helpers import ColourEmbedder, group_of_six, head_and_shoulders

    from kface_cli.errors import KFaceError

    model = ColourEmbedder()
    gallery = api.Gallery(tmp_path / "g.h5", model)
    photo = head_and_shoulders()[..., ::-1].copy()  # RGB
    added = gallery.add("Eileen Collins", photo)
    assert added.added and added.templates == 1 and added.face_count == 1 and added.box[2] < 120
    assert not gallery.add("Eileen Collins", photo).added  # the same template again: a no-op
    other = np.ascontiguousarray(np.rot90(photo, 2))  # upside down: no face
    with pytest.raises(KFaceError, match="no face found"):
        gallery.add("Upside", other)
    vector = api.embed(model, cv2.flip(photo, 1))
    assert gallery.add("Mirror", vector).added  # one embedding
    for bad in ("unknown", "Unknown", "", "  "):
        with pytest.raises(KFaceError, match="cannot be a person's name"):
            gallery.add(bad, photo)
    assert gallery.identities() == {"Eileen Collins": 1, "Mirror": 1}
    found = gallery.identify(photo)
    assert found.images[0].image == "<array 0>" and found.images[0].faces[0].name == "Eileen Collins"
    frame = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    assert gallery.identify([frame], bgr=True).images[0].faces[0].name == "Eileen Collins"
    group = gallery.identify(group_of_six()[..., ::-1].copy())
    assert group.faces == 6 and group.to_json()["face_count"] == 6
    for result in (found, group, added):
        json.dumps(result.to_json())


def test_results_are_plain_json(tmp_path):
    import json

    from photo_helpers import ColourEmbedder, head_and_shoulders

    model = ColourEmbedder()
    photo = head_and_shoulders(tmp_path / "p.png")
    result = api.verify(model, tmp_path / "p.png", photo, bgr=True)
    assert result.same and result.distance < 1e-6
    data = json.loads(json.dumps(result.to_json()))
    assert data["image1"] == str(tmp_path / "p.png") and data["image2"] == "<array>"
    assert [f["face_count"] for f in data["faces"]] == [1, 1] and data["faces"][0]["box"][2] < 120
    json.dumps([f.to_json() for f in api.detect(photo, bgr=True)])
    gallery = api.Gallery(tmp_path / "g.h5", model)
    people = tmp_path / "people"
    head_and_shoulders(people / "Eileen Collins.png")
    json.dumps(gallery.enroll(people).to_json())


def _python_blocks(path, heading: str | None = None) -> list[str]:
    """The ```python blocks of a Markdown file (only under ``heading`` when given)."""
    import re
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    if heading is not None:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        text = text[start : end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.slow
def test_the_documented_examples_run_as_written(tmp_path, monkeypatch, mbf_model):
    """docs/python-api.md and README's Python API section, run in a folder holding their files."""
    import shutil
    from pathlib import Path

    from photo_helpers import group_of_six, head_and_shoulders

    from kface_cli.embedding.export import export_model

    root = Path(__file__).parent.parent
    export_model(mbf_model, tmp_path / "demo.onnx", network="mbf")
    head_and_shoulders(tmp_path / "photo.jpg")
    group_of_six(tmp_path / "party.jpg")
    (tmp_path / "people").mkdir()
    shutil.copy(tmp_path / "photo.jpg", tmp_path / "people" / "Eileen Collins.jpg")
    monkeypatch.chdir(tmp_path)
    docs = _python_blocks(root / "docs" / "python-api.md")
    readme = _python_blocks(root / "README.md", "## Python API")
    assert len(docs) >= 2 and readme
    namespace: dict = {}
    for block in docs:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    assert namespace["result"].same and namespace["face"].name == "Eileen Collins"
    assert namespace["faces"][0].box[2] < 120 and len(namespace["crops"]) == 6
    for block in readme:
        exec(compile(block, "README.md", "exec"), {})


def test_a_path_is_a_model_everywhere(world, tmp_path):
    from kface_cli.errors import InputError, KFaceError

    alice = world["people"] / "Alice" / "0.jpg"
    with pytest.raises(InputError, match="model not found"):  # was AttributeError: 'str' has no 'embed'
        api.verify(str(tmp_path / "model.onnx"), alice, alice)
    with pytest.raises(InputError, match="model not found"):
        api.embed(tmp_path / "model.onnx", alice)
    with pytest.raises(KFaceError, match="model must be a loaded model"):
        api.verify(42, alice, alice)  # type: ignore[arg-type]


@pytest.mark.slow
def test_verify_with_a_model_path(world, mbf_model):
    alice = world["people"] / "Alice" / "0.jpg"
    by_path = api.verify(str(mbf_model), alice, alice)
    assert by_path.same and by_path.model["network"] == "mbf"
    assert api.Gallery(world["root"] / "g.h5", str(mbf_model)).model.fingerprint == by_path.model["fingerprint"]
