"""Bulk enrolment of precomputed embeddings: ``kface enroll --embeddings`` and ``Gallery.add_embeddings``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from kface_cli.cli import app
from kface_cli.deploy.bulk import enroll_embeddings, identity_names
from kface_cli.deploy.compare import save_embeddings
from kface_cli.errors import InputError, ModelMismatchError
from kface_cli.gallery.store import Gallery, ModelInfo

REPO = Path(__file__).resolve().parents[1]
MODEL = {"network": "mbf", "fingerprint": "ab" * 10, "embedding_size": 16, "source": "/runs/x/backbone.pth"}


def _vectors(n, dim=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _file(path: Path, names, vectors, model=MODEL) -> Path:
    save_embeddings(path, names, vectors, model)
    return path


def test_cli_enrolls_an_embed_file_with_names_from_folders(tmp_path):
    entries = [f"/photos/{p}/{i}.jpg" for i, p in enumerate(["김철수", "김철수", "Alice", "Bob"])]
    x = _vectors(4) * 3.0  # not unit: normalised on the way in
    f = _file(tmp_path / "emb.h5", entries, x)
    g = tmp_path / "gallery.h5"
    r = CliRunner().invoke(app, ["enroll", "--embeddings", str(f), "-g", str(g), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["templates_added"], len(out["identities"]), out["names_from"]) == (4, 3, "folder")
    assert out["identities"][0] == {"name": "Alice", "rows": 1, "added": 1, "duplicates": 0, "templates": 1}
    rows = Gallery(g).read(details=True)
    assert rows.names == ["김철수", "김철수", "Alice", "Bob"] and rows.sources == entries
    np.testing.assert_allclose(rows.embeddings, x / 3.0, atol=2e-3)
    assert Gallery(g).model().fingerprint == MODEL["fingerprint"]
    again = CliRunner().invoke(app, ["enroll", "--embeddings", str(f), "-g", str(g), "--json"])
    second = json.loads(again.stdout)
    assert second["templates_added"] == 0 and second["duplicates"] == 4  # enrolling the same file twice adds nothing
    assert {k for k in ("gallery", "model", "templates_added", "identities", "problems")} <= second.keys()
    assert Gallery(g).facts().templates == 4


def test_names_from_each_mode_and_ambiguity():
    paths = ["/a/ALICE/1.jpg", "/a/BOB.jpg"]
    assert identity_names(paths, "folder")[0] == ["ALICE", "a"]
    assert identity_names(paths, "stem")[0] == ["1", "BOB"]
    assert identity_names(["Alice ", "Bob"], "auto") == (["Alice", "Bob"], identity_names(["x"], "entry")[1])
    with pytest.raises(InputError, match="--names-from"):
        identity_names(["Alice", "/p/Bob/1.jpg"], "auto")
    with pytest.raises(InputError, match="empty identity name"):
        identity_names(["/1.jpg"], "folder")


def test_model_of_the_file_must_be_the_gallerys(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    g.append_vectors(["A"], _vectors(1), ModelInfo("cd" * 10, 16, "r50", "/runs/y"))
    f = _file(tmp_path / "emb.h5", ["B"], _vectors(1, seed=1))
    with pytest.raises(ModelMismatchError, match="another model"):
        enroll_embeddings(f, g.path)
    r = CliRunner().invoke(app, ["enroll", "--embeddings", str(f), "-g", str(g.path)])
    assert r.exit_code == 2 and "another model" in r.output and "Traceback" not in r.output
    assert g.identities() == {"A": 1}


@pytest.mark.parametrize(
    "how",
    ["no model", "model without fingerprint", "1-D embeddings", "names count", "int embeddings", "not hdf5", "nan"],
)
def test_bad_embedding_files_are_one_line_and_enrol_nothing(tmp_path, how):
    f = tmp_path / "emb.h5"
    x = _vectors(3)
    if how == "not hdf5":
        f.write_bytes(b"nope" * 100)
    else:
        with h5py.File(f, "w") as h:
            h["embeddings"] = {
                "1-D embeddings": x.reshape(-1),
                "int embeddings": (x * 100).astype(np.int32),
            }.get(how, x)
            if how == "nan":
                h["embeddings"][2, 3] = np.nan
            h.create_dataset(
                "names", data=["a", "b"] if how == "names count" else ["a", "b", "c"], dtype=h5py.string_dtype()
            )
            if how != "no model":
                h.attrs["model"] = json.dumps({} if how == "model without fingerprint" else MODEL)
    g = tmp_path / "gallery.h5"
    r = CliRunner().invoke(app, ["enroll", "--embeddings", str(f), "-g", str(g)])
    assert r.exit_code == 2, r.output
    assert "emb.h5" in r.output and "Traceback" not in r.output
    assert not g.exists() or Gallery(g).facts().templates == 0


def test_folder_and_embeddings_together_are_refused(tmp_path):
    f = _file(tmp_path / "emb.h5", ["a"], _vectors(1))
    r = CliRunner().invoke(app, ["enroll", str(tmp_path), "--embeddings", str(f), "-g", str(tmp_path / "g.h5")])
    assert r.exit_code == 2 and "not both" in r.output


class _Model:
    network, embedding_size, source, fingerprint = "mbf", 16, None, "ab" * 10


def test_api_add_embeddings_checks_and_normalises(tmp_path):
    from kface_cli import api

    g = api.Gallery(tmp_path / "gallery.h5", _Model())
    x = _vectors(5) * 7
    assert g.add_embeddings(["a", "b", "a", "c", "d"], x) == 5
    assert g.add_embeddings(["a", "b", "a", "c", "d"], x) == 0  # already there
    assert g.identities() == {"a": 2, "b": 1, "c": 1, "d": 1}
    for bad, match in [
        (np.zeros((1, 16)), "zero"),
        (np.full((1, 16), np.nan), "not finite"),
        (np.full((1, 16), np.inf), "not finite"),
        (np.ones((1, 8)), "do not fit"),
        (np.ones(16), "one embedding per name"),
    ]:
        with pytest.raises(InputError, match=match):
            g.add_embeddings(["e"], bad)
    assert sum(g.identities().values()) == 5
    with pytest.raises(InputError, match="one embedding per name"):
        g.add_embeddings(["e", "f"], _vectors(1))


def test_gallery_stays_under_1_2_kib_per_512d_template(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    n = 3000
    names = [f"person{i // 3:05d}" for i in range(n)]
    g.append_vectors(
        names,
        _vectors(n, 512),
        ModelInfo("ef" * 10, 512, "r50", "/runs/z"),
        sources=[f"/data/faces/{nm}/{i}.jpg" for i, nm in enumerate(names)],
    )
    per = g.path.stat().st_size / g.facts().templates
    assert per <= 1.2 * 1024, f"{per:.0f} bytes per template"


_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import numpy as np
    from kface_cli.gallery import store
    from kface_cli.deploy.bulk import enroll_embeddings
    path, file, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen = [0]
    real = store._fsync_file

    def dies(p):  # the 3rd batch's rows written, not yet committed
        if Path(p) == Path(path):
            seen[0] += 1
            if seen[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(p)

    store._fsync_file = dies
    enroll_embeddings(file, path, batch_rows=1000, update_index=False)
    """
)


@pytest.mark.slow
def test_sigkill_during_bulk_enrolment_keeps_committed_batches(tmp_path):
    n = 5000
    x = _vectors(n, seed=3)
    f = _file(tmp_path / "emb.h5", [f"id{i % 50}" for i in range(n)], x)
    g = tmp_path / "gallery.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KFACE_NO_PROGRESS": "1"}
    # fsyncs of the gallery: 2 per committed batch (rows, then the commit); the 5th is batch 3's rows
    p = subprocess.run([sys.executable, "-c", _KILLED, str(g), str(f), "5"], env=env, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    rows = Gallery(g).read()
    assert len(rows) == 2000 and Gallery(g).verify()["verified"]
    np.testing.assert_allclose(rows.embeddings, x[:2000], atol=2e-3)
    result = enroll_embeddings(f, g, batch_rows=1000, update_index=False)
    assert (result.added, result.duplicates, result.templates) == (3000, 2000, n)


def test_a_model_named_as_well_must_have_made_the_file(tmp_path):
    f = _file(tmp_path / "emb.h5", ["a", "b"], _vectors(2))

    class Other(_Model):
        fingerprint = "99" * 10

    with pytest.raises(ModelMismatchError, match="than --model"):
        enroll_embeddings(f, tmp_path / "g.h5", embedder=Other())
    assert not (tmp_path / "g.h5").exists()
    assert enroll_embeddings(f, tmp_path / "g.h5", embedder=_Model()).added == 2


def test_a_file_of_every_face_is_not_named_by_its_photos(tmp_path):
    """`kface embed --all-faces` rows share their photo's entry: naming them by it would be a guess."""
    from kface_cli.deploy.compare import UsedFace

    model = {"fingerprint": "f" * 20, "embedding_size": 4, "network": "x"}
    group = "people/Crew/group.jpg"
    faces = [UsedFace(group, k, (10.0 * k, 0.0, 5.0, 5.0), 0.9, "mesh", 2) for k in (1, 2)]
    vectors = np.eye(4, dtype=np.float32)[:2]
    save_embeddings(tmp_path / "all.h5", [group, group], vectors, model, faces=faces)
    with pytest.raises(InputError, match="several faces of some photos"):
        enroll_embeddings(tmp_path / "all.h5", tmp_path / "g.h5")
    one = [
        UsedFace(group, 1, (0.0, 0.0, 5.0, 5.0), 0.9, "mesh", 2),
        UsedFace("people/Eileen/a.jpg", 1, (0.0, 0.0, 5.0, 5.0), 0.9, "mesh", 1),
    ]
    save_embeddings(tmp_path / "one.h5", [f.image for f in one], vectors, model, faces=one)
    with h5py.File(tmp_path / "one.h5") as f:
        assert f["boxes"].shape == (2, 4) and list(f["faces"][()]) == [1, 1]
    with pytest.raises(InputError, match="cannot be a person's name"):
        identity_names(["people/Unknown/a.jpg", "people/Eileen/b.jpg"], "folder")  # what identify says for no match
