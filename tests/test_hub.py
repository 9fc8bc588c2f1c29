"""Model packs (kface_cli.hub): fetching from a local server on 127.0.0.1, the atomic cache, finding
the recognition model by its signature, resolving a pack's name wherever a model is accepted.

Nothing here reaches beyond the machine: every URL is a server these tests start on 127.0.0.1, or
a port on 127.0.0.1 where nothing listens.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hub_helpers import EMB, PackServer, closed_port, decoy_onnx, make_zip, sha256, tiny_onnx
from typer.testing import CliRunner

from kface_cli.archive import UnsafeArchiveError
from kface_cli.cli import app
from kface_cli.errors import InputError
from kface_cli.hub import cache
from kface_cli.hub.fetch import DownloadError, LicenceNotAccepted, fetch_pack

FAST = {"connect_timeout": 2.0, "read_timeout": 1.0}


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict:
    """Bytes of a good pack (recognition model in a sub-folder, decoy beside it) and of bad ones."""
    folder = tmp_path_factory.mktemp("packparts")
    model = tiny_onnx(folder).read_bytes()
    decoy = decoy_onnx(folder / "decoy.onnx").read_bytes()
    good = make_zip(folder / "good.zip", {"pack/det_like.onnx": decoy, "pack/sub/face.onnx": model}).read_bytes()
    evil = make_zip(folder / "evil.zip", {"face.onnx": model, "../escaped.onnx": decoy}).read_bytes()
    only_decoy = make_zip(folder / "decoy.zip", {"genderage.onnx": decoy}).read_bytes()
    two = make_zip(folder / "two.zip", {"a.onnx": model, "b.onnx": model}).read_bytes()
    return {"model": model, "decoy": decoy, "good": good, "evil": evil, "only_decoy": only_decoy, "two": two}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """$KFACE_HOME in a fresh folder; the current folder is an empty one that must stay empty."""
    root = tmp_path / "kface-home"
    monkeypatch.setenv("KFACE_HOME", str(root))
    monkeypatch.setenv("KFACE_CACHE", str(tmp_path / "onnx-cache"))
    monkeypatch.delenv("KFACE_MODELS_MIRROR", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return root


def _leftovers(home: Path) -> list[str]:
    """Everything under $KFACE_HOME/models but the digest record (which never looks like a pack)."""
    models = home / "models"
    return sorted(p.name for p in models.iterdir() if p.name != cache.DIGESTS) if models.is_dir() else []


def _nothing_written(home: Path) -> None:
    assert _leftovers(home) == []
    assert list(Path.cwd().iterdir()) == []  # nothing written outside $KFACE_HOME
    assert cache.cached_pack("mypack") is None and cache.resolve_pack("mypack") is None


def test_good_pack_is_cached_found_by_signature_and_resolved(parts, home, tmp_path):
    from kface_cli.embedding.loading import load_embedder

    with PackServer({"pack.zip": (parts["good"], "ok")}) as server:
        result = fetch_pack(server.url("pack.zip"), name="mypack", sha256=sha256(parts["good"]), **FAST)
    assert result.status == "fetched" and result.path == home / "models" / "mypack"
    m = result.manifest
    assert m["recognition"]["file"] == "pack/sub/face.onnx" and m["recognition"]["embedding_size"] == EMB
    assert [o["file"] for o in m["other_models"]] == ["pack/det_like.onnx"]  # listed, left alone
    assert m["other_models"][0]["inputs"] == [[1, 3, 96, 96]]
    assert m["sha256"] == sha256(parts["good"]) and m["sha256_checked"] == "given (--sha256)"
    assert _leftovers(home) == ["mypack"] and list(Path.cwd().iterdir()) == []
    assert not (result.path / "download.bin").exists()
    # the name works wherever a model is accepted, and gives the same embeddings as the file itself
    file = cache.resolve_pack("mypack")
    assert file == result.path / "pack" / "sub" / "face.onnx"
    (tmp_path / "direct.onnx").write_bytes(parts["model"])
    faces = np.random.default_rng(0).integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
    by_name = load_embedder("mypack", workdir=tmp_path).embed(faces)
    from kface_cli import api

    np.testing.assert_allclose(api.load_model("mypack", workdir=tmp_path).embed(faces), by_name, atol=1e-6)
    direct = load_embedder(tmp_path / "direct.onnx").embed(faces)
    np.testing.assert_allclose(by_name, direct, atol=1e-6)
    # listed, then forgotten
    listed = {p["name"]: p for p in cache.catalog()["packs"]}
    assert listed["mypack"]["cached"] and listed["mypack"]["sha256"] == sha256(parts["good"])
    assert not listed["buffalo_l"]["cached"] and "non-commercial" in listed["buffalo_l"]["licence"]
    cache.remove_pack("mypack")
    assert _leftovers(home) == [] and cache.resolve_pack("mypack") is None
    with pytest.raises(InputError, match="no pack named"):
        cache.remove_pack("mypack")


def test_wrong_checksum_keeps_nothing(parts, home):
    with PackServer({"pack.zip": (parts["good"], "ok")}) as server:
        with pytest.raises(DownloadError, match="SHA-256"):
            fetch_pack(server.url("pack.zip"), name="mypack", sha256="0" * 64, **FAST)
    _nothing_written(home)


def test_cut_download_keeps_nothing(parts, home):
    with PackServer({"pack.zip": (parts["good"], "cut")}) as server:
        with pytest.raises(DownloadError, match="cut short"):
            fetch_pack(server.url("pack.zip"), name="mypack", **FAST)
    _nothing_written(home)
    assert "pack.zip" not in json.dumps(cache.recorded_digests())  # no digest recorded from a broken download


def test_path_traversal_member_refuses_the_pack(parts, home, tmp_path):
    with PackServer({"pack.zip": (parts["evil"], "ok")}) as server:
        with pytest.raises(UnsafeArchiveError, match=r"\.\./escaped\.onnx"):
            fetch_pack(server.url("pack.zip"), name="mypack", **FAST)
    _nothing_written(home)
    assert not (home / "escaped.onnx").exists() and not (home / "models" / "escaped.onnx").exists()


def test_server_that_never_answers_times_out(parts, home):
    with PackServer({"pack.zip": (parts["good"], "hang")}) as server:
        with pytest.raises(DownloadError, match="sent nothing for 1 s"):
            fetch_pack(server.url("pack.zip"), name="mypack", **FAST)
    _nothing_written(home)


def test_offline_known_pack_gives_the_manual_route(monkeypatch, home):
    port = closed_port()
    monkeypatch.setenv("KFACE_MODELS_MIRROR", f"http://127.0.0.1:{port}/v0.7")
    r = CliRunner().invoke(app, ["models", "get", "buffalo_l", "--accept-licence"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert f"http://127.0.0.1:{port}/v0.7/buffalo_l.zip" in lines[0] and "connection refused" in lines[0]
    assert "kface models get buffalo_l.zip --name buffalo_l --accept-licence" in lines[0]
    assert _leftovers(home) == []


def test_known_pack_needs_its_licence_accepted(monkeypatch, parts, home):
    with PackServer({"buffalo_sc.zip": (parts["good"], "ok")}) as server:
        monkeypatch.setenv("KFACE_MODELS_MIRROR", server.url("").rstrip("/"))
        r = CliRunner().invoke(app, ["models", "get", "buffalo_sc"])  # not a terminal: no prompt
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
        assert "non-commercial research use only" in r.output and "--accept-licence" in r.output
        assert server.requests == []  # nothing downloaded before the licence is accepted
        with pytest.raises(LicenceNotAccepted):
            fetch_pack("buffalo_sc", confirm=lambda question: False, **FAST)
        result = fetch_pack("buffalo_sc", confirm=lambda question: "non-commercial" in question, **FAST)
        assert result.manifest["licence_accepted"] and result.manifest["sha256_checked"] == "none (recorded now)"
        # the digest of the first download is recorded, shown, and checked the next time
        assert cache.recorded_digests()["buffalo_sc"]["sha256"] == sha256(parts["good"])
        cache.remove_pack("buffalo_sc")
        server.routes["buffalo_sc.zip"] = (parts["only_decoy"], "ok")  # the file changed upstream
        with pytest.raises(DownloadError, match="recorded at the first download"):
            fetch_pack("buffalo_sc", accept_licence=True, **FAST)
    assert _leftovers(home) == []


def test_packs_without_exactly_one_recognition_model_are_refused(parts, home):
    with PackServer({"decoy.zip": (parts["only_decoy"], "ok"), "two.zip": (parts["two"], "ok")}) as server:
        with pytest.raises(InputError, match=r"no face-recognition model.*genderage\.onnx \[\[1, 3, 96, 96\]\]"):
            fetch_pack(server.url("decoy.zip"), name="mypack", **FAST)
        with pytest.raises(InputError, match="2 face-recognition models"):
            fetch_pack(server.url("two.zip"), name="mypack", **FAST)
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch_pack(server.url("missing.zip"), name="mypack", **FAST)
    _nothing_written(home)


def test_local_files_and_names(parts, home, tmp_path):
    model = tmp_path / "w600k_like.onnx"
    model.write_bytes(parts["model"])
    result = fetch_pack(str(model))  # one .onnx file: a pack of one model, named after the file
    assert result.name == "w600k_like" and result.manifest["recognition"]["file"] == "w600k_like.onnx"
    assert fetch_pack(str(model)).status == "already cached"
    with pytest.raises(InputError, match="already cached"):
        fetch_pack(str(model), name="w600k_like", sha256="1" * 64)  # another file under a taken name
    archive = tmp_path / "manual.zip"
    archive.write_bytes(parts["good"])
    assert fetch_pack(str(archive), name="buffalo_l", accept_licence=True).manifest["licence_accepted"]
    for bad in ("../x", ".hidden", "a/b", "-x"):
        with pytest.raises(InputError, match="bad pack name"):
            fetch_pack(str(archive), name=bad)
    with pytest.raises(InputError, match="not a known pack, a URL or a file"):
        fetch_pack("no_such_pack")
    with pytest.raises(InputError, match="not a SHA-256"):
        fetch_pack(str(archive), name="x", sha256="abc")


def test_a_name_that_is_both_a_run_and_a_pack_is_refused(parts, home, tmp_path):
    from kface_cli.embedding.loading import resolve_model_path

    archive = tmp_path / "p.zip"
    archive.write_bytes(parts["good"])
    fetch_pack(str(archive), name="tiny")
    assert resolve_model_path("tiny", tmp_path / "ws").name == "face.onnx"
    (tmp_path / "ws" / "runs" / "tiny").mkdir(parents=True)
    with pytest.raises(InputError, match="both a run"):
        resolve_model_path("tiny", tmp_path / "ws")
    with zipfile.ZipFile(archive) as z:  # a pack changed by hand since it was fetched is refused
        size = len(z.read("pack/sub/face.onnx"))
    (home / "models" / "tiny" / "pack" / "sub" / "face.onnx").write_bytes(b"\0" * (size - 1))
    with pytest.raises(InputError, match="missing or changed"):
        cache.resolve_pack("tiny")


@pytest.mark.slow
def test_cli_done_when_flow(parts, home, tmp_path):
    """models get URL --sha256, enroll/identify/verify --model mypack, models list, models remove."""
    from gallery_helpers import people_folder

    people = people_folder(tmp_path / "people", {"Alice": "19062101", "Bob": "19062102"}, photos_each=2)
    probe = people / "Alice" / "0.jpg"
    runner = CliRunner()
    with PackServer({"pack.zip": (parts["good"], "ok")}) as server:
        r = runner.invoke(
            app,
            ["models", "get", server.url("pack.zip"), "--name", "mypack", "--sha256", sha256(parts["good"]), "--json"],
        )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["recognition"]["file"] == "pack/sub/face.onnx"
    gallery = tmp_path / "g.h5"
    common = ["--model", "mypack", "--landmarks", "annotation", "-w", str(tmp_path)]
    r = runner.invoke(app, ["enroll", str(people), "-g", str(gallery), *common, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["templates_added"] == 4
    r = runner.invoke(app, ["identify", str(probe), "-g", str(gallery), *common, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["images"][0]["faces"][0]["name"] == "Alice"  # an enrolled photo: distance ~0
    assert data["threshold_source"] == "uncalibrated" and "--save-threshold" in data["threshold_hint"]
    r = runner.invoke(app, ["identify", str(probe), "-g", str(gallery), *common, "-q"])
    assert r.exit_code == 0 and "NOT calibrated" in r.stdout
    r = runner.invoke(app, ["verify", str(probe), str(people / "Alice" / "1.jpg"), *common])
    assert "threshold NOT calibrated for this model" in r.stdout and "--save-threshold" in r.output
    # a model trained on synthetic faces only says so in the table's title, also with -q
    import onnx

    from kface_cli.dataset.provenance import META_TRAINING_DATA, SYNTHETIC_TITLE_NOTE

    proto = onnx.load_from_string(parts["model"])
    prop = proto.metadata_props.add()
    prop.key, prop.value = META_TRAINING_DATA, json.dumps({"synthetic": True, "synthetic_only": True})
    onnx.save(proto, str(tmp_path / "synthetic.onnx"))
    pair = [str(probe), str(people / "Alice" / "1.jpg"), "--landmarks", "annotation", "-q"]
    r = runner.invoke(app, ["verify", *pair, "--model", str(tmp_path / "synthetic.onnx")])
    assert SYNTHETIC_TITLE_NOTE[:30] in r.stdout  # a narrow terminal may wrap the rest of the title
    r = runner.invoke(app, ["models", "list", "--json"])
    listed = {p["name"]: p for p in json.loads(r.stdout)["packs"]}
    assert listed["mypack"]["cached"] and listed["mypack"]["sha256"] == sha256(parts["good"])
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "mypack" in r.stdout and "buffalo_l" in r.stdout
    r = runner.invoke(app, ["models", "remove", "mypack"])
    assert r.exit_code == 0 and _leftovers(home) == []
    r = runner.invoke(app, ["identify", str(probe), "-g", str(gallery), *common])
    assert r.exit_code == 2 and "model not found: mypack" in r.output
