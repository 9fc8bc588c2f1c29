"""`kface gallery`: facts, identities, removing people, rebuilding the index (domain and CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kface_cli.cli import app
from kface_cli.errors import InputError
from kface_cli.gallery.index import index_paths
from kface_cli.gallery.manage import manage_gallery
from kface_cli.gallery.schema import ModelInfo, Template, content_hash
from kface_cli.gallery.store import Gallery


@pytest.fixture()
def gallery(tmp_path):
    g = Gallery(tmp_path / "gallery.h5")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((7, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    names = ["김철수", "김철수", "김철수", "Alice", "Alice", "Bob", "Bob"]
    g.append(
        [Template(n, e, f"/p/{i}.jpg", content_hash(bytes([i]))) for i, (n, e) in enumerate(zip(names, emb))],
        ModelInfo("c" * 20, 8, "mbf", "/runs/x"),
    )
    return g


def test_report_lists_identities_and_facts(gallery):
    report = manage_gallery(gallery.path)
    assert report["identities"] == [
        {"name": "Alice", "templates": 2},
        {"name": "Bob", "templates": 2},
        {"name": "김철수", "templates": 3},
    ]
    facts = report["facts"]
    assert (facts["templates"], facts["identities"], facts["embedding_size"], facts["network"]) == (7, 3, 8, "mbf")
    assert facts["fingerprint"] == "c" * 20 and report["removed"] == []


def test_remove_and_rebuild(gallery):
    report = manage_gallery(gallery.path, remove=["김철수"])
    assert (
        report["removed"] == [{"name": "김철수", "templates": 3}]
        and report["index"]["rebuilt"]
        and report["index"]["count"] == 4
    )
    assert Gallery(gallery.path).identities() == {"Alice": 2, "Bob": 2}
    with pytest.raises(InputError, match="not in the gallery: Carol"):
        manage_gallery(gallery.path, remove=["Carol"])
    rebuilt = manage_gallery(gallery.path, rebuild_index=True, index_kind="hnsw")
    assert rebuilt["index"]["kind"] == "hnsw" and index_paths(gallery.path)[0].is_file()


def test_cli_gallery(gallery, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["gallery", "-g", str(gallery.path), "--json"])
    assert r.exit_code == 0, r.output
    assert {i["name"] for i in json.loads(r.stdout)["identities"]} == {"Alice", "Bob", "김철수"}
    r = runner.invoke(app, ["gallery", "-g", str(gallery.path), "--remove", "Bob"])
    assert r.exit_code == 0 and "Alice" in r.stdout and "Bob" not in r.stdout.split("Identities")[1]
    r = runner.invoke(app, ["gallery", "-w", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "gallery not found" in r.output
