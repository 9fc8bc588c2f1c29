"""kface invert: the BatchNorm-prior hooks (known values), the inversion loss decreasing, targets
from an embedding file, an aligned face and a gallery, and the refusals (ONNX, two targets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.models import calibrated
from torch import nn
from typer.testing import CliRunner

from kface_cli.cli import app
from kface_cli.embedding.export import synthetic_faces
from kface_cli.face.imageio import read_image, write_image
from kface_cli.face.preprocess import faces_to_input
from kface_cli.models.registry import get_backbone
from kface_cli.research.invert import BatchNormPrior, invert_embedding, output_paths


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("KFACE_NO_PROGRESS", "1")


def test_bn_prior_measures_distance_to_running_statistics_and_leaves_the_model_alone():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    bn.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    net = nn.Sequential(bn, nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.BatchNorm1d(4)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with BatchNormPrior(net) as prior:
        assert len(prior.layers) == 1  # BatchNorm1d (features) is not a spatial statistic
        net(x)
        assert prior.loss().item() == pytest.approx(0.0, abs=1e-5)  # matching statistics: no penalty
        shifted = x.clone()
        shifted[:, 0] += 2.0  # channel 0's mean moves by 2, its variance stays
        net(shifted)
        assert prior.loss().item() == pytest.approx(2.0, abs=1e-4)
        scaled = x * 3.0  # variances x9: distance = ||8 var||, means x3: ||2 mean||
        net(scaled)
        want = (2 * bn.running_mean).norm() + (8 * bn.running_var).norm()
        assert prior.loss().item() == pytest.approx(want.item(), rel=1e-4)
        with pytest.raises(AssertionError, match="forward first"):
            prior.loss()  # each loss() consumes the terms of one forward
    assert not bn._forward_hooks  # hooks removed on exit
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # eval mode: running statistics never updated


def _tiny_backbone() -> nn.Module:
    torch.manual_seed(0)
    return calibrated(get_backbone("mbf_small", embedding_size=32))


def _small_net() -> nn.Module:
    """conv-BN-ReLU twice, then an embedding: a backbone in miniature, cheap enough for 40 steps."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 16, 32),
    )  # fmt: skip
    return calibrated(net)


def test_inversion_loss_decreases_and_the_faces_move_towards_their_targets():
    net = _small_net()
    with torch.no_grad():
        targets = net(torch.from_numpy(faces_to_input(synthetic_faces(2, seed=3)))).numpy()
    for prior in (True, False):
        # without the random shift/flip the descent is deterministic: the loss itself must fall
        inv = invert_embedding(net, targets, steps=40, lr=0.05, seeds=[0, 1], bn_prior=prior, augment=False)
        assert inv.images.shape == (2, 112, 112, 3) and inv.images.dtype == np.uint8
        assert len(inv.losses) == 40
        assert np.mean(inv.losses[-5:]) < 0.8 * np.mean(inv.losses[:5])
        start = invert_embedding(net, targets, steps=1, lr=1e-9, seeds=[0, 1], bn_prior=prior)  # the noise
        assert inv.cosines.mean() > start.cosines.mean() + 0.1
        jittered = invert_embedding(net, targets, steps=40, lr=0.05, seeds=[0, 1], bn_prior=prior)
        assert jittered.cosines.mean() > start.cosines.mean() + 0.1  # with augmentation too
    assert all(not p.requires_grad for p in net.parameters())  # the weights were never trained


def test_seeds_pick_the_starting_noise():
    net = _small_net()
    target = np.ones(32, np.float32)
    a = invert_embedding(net, target, steps=3, seeds=[5, 6])  # one target, two seeds: two faces
    b = invert_embedding(net, target, steps=3, seeds=[5, 6])
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images[0], a.images[1])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "backbone.pth"
    torch.save(_tiny_backbone().state_dict(), path)
    return path


@pytest.fixture
def invert_cmd(model_file):
    return ["invert", "-m", str(model_file), "--network", "mbf_small"]


@pytest.mark.slow
def test_invert_command_embedding_file_and_aligned_face(invert_cmd, tmp_path):
    emb = tmp_path / "e.npy"
    np.save(emb, np.linspace(-1, 1, 32, dtype=np.float32))
    r = CliRunner().invoke(
        app,
        invert_cmd + ["--embedding", str(emb), "--out", str(tmp_path / "f.png"), "--steps", "3", "--n", "2", "--json"],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [o["path"] for o in doc["outputs"]] == [str(tmp_path / "f-1.png"), str(tmp_path / "f-2.png")]
    assert [o["seed"] for o in doc["outputs"]] == [0, 1] and doc["bn_prior"] is True
    assert read_image(tmp_path / "f-2.png").shape == (112, 112, 3)
    face = tmp_path / "face.png"
    write_image(face, synthetic_faces(1, seed=1)[0])
    r = CliRunner().invoke(
        app,
        invert_cmd + ["--image", str(face), "--out", str(tmp_path / "g.jpg"), "--steps", "2", "--no-bn-prior"],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.jpg").is_file() and "prior off" in r.output


def test_invert_gallery_identity_target(model_file, invert_cmd, tmp_path):
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.embedding.loading import load_torch_backbone
    from kface_cli.gallery.schema import ModelInfo, Template, content_hash
    from kface_cli.gallery.store import Gallery

    module, net, size, src = load_torch_backbone(model_file, network="mbf_small", purpose="test")
    emb = embedder_from_module(module, network=net, backend="torch", source=src, embedding_size=size)
    vectors = emb.embed(synthetic_faces(3, seed=2))
    g = Gallery(tmp_path / "g.h5")
    g.append(
        [
            Template(n, v, f"{n}{i}", content_hash(f"{n}{i}".encode()))
            for i, (n, v) in enumerate(zip(["ann", "ann", "bo"], vectors))
        ],
        ModelInfo.of(emb),
    )
    args = invert_cmd + ["--gallery", str(tmp_path / "g.h5"), "--steps", "2"]
    r = CliRunner().invoke(app, args + ["--name", "ann", "--out", str(tmp_path / "a.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert "ann (2 templates" in json.loads(r.stdout)["target"]
    r = CliRunner().invoke(app, args + ["--name", "cy", "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 2 and "'cy' is not in gallery" in r.output


def test_invert_refuses_onnx_two_targets_and_bad_files(model_file, invert_cmd, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read")
    emb = tmp_path / "e.npy"
    np.save(emb, np.ones(32, np.float32))
    r = CliRunner().invoke(app, ["invert", "-m", str(onnx), "--embedding", str(emb), "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "kface invert needs the torch weights" in r.output and "Traceback" not in r.output
    base = invert_cmd + ["--out", str(tmp_path / "x.png")]
    r = CliRunner().invoke(app, base + ["--embedding", str(emb), "--name", "ann"])
    assert r.exit_code == 2 and "exactly one target" in r.output
    np.save(emb, np.ones(7, np.float32))
    r = CliRunner().invoke(app, base + ["--embedding", str(emb)])
    assert r.exit_code == 2 and "vector of 32 numbers" in r.output
    pickled = tmp_path / "p.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = CliRunner().invoke(app, base + ["--embedding", str(pickled)])
    assert r.exit_code == 2 and "cannot read" in r.output
    assert output_paths(tmp_path / "x.png", 1) == [tmp_path / "x.png"]
    r = CliRunner().invoke(
        app, ["invert", "-m", str(model_file), "--embedding", str(emb), "--out", str(tmp_path / "x.gif")]
    )
    assert r.exit_code == 2 and "must be a .png or .jpg" in r.output
