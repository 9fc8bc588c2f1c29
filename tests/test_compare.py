"""kface verify and kface embed: distances, verdicts, thresholds, files written and read back, CLI exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gallery_helpers import CODES, PixelEmbedder, mbf_model, render_photo  # noqa: F401 (fixture)

from kface_cli.defaults import DEFAULT_THRESHOLD
from kface_cli.deploy.compare import (
    NAMES_SUFFIX,
    embed_photos,
    load_embeddings,
    save_embeddings,
    verify_photos,
)
from kface_cli.errors import InputError


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return {
        "a1": render_photo(root / "alice" / "1.jpg", "19072651", CODES[0]),
        "a2": render_photo(root / "alice" / "2.jpg", "19072651", CODES[1]),
        "b1": render_photo(root / "bob" / "1.jpg", "19072652", CODES[0]),
        "none": render_photo(root / "noface.jpg", "19072653", CODES[0], sidecar=False),
        "root": root,
    }


def test_verify_same_photo_and_threshold(photos):
    same = verify_photos(photos["a1"], photos["a1"], PixelEmbedder(), landmarks="annotation")
    assert same.same and same.distance == pytest.approx(0.0, abs=1e-5) and same.cosine == pytest.approx(1.0, abs=1e-5)
    assert (same.threshold, same.threshold_source) == (DEFAULT_THRESHOLD, "uncalibrated")
    pair = verify_photos(photos["a1"], photos["b1"], PixelEmbedder(), landmarks="annotation")
    assert 0 < pair.distance <= 4
    strict = verify_photos(photos["a1"], photos["b1"], PixelEmbedder(), threshold=pair.distance, landmarks="annotation")
    assert not strict.same and strict.threshold_source == "given"  # match iff distance < threshold
    data = strict.to_json()
    assert data["same"] is False and data["model"]["fingerprint"] == PixelEmbedder().fingerprint


def test_verify_errors(photos, tmp_path):
    from kface_cli.face.imageio import write_image

    write_image(tmp_path / "wall.jpg", np.full((150, 200, 3), 128, np.uint8))
    with pytest.raises(InputError, match="no face found in .*wall.jpg"):
        verify_photos(photos["a1"], tmp_path / "wall.jpg", PixelEmbedder())
    with pytest.raises(InputError, match="no K-Face annotation"):
        verify_photos(photos["a1"], photos["none"], PixelEmbedder(), landmarks="annotation")
    with pytest.raises(InputError, match="not folders"):
        verify_photos(photos["root"], photos["a1"], PixelEmbedder(), landmarks="annotation")
    with pytest.raises(InputError, match="not found"):
        verify_photos(tmp_path / "x.jpg", photos["a1"], PixelEmbedder())


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_embed_writes_and_reads_back(photos, tmp_path, suffix):
    out = tmp_path / f"faces{suffix}"
    result = embed_photos([photos["root"]], PixelEmbedder(), out, landmarks="annotation")
    assert [Path(p).name for p in result.images] == ["1.jpg", "2.jpg", "1.jpg"] and [p.name for p in result.failed] == [
        "noface.jpg"
    ]
    names, vectors = load_embeddings(out)
    assert names == [str(p) for p in result.images] and vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = verify_photos(photos["a1"], photos["b1"], PixelEmbedder(), landmarks="annotation").distance
    assert float(np.sum((vectors[0] - vectors[2]) ** 2)) == pytest.approx(expected, abs=1e-5)
    assert (result.names_file == out.with_suffix(NAMES_SUFFIX)) == (suffix == ".npy")


def test_embed_without_any_face_writes_nothing_and_keeps_the_earlier_file(photos, tmp_path):
    out = tmp_path / "faces.npy"
    embed_photos([photos["a1"]], PixelEmbedder(), out, landmarks="annotation")
    before = out.read_bytes()
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="no face found in any of the 1 photos"):
        embed_photos([tmp_path / "bad.jpg"], PixelEmbedder(), out, landmarks="detect")
    assert out.read_bytes() == before and load_embeddings(out)[1].shape == (1, 64)


def test_embed_file_types(tmp_path):
    with pytest.raises(InputError, match="cannot tell the file type"):
        save_embeddings(tmp_path / "faces.csv", ["a"], np.zeros((1, 4), np.float32))
    save_embeddings(tmp_path / "k.npy", ["김철수"], np.ones((1, 4), np.float32))
    (tmp_path / "k.names.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(InputError, match="1 embeddings but 2 names"):
        load_embeddings(tmp_path / "k.npy")


def test_embed_never_writes_over_a_gallery_a_photo_or_a_model(photos, tmp_path):
    import os

    from kface_cli.gallery.store import Gallery, ModelInfo, Template, content_hash

    g = tmp_path / "g.h5"
    e = np.ones(64, np.float32) / 8
    Gallery(g).append([Template("ann", e, "a.jpg", content_hash(b"a"))], ModelInfo("f" * 20, 64, "mbf", "/r"))
    before = g.read_bytes()
    with pytest.raises(
        InputError, match="is a kface gallery or an HDF5 file kface did not write; refusing to overwrite it"
    ):
        embed_photos([photos["a1"]], PixelEmbedder(), g, landmarks="annotation")
    assert g.read_bytes() == before
    os.link(photos["a1"], tmp_path / "link.npy")  # a hard link to the input photo
    with pytest.raises(InputError, match="also an input"):
        embed_photos([photos["a1"]], PixelEmbedder(), tmp_path / "link.npy", landmarks="annotation")
    (tmp_path / "m.names.txt").symlink_to(photos["a2"])  # the names file too
    with pytest.raises(InputError, match="also an input"):
        embed_photos([photos["root"]], PixelEmbedder(), tmp_path / "m.npy", landmarks="annotation")


def test_cli_outputs_never_overwrite_the_gallery(photos, tmp_path):
    from typer.testing import CliRunner

    from kface_cli.cli import app
    from kface_cli.gallery.store import Gallery, ModelInfo, Template, content_hash

    g = tmp_path / "g.h5"
    Gallery(g).append(
        [Template("ann", np.ones(8, np.float32) / 8**0.5, "a", content_hash(b"a"))], ModelInfo("f" * 20, 8, "m", "/r")
    )
    before = g.read_bytes()
    for args, words in (
        (["identify", str(photos["a1"]), "--gallery", str(g), "--csv", str(g)], "also an input"),
        (["identify", str(photos["a1"]), "--gallery", str(tmp_path / "x.h5"), "--csv", str(g)], "is a kface gallery"),
        (["embed", str(photos["a1"]), "--out", str(g), "--workdir", str(tmp_path)], "is a kface gallery"),
        (["detect", str(photos["a1"]), "--annotate", str(photos["a1"].parent)], "would overwrite them"),
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and words in result.output, result.output
        assert "Traceback" not in result.output
    assert g.read_bytes() == before


@pytest.mark.slow
def test_cli_verify_exit_codes_and_embed(photos, tmp_path, mbf_model):
    from typer.testing import CliRunner

    from kface_cli.cli import app

    runner = CliRunner()
    base = ["--model", str(mbf_model), "--network", "mbf", "--landmarks", "annotation"]
    r = runner.invoke(app, ["verify", str(photos["a1"]), str(photos["a1"]), *base, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["same"] is True and data["distance"] < 1e-4 and data["threshold_source"] == "uncalibrated"
    r = runner.invoke(app, ["verify", str(photos["a1"]), str(photos["b1"]), *base, "--threshold", "0"])
    assert r.exit_code == 1 and "different people" in r.stdout
    r = runner.invoke(app, ["verify", str(photos["a1"]), str(photos["none"]), *base])
    assert r.exit_code == 2 and "no K-Face annotation" in r.output
    r = runner.invoke(app, ["embed", str(photos["root"] / "alice"), *base, "--out", str(tmp_path / "e.h5")])
    assert r.exit_code == 0, r.output
    names, vectors = load_embeddings(tmp_path / "e.h5")
    assert len(names) == 2 and vectors.shape == (2, 128)
