"""K-Face breakdown: how pairs and probes are assigned to conditions."""

from __future__ import annotations

import numpy as np
import pytest

from kface_cli.evaluate import conditions as C


def _c(light, cam="C7"):
    return {"acc": "S001", "light": light, "expr": "E01", "cam": cam}


def test_a_pair_counts_under_every_code_either_image_has():
    codes1 = [_c("L1"), _c("L1"), _c("L7"), _c("L1", "C9")]
    codes2 = [_c("L1"), _c("L7"), _c("L7"), _c("L1")]
    dist = np.array([0.2, 1.8, 1.0, 0.3])
    issame = np.array([True, True, False, False])
    out = C.verification_breakdown(dist, issame, codes1, codes2, threshold=1.0)
    assert out["light"]["L1"]["n_pairs"] == 3  # pairs 0, 1 (L1-L7) and 3
    assert out["light"]["L7"]["n_pairs"] == 2  # pairs 1 and 2, each once
    assert out["light"]["L7"]["accuracy_at_threshold"] == 0.5  # 1.8 rejected (wrong), 1.0 rejected (right)
    assert out["light"]["L1"]["accuracy_at_threshold"] == pytest.approx(1 / 3)
    assert out["light"]["L7"]["tar_at_threshold"] == 0.0 and out["light"]["L7"]["far_at_threshold"] == 0.0
    assert list(out["cam"]) == ["C7", "C9"] and out["cam"]["C9"]["n_pairs"] == 1
    assert out["light"]["L7"]["description"].endswith("(dark)")
    assert out["light"]["L7"]["accuracy"] is None  # too few pairs for 10 folds


def test_codes_are_sorted_numerically_and_parsed_from_names_when_missing(tmp_path):
    codes1 = [_c(f"L{i}") for i in (10, 2, 1)]
    out = C.verification_breakdown(
        np.array([0.1, 0.2, 0.3]), np.array([True, False, True]), codes1, codes1, threshold=0.25
    )
    assert list(out["light"]) == ["L1", "L2", "L10"]
    assert C.codes_of(tmp_path / "19062531_S002_L7_E03_C9.jpg")["light"] == "L7"
    assert C.codes_of(tmp_path / "Abel_Pacheco_0001.jpg") == {}
    raw = C.codes_of(tmp_path / "19062531" / "S001" / "L30" / "E02" / "C13.jpg")
    assert raw == {"id": "19062531", "acc": "S001", "light": "L30", "expr": "E02", "cam": "C13"}
    assert C.codes_of("x.jpg", {"light": "L3"}) == {"light": "L3"}


def test_identification_breakdown_by_probe_codes_and_merge():
    probes = [_c("L1"), _c("L7"), _c("L7"), _c("L7")]
    ranks = [1, 3, 1, 0]  # the last probe is an unknown identity: left out
    out = C.identification_breakdown(probes, ranks)
    assert out["light"]["L7"] == {
        "n_probes": 2,
        "rank1": 0.5,
        "rank5": 1.0,
        "description": out["light"]["L7"]["description"],
    }
    merged = C.merge_breakdowns({"light": {"L1": {"n_pairs": 4}}}, out)
    assert merged["light"]["L1"]["n_pairs"] == 4 and merged["light"]["L1"]["rank1"] == 1.0
    assert merged["light"]["L7"]["n_probes"] == 2 and "n_pairs" not in merged["light"]["L7"]
