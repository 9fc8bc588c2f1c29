"""Margin heads: logits against the formulas on hand-made inputs, theta + m > pi, Partial FC."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kface_cli.errors import KFaceError
from kface_cli.models.heads import CombinedMargin, HeadConfig, MarginHead, build_head


def ArcFace(s: float, m: float) -> CombinedMargin:
    return CombinedMargin(s, 1.0, m, 0.0)


def CosFace(s: float, m: float) -> CombinedMargin:
    return CombinedMargin(s, 1.0, 0.0, m)


def SphereFace(s: float, m: float) -> CombinedMargin:
    return CombinedMargin(s, m, 0.0, 0.0)


COS = torch.tensor([[0.8, 0.1, -0.3], [-0.95, 0.2, 0.5], [0.3, -0.6, 0.9]])
LABELS = torch.tensor([0, 0, 2])


def _expected(cos: torch.Tensor, labels: torch.Tensor, s: float, psi) -> torch.Tensor:
    out = cos.clone().double()
    for i, j in enumerate(labels.tolist()):
        if j >= 0:
            out[i, j] = psi(float(cos[i, j]))
    return (out * s).float()


def test_arcface_logits_follow_the_formula_and_the_paper_fallback():
    s, m = 64.0, 0.5

    def psi(c):
        if c > math.cos(math.pi - m):
            return math.cos(math.acos(c) + m)
        return c - m * math.sin(m)  # theta + m > pi: the original paper's rule

    got = ArcFace(s, m)(COS, LABELS)
    torch.testing.assert_close(got, _expected(COS, LABELS, s, psi), atol=1e-4, rtol=1e-5)
    # row 1's target (cos -0.95, theta = 2.82 rad, theta + m > pi) took the fallback
    assert got[1, 0].item() == pytest.approx(s * (-0.95 - m * math.sin(m)), abs=1e-4)
    # non-target logits are only scaled
    torch.testing.assert_close(got[0, 1:], s * COS[0, 1:])


def test_cosface_sphereface_combined_and_normsoftmax():
    s = 30.0
    torch.testing.assert_close(CosFace(s, 0.35)(COS, LABELS), _expected(COS, LABELS, s, lambda c: c - 0.35))
    torch.testing.assert_close(CombinedMargin(s, 1.0, 0.0, 0.0)(COS, LABELS), s * COS)

    m1, m2, m3 = 1.2, 0.3, 0.2
    theta_t = (math.pi - m2) / m1

    def psi_combined(c):
        t = math.acos(c)
        return (math.cos(m1 * t + m2) if t <= theta_t else c - math.cos(theta_t) - 1.0) - m3

    torch.testing.assert_close(
        CombinedMargin(s, m1, m2, m3)(COS, LABELS), _expected(COS, LABELS, s, psi_combined), atol=1e-4, rtol=1e-5
    )
    sphere = SphereFace(s, 1.35)(COS, LABELS)
    torch.testing.assert_close(sphere[0, 0], torch.tensor(s * math.cos(1.35 * math.acos(0.8))), atol=1e-4, rtol=1e-5)
    # cos -0.95: theta 2.82 > (pi / 1.35) = 2.33, so the continuous fallback applies
    t_t = math.pi / 1.35
    assert sphere[1, 0].item() == pytest.approx(s * (-0.95 - math.cos(t_t) - 1.0), abs=1e-3)


@pytest.mark.parametrize(
    "margin",
    [
        ArcFace(1.0, 0.5),
        ArcFace(1.0, 0.8),
        SphereFace(1.0, 1.35),
        CombinedMargin(1.0, 1.2, 0.3, 0.2),
        CosFace(1.0, 0.4),
    ],
)
def test_target_logit_decreases_with_theta_everywhere(margin):
    cos = torch.linspace(-1.0, 1.0, 4001)
    psi = margin.target_logit(cos)
    assert torch.isfinite(psi).all()
    assert (psi[1:] - psi[:-1] >= -1e-6).all(), "the target logit must never rise as theta grows"
    assert (psi <= cos + 1e-6).all(), "a margin can only make the target harder"


def test_arcface_gradient_is_real_not_identity():
    m = 0.5
    c = torch.tensor([0.5], requires_grad=True)
    ArcFace(1.0, m).target_logit(c).sum().backward()
    # d/dc cos(acos(c) + m) = cos m + sin m * c / sqrt(1 - c^2)
    want = math.cos(m) + math.sin(m) * 0.5 / math.sqrt(1 - 0.25)
    assert c.grad.item() == pytest.approx(want, rel=1e-5)
    assert c.grad.item() != pytest.approx(1.0, abs=1e-3)


def test_label_minus_one_gets_no_margin():
    got = ArcFace(10.0, 0.5)(COS, torch.tensor([-1, -1, -1]))
    torch.testing.assert_close(got, 10.0 * COS)
    mixed = ArcFace(10.0, 0.5)(COS, torch.tensor([-1, 0, 2]))  # row 0 has no target here
    torch.testing.assert_close(mixed[0], 10.0 * COS[0])
    torch.testing.assert_close(mixed[1:], ArcFace(10.0, 0.5)(COS, LABELS)[1:])


def test_margin_gradient_reaches_targets_and_others():
    cos = COS.clone().requires_grad_(True)
    ArcFace(1.0, 0.5)(cos, torch.tensor([-1, 0, 2])).sum().backward()
    # non-targets (and row 0, which has none) pass gradient 1; targets d/dc cos(acos(c) + m)
    assert cos.grad[0].tolist() == [1.0, 1.0, 1.0] and cos.grad[1, 1:].tolist() == [1.0, 1.0]
    c = 0.9
    want = math.cos(0.5) + math.sin(0.5) * c / math.sqrt(1 - c * c)
    assert cos.grad[2, 2].item() == pytest.approx(want, rel=1e-4)


def test_partial_fc_samples_at_least_one_row_when_no_class_is_local():
    # a rank of a sharded run whose classes are all absent from the batch, sample rate * classes < 1
    head = build_head(10, 4, HeadConfig(loss="arcface", sample_rate=0.05))
    rows, cols = head._sample(torch.full((6,), -1))
    assert rows.numel() == 1 and cols.tolist() == [-1] * 6


def _head_with_weights(loss: str, W: torch.Tensor, **kw) -> MarginHead:
    C = kw.pop("num_classes")
    head = build_head(C, W.shape[1], HeadConfig(loss=loss, **kw))
    with torch.no_grad():
        head.weight.copy_(W)
    return head


def test_head_cosines_loss_and_subcenter_max():
    torch.manual_seed(0)
    x = torch.randn(4, 5)
    y = torch.tensor([0, 2, 1, 2])
    W = torch.randn(3, 5)
    head = _head_with_weights("arcface", W, num_classes=3, scale=16.0, margin=(0.4,))
    cos = F.normalize(x) @ F.normalize(W).t()
    torch.testing.assert_close(head.class_logits(x), cos)
    torch.testing.assert_close(head(x, y), F.cross_entropy(ArcFace(16.0, 0.4)(cos, y), y))

    Wk = torch.randn(3 * 3, 5)  # K = 3 sub-centres per class, rows class-major
    sub = _head_with_weights("subcenter", Wk, num_classes=3)
    assert sub.K == 3
    cos_k = (F.normalize(x) @ F.normalize(Wk).t()).view(4, 3, 3)
    torch.testing.assert_close(sub.class_logits(x), cos_k.max(dim=2).values)
    torch.testing.assert_close(sub.dominant_subcenter(x, y), cos_k[torch.arange(4), y].argmax(dim=1))


def test_plain_softmax_is_linear_with_bias():
    torch.manual_seed(1)
    x, W = torch.randn(3, 4), torch.randn(5, 4)
    head = _head_with_weights("softmax", W, num_classes=5)
    with torch.no_grad():
        head.bias.copy_(torch.arange(5.0))
    y = torch.tensor([4, 0, 2])
    torch.testing.assert_close(head(x, y), F.cross_entropy(x @ W.t() + torch.arange(5.0), y))


def test_partial_fc_keeps_positives_and_trains_only_sampled_rows():
    torch.manual_seed(2)
    C, D = 40, 8
    head = build_head(C, D, HeadConfig(loss="arcface", sample_rate=0.25))
    x = torch.randn(6, D, requires_grad=True)
    y = torch.tensor([3, 3, 17, 39, 0, 21])
    torch.manual_seed(5)
    rows, cols = head._sample(y.clone())
    assert rows.numel() == 10 and set(y.tolist()) <= set(rows.tolist())
    assert torch.equal(rows[cols], y)
    torch.manual_seed(5)  # same sample inside forward
    loss = head(x, y)
    want = F.cross_entropy(head.margin(head.class_logits(x, rows), cols), cols)
    torch.testing.assert_close(loss, want)
    loss.backward()
    touched = head.weight.grad.abs().sum(dim=1) > 0
    assert set(torch.nonzero(touched).flatten().tolist()) <= set(rows.tolist())
    assert touched[y].all()


def test_bad_configs_are_user_errors():
    with pytest.raises(KFaceError, match="unknown loss"):
        build_head(10, 8, HeadConfig(loss="arcfase"))
    with pytest.raises(KFaceError, match="sample-rate"):
        build_head(10, 8, HeadConfig(sample_rate=0.0))
    with pytest.raises(KFaceError, match="three"):
        HeadConfig(loss="combined", margin=(0.1, 0.2)).margins()
    assert HeadConfig(loss="cosface", margin=(0.4,)).margins() == (1.0, 0.0, 0.4)
