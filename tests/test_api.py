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
    from_crops = api.embed(model, np.stack(crops))
    from_path = api.embed(model, world["probe"])  # one photo: its largest face, shape (D,)
    assert from_crops.shape == (1, 64) and from_path.shape == (64,)
    assert np.allclose(from_crops[0], from_path, atol=1e-5)
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
