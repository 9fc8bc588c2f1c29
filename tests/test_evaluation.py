"""`kface evaluate` end to end: protocols, breakdown, calibration, CLI output."""

from __future__ import annotations

import dataclasses
import json

import cv2
import pytest
from evaldata import FakeEmbedder, make_identities, make_pairs, make_workspace
from typer.testing import CliRunner

from kface_cli.embedding.calibration import IDENTIFICATION, VERIFICATION, identify_threshold, load_threshold
from kface_cli.errors import InputError, KFaceError
from kface_cli.evaluate.evaluation import EvaluateOptions, evaluate_embedder, val_identification_split
from kface_cli.formats.binset import write_bin
from kface_cli.formats.pairs import read_pairs_csv, write_pairs_csv


def _ws(tmp_path, n_ids=10):
    return make_workspace(tmp_path / "ws", n_ids=n_ids)


def test_val_protocol_every_metric_and_dark_light_costs_accuracy(tmp_path):
    ws = _ws(tmp_path)
    emb = FakeEmbedder(source=tmp_path / "m.onnx")
    ev = evaluate_embedder(emb, EvaluateOptions(workdir=ws, write_report=False))
    s = ev.summary
    for key in ("accuracy", "auc"):
        assert 0.5 < s[key] <= 1.0, (key, s[key])  # the fake embedder separates identities well
    assert 0.0 < s["rank1"] <= 1.0
    assert s["rank5"] >= s["rank1"]
    assert 0.0 <= s["eer"] < 0.5 and 0.0 <= s["accuracy_std"] < 0.5 and 0.0 < s["threshold"] < 4.0
    measured = [v for v in s["tar_at_far"].values() if v and v.get("tar") is not None]
    assert measured and all(0.0 <= v["tar"] <= 1.0 and v["achieved_far"] <= v["far"] for v in measured)
    assert set(s["per_condition"]) >= {"light"}
    assert s["n_pairs"] == 120 and s["protocol"] == "val"
    assert emb.embedded == 40  # 40 unique images; identification reused the cached embeddings
    light = s["per_condition"]["light"]
    assert light["L7"]["accuracy_at_threshold"] < light["L1"]["accuracy_at_threshold"]
    assert light["L7"]["rank1"] < light["L1"]["rank1"]
    assert s["n_identities"] == 8 and s["n_unknown"] == 8  # 2 of 10 identities held out as unknowns
    assert "report_dir" not in s and ev.report_dir is None


def test_val_identification_split_enrols_the_canonical_image(tmp_path):
    ws = _ws(tmp_path, n_ids=5)
    gallery, probes = val_identification_split(ws / "split" / "val")
    assert len(gallery) == 4 and all(p.name.endswith("_S001_L1_E01_C7.png") for _, p in gallery)
    assert len(probes) == 4 * 3 + 4  # three probes per enrolled identity, all four of the unknown one
    assert {lab for lab, _ in gallery}.isdisjoint({"19060004"}) and sum(lab == "19060004" for lab, _ in probes) == 4


def test_pairs_csv_bin_and_lfw_protocols_agree(tmp_path):
    by_id = make_identities(tmp_path / "imgs", n_ids=4)
    pairs = make_pairs(by_id)
    write_pairs_csv(tmp_path / "p.csv", pairs)
    images = [cv2.imencode(".png", cv2.imread(str(p)))[1].tobytes() for pr in pairs for p in (pr.path1, pr.path2)]
    write_bin(tmp_path / "p.bin", images, [p.same for p in pairs])
    lfw_root = tmp_path / "lfw"
    lines = [f"1\t{len(pairs) // 2}"]
    for same in (True, False):
        for k, pr in enumerate(p for p in pairs if p.same == same):
            for side, path in ((1, pr.path1), (2, pr.path2)):
                name = f"P{k}_{side}" if not same else f"S{k}"
                dst = lfw_root / name / f"{name}_{side:04d}.jpg"
                dst.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(dst.with_suffix(".png")), cv2.imread(str(path)))
                dst.with_suffix(".png").rename(dst)  # PNG bytes under a .jpg name: decoded by content
            lines.append(f"S{k}\t1\t2" if same else f"P{k}_1\t1\tP{k}_2\t2")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    opts = dict(workdir=tmp_path / "ws", write_report=False)
    csv = evaluate_embedder(FakeEmbedder(), EvaluateOptions(pairs=tmp_path / "p.csv", **opts)).summary
    binr = evaluate_embedder(FakeEmbedder(), EvaluateOptions(bin_file=tmp_path / "p.bin", **opts)).summary
    lfw = evaluate_embedder(
        FakeEmbedder(), EvaluateOptions(lfw_pairs=tmp_path / "pairs.txt", root=lfw_root, aligned=True, **opts)
    ).summary  # copied crops of textures, outside a crop folder: used as they are only when told (--aligned)
    assert csv["n_pairs"] == binr["n_pairs"] == lfw["n_pairs"] == len(pairs)
    assert csv["auc"] == pytest.approx(binr["auc"]) and csv["eer"] == pytest.approx(binr["eer"])
    assert lfw["auc"] == pytest.approx(csv["auc"])  # same pairs regrouped (same first): same ROC
    assert csv["per_condition"] and binr["per_condition"] is None and csv["rank1"] is None


def test_gallery_and_probe_folders(tmp_path):
    import shutil

    by_id = make_identities(tmp_path / "probes", n_ids=5, lights=("L1",), cams=("C7", "C8", "C9"), seed=1)
    for ident in sorted(by_id)[:3]:  # enrol the C7 image of three identities; the other two are unknown
        (tmp_path / "gallery" / ident).mkdir(parents=True)
        shutil.copy(by_id[ident][0], tmp_path / "gallery" / ident / "enrolled.png")
    s = evaluate_embedder(
        FakeEmbedder(),
        EvaluateOptions(
            workdir=tmp_path, gallery_dir=tmp_path / "gallery", probe_dir=tmp_path / "probes", aligned=True
        ),
    ).summary  # the gallery's copies lie outside a crop folder: --aligned says what they are
    assert s["protocol"] == "identification" and s["accuracy"] is None
    assert (s["n_known"], s["n_unknown"], s["n_identities"]) == (9, 6, 3)
    assert s["rank1"] == 1.0 and s["cmc"][-1] == 1.0
    assert "unknown probes" in s["dir_at_fpir"]["1e-01"]["reason"]
    with pytest.raises(InputError, match="needs verification pairs"):
        evaluate_embedder(
            FakeEmbedder(),
            EvaluateOptions(
                workdir=tmp_path, gallery_dir=tmp_path / "gallery", probe_dir=tmp_path / "probes", save_threshold=True
            ),
        )


def _model(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    return model


def test_calibration_saved_and_used(tmp_path):
    ws = _ws(tmp_path)
    emb = FakeEmbedder(source=_model(tmp_path))
    s = evaluate_embedder(
        emb, EvaluateOptions(workdir=ws, target_far=0.05, save_threshold=True, write_report=False)
    ).summary
    cal = s["calibration"][VERIFICATION]
    assert (
        cal["target_far"] == 0.05
        and cal["achieved_far"] <= 0.05
        and cal["saved_to"].endswith("m.onnx.calibration.json")
        and (cal["n_same"], cal["n_diff"]) == (60, 60)
    )
    # a looser FAR never gets a stricter (smaller) threshold
    assert cal["threshold"] <= s["tar_at_far"]["1e-01"]["threshold"]
    assert load_threshold(emb) == pytest.approx(cal["threshold"])
    with pytest.raises(KFaceError, match="at least 1000 different pairs"):
        evaluate_embedder(emb, EvaluateOptions(workdir=ws, target_far=1e-3, write_report=False))


def test_1n_calibration_at_a_target_fpir_is_saved_for_identify(tmp_path):
    ws = _ws(tmp_path)
    emb = FakeEmbedder(source=_model(tmp_path))
    s = evaluate_embedder(
        emb, EvaluateOptions(workdir=ws, target_fpir=0.2, save_threshold=True, write_report=False, fpirs=(0.5, 0.2))
    ).summary
    assert set(s["calibration"]) == {IDENTIFICATION}  # --target-fpir alone: no 1:1 threshold
    cal = s["calibration"][IDENTIFICATION]
    assert cal["criterion"] == "target_fpir" and cal["achieved_fpir"] <= 0.2 and 0.0 < cal["dir"] <= 1.0
    assert (cal["n_known"], cal["n_unknown"], cal["n_identities"]) == (s["n_known"], s["n_unknown"], 8)
    assert cal["threshold"] == s["dir_at_fpir"]["2e-01"]["threshold"] <= s["dir_at_fpir"]["5e-01"]["threshold"]
    assert identify_threshold(emb) == (pytest.approx(cal["threshold"]), IDENTIFICATION, "calibrated 1:N at FPIR 2e-01")
    with pytest.raises(KFaceError, match="at least 100 unknown probes"):
        evaluate_embedder(emb, EvaluateOptions(workdir=ws, target_fpir=1e-2, write_report=False))
    with pytest.raises(InputError, match="needs identification data"):
        evaluate_embedder(emb, EvaluateOptions(workdir=ws, pairs=ws / "split" / "val_pairs.csv", target_fpir=0.2))


def test_calibration_never_changes_the_reported_metrics(tmp_path):
    """Flip stays on for the metrics; the thresholds come from identify's embeddings (no flip)."""
    ws = _ws(tmp_path)
    model = _model(tmp_path)
    opts = dict(workdir=ws, write_report=False)
    plain = evaluate_embedder(FakeEmbedder(source=model, flip=True), EvaluateOptions(**opts)).summary
    cal_opts = EvaluateOptions(target_far=0.05, target_fpir=0.2, save_threshold=True, **opts)
    calibrated = evaluate_embedder(FakeEmbedder(source=model, flip=True), cal_opts).summary
    for key in ("accuracy", "auc", "eer", "tar_at_far", "rank1", "dir_at_fpir", "per_condition"):
        assert calibrated[key] == plain[key], key
    assert calibrated["model"]["flip"] is True
    no_flip = evaluate_embedder(FakeEmbedder(source=model, flip=False), cal_opts).summary
    assert no_flip["accuracy"] != plain["accuracy"]  # flip does change the embeddings of this fake
    for kind in (VERIFICATION, IDENTIFICATION):
        assert calibrated["calibration"][kind]["threshold"] == pytest.approx(no_flip["calibration"][kind]["threshold"])
        assert calibrated["calibration"][kind]["flip"] is False
    identify_embedder = FakeEmbedder(source=model)  # as kface identify loads it: no flip
    assert load_threshold(identify_embedder) == pytest.approx(calibrated["calibration"][VERIFICATION]["threshold"])


def test_degenerate_pairs_never_overwrite_a_good_calibration(tmp_path):
    """Issue 9, defect 10: --save-threshold on pairs without same-identity pairs saved 0.0 over a
    good calibration, after which identify named nobody."""
    ws = _ws(tmp_path)
    emb = FakeEmbedder(source=_model(tmp_path))
    good = evaluate_embedder(emb, EvaluateOptions(workdir=ws, save_threshold=True, write_report=False)).summary
    good_threshold = good["calibration"][VERIFICATION]["threshold"]
    assert good_threshold > 0 and load_threshold(emb) == good_threshold
    pairs = read_pairs_csv(ws / "split" / "val_pairs.csv")
    write_pairs_csv(tmp_path / "different.csv", [p for p in pairs if not p.same])
    only_different = EvaluateOptions(workdir=ws, pairs=tmp_path / "different.csv", save_threshold=True)
    with pytest.raises(KFaceError, match="0 same-person and 60 different-person pairs"):
        evaluate_embedder(emb, only_different)
    with pytest.raises(KFaceError, match="no same-person pairs"):
        evaluate_embedder(emb, dataclasses.replace(only_different, target_far=0.1))
    assert load_threshold(emb) == good_threshold


def test_a_worse_founded_calibration_is_not_saved_unless_asked(tmp_path, capsys):
    ws = _ws(tmp_path)
    emb = FakeEmbedder(source=_model(tmp_path))
    evaluate_embedder(emb, EvaluateOptions(workdir=ws, target_far=0.05, save_threshold=True, write_report=False))
    saved = load_threshold(emb)
    pairs = read_pairs_csv(ws / "split" / "val_pairs.csv")
    few = [p for p in pairs if p.codes1.get("light") == "L7" or p.codes2.get("light") == "L7"]
    write_pairs_csv(tmp_path / "few.csv", few)
    opts = EvaluateOptions(workdir=ws, pairs=tmp_path / "few.csv", target_far=0.05, save_threshold=True)
    cal = evaluate_embedder(emb, dataclasses.replace(opts, write_report=False)).summary["calibration"][VERIFICATION]
    assert "saved_to" not in cal and "this one rests on" in cal["not_saved"] and cal["threshold"] != saved
    assert load_threshold(emb) == saved
    assert "verification threshold not saved" in capsys.readouterr().err
    cal = evaluate_embedder(emb, dataclasses.replace(opts, write_report=False, replace_threshold=True)).summary
    assert load_threshold(emb) == cal["calibration"][VERIFICATION]["threshold"] != saved
    assert "replacing a better-founded verification threshold" in capsys.readouterr().err


@pytest.mark.parametrize(
    "opts,match",
    [
        (dict(pairs="a.csv", bin_file="b.bin"), "choose one pair source"),
        (dict(lfw_pairs="pairs.txt"), "needs --root"),
        (dict(gallery_dir="g"), "both --gallery-dir and --probe-dir"),
        (dict(target_far=2.0), "between 0 and 1"),
        (dict(target_fpir=0.0), "--target-fpir must be between 0 and 1"),
        (dict(), "val pairs not found"),
    ],
)
def test_option_errors(tmp_path, opts, match):
    with pytest.raises(InputError, match=match):
        evaluate_embedder(FakeEmbedder(), EvaluateOptions(workdir=tmp_path, **opts))


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
    import kface_cli.embedding.loading

    seen = {}

    def load_embedder(model=None, **kw):
        seen.update(kw, model=model)
        return FakeEmbedder(source=tmp_path / "m.onnx", flip=kw["flip"])

    monkeypatch.setattr(kface_cli.embedding.loading, "load_embedder", load_embedder)
    (tmp_path / "m.onnx").write_bytes(b"x")
    return seen


@pytest.mark.slow
def test_cli_table_and_json(tmp_path, fake_model):
    from kface_cli.cli import app

    ws = _ws(tmp_path)
    runner = CliRunner()
    res = runner.invoke(
        app, ["evaluate", "-w", str(ws), "--name", "demo"], env={"COLUMNS": "200", "KFACE_NO_PROGRESS": "1"}
    )
    assert res.exit_code == 0, res.output
    assert "accuracy (10-fold)" in res.output and "light L7" in res.output and "reports/demo" in res.output
    assert sorted(p.name for p in (ws / "reports" / "demo").iterdir()) == [
        "cmc.png",
        "conditions.png",
        "distances.png",
        "metrics.json",
        "roc.png",
    ]
    assert fake_model["flip"] is True and "Evaluation: fake (val split, flip on)" in res.output
    res = runner.invoke(app, ["evaluate", "-w", str(ws), "--json", "--target-far", "0.1", "--save-threshold"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {
        "accuracy",
        "accuracy_std",
        "threshold",
        "auc",
        "eer",
        "tar_at_far",
        "rank1",
        "rank5",
        "per_condition",
    } <= set(out)
    assert out["calibration"]["verification"]["saved_to"].endswith("m.onnx.calibration.json")
    assert fake_model["flip"] is True  # calibrating does not change the metrics' protocol
    res = runner.invoke(
        app,
        ["evaluate", "-w", str(ws), "--no-flip", "--target-fpir", "0.2", "--save-threshold", "--no-conditions"],
        env={"COLUMNS": "250", "KFACE_NO_PROGRESS": "1"},
    )
    assert res.exit_code == 0, res.output
    assert fake_model["flip"] is False and "(val split, flip off)" in res.output
    assert "threshold 1:N at FPIR 2e-01" in res.output and "saved to" in res.output
    pairs = read_pairs_csv(ws / "split" / "val_pairs.csv")
    write_pairs_csv(tmp_path / "few.csv", pairs[:20])
    res = runner.invoke(app, ["evaluate", "-w", str(ws), "--pairs", str(tmp_path / "few.csv"), "--save-threshold"])
    assert res.exit_code == 1 and "verification threshold not saved" in res.output  # a better one is kept
    res = runner.invoke(app, ["evaluate", "-w", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "val pairs not found" in res.output


@pytest.mark.slow
def test_cli_with_a_real_random_weight_model(tmp_path):
    """The real loading path (load_embedder, latest run of the workspace): a tiny mbf backbone.pth."""
    import torch

    from kface_cli.evaluate.evaluation import evaluate
    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    ws = make_workspace(tmp_path / "ws", n_ids=5)
    run = ws / "runs" / "tiny"
    run.mkdir(parents=True)
    torch.save(get_backbone("mbf", embedding_size=32).state_dict(), run / "backbone.pth")
    (run / "config.json").write_text(json.dumps({"network": "mbf", "embedding_size": 32}))
    out = evaluate(EvaluateOptions(workdir=ws, flip=False, backend="torch", write_report=False)).summary
    assert out["model"]["network"] == "mbf" and out["model"]["embedding_size"] == 32 and out["model"]["flip"] is False
    assert out["model"]["source"].endswith("tiny") and 0.0 <= out["accuracy"] <= 1.0 and out["n_pairs"] == 60


def test_default_report_names_do_not_collide(tmp_path):
    from kface_cli.evaluate.evaluation import Protocol, default_report_name

    emb = FakeEmbedder(source=tmp_path / "runs" / "demo")
    names = {
        default_report_name(emb, Protocol.VAL, EvaluateOptions()),
        default_report_name(emb, Protocol.BIN, EvaluateOptions(bin_file=tmp_path / "val.bin")),
        default_report_name(emb, Protocol.PAIRS, EvaluateOptions(pairs=tmp_path / "val.csv")),
        default_report_name(emb, Protocol.LFW, EvaluateOptions(lfw_pairs=tmp_path / "val.txt", root=tmp_path)),
        default_report_name(emb, None, EvaluateOptions()),
    }
    assert names == {"demo-val", "demo-bin-val", "demo-pairs-val", "demo-lfw-val", "demo-identification"}
    assert (
        default_report_name(FakeEmbedder(source=tmp_path / "w600k r50.onnx"), Protocol.VAL, EvaluateOptions())
        == "w600k-r50-val"
    )


def _with_source_photos(ws, monkeypatch, fallback=False):
    """Each val crop pasted into a larger 'photo' (listed in split/sources.csv); a stub detector
    finds the face in every photo except camera C9 ones, as a detector misses profiles."""
    import numpy as np

    from kface_cli.face import detector as detect
    from kface_cli.face.align import ARCFACE_TEMPLATE
    from kface_cli.prepare.split import write_sources

    sources = {}
    for crop in sorted((ws / "split" / "val").glob("*/*.png")):
        photo = np.full((240, 300, 3), 90, np.uint8)
        photo[50:162, 100:212] = cv2.imread(str(crop))
        path = ws / "photos" / crop.name
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), photo)
        sources[crop.relative_to(ws / "split").as_posix()] = path
    write_sources(ws / "split" / "sources.csv", sources, ws / "split")

    class Stub:  # misses every C9 face, or takes it from its "annotation" (``fallback``)
        def detect(self, image, path=None):
            points = (ARCFACE_TEMPLATE + [100, 50]).astype(np.float32)
            if "_C9" in path.name:
                if not fallback:
                    return []
                return [detect.DetectedFace((100.0, 50.0, 112.0, 112.0), 1.0, points, detect.ANNOTATION_FALLBACK)]
            return [detect.DetectedFace((100.0, 50.0, 112.0, 112.0), 0.95, points)]

    real = detect.get_detector
    monkeypatch.setattr(
        detect, "get_detector", lambda mode="auto", **kw: Stub() if mode == "detect" else real(mode, **kw)
    )


def test_landmarks_detect_realigns_from_the_source_photos_and_counts_misses_per_camera(tmp_path, monkeypatch):
    ws = _ws(tmp_path)
    as_trained = evaluate_embedder(FakeEmbedder(), EvaluateOptions(workdir=ws, write_report=False)).summary
    assert as_trained["landmarks"]["realigned_from_source_photos"] is False
    with pytest.raises(InputError, match="sources.csv"):
        evaluate_embedder(FakeEmbedder(), EvaluateOptions(workdir=ws, landmarks="detect", write_report=False))
    _with_source_photos(ws, monkeypatch)
    s = evaluate_embedder(FakeEmbedder(), EvaluateOptions(workdir=ws, landmarks="detect", write_report=False)).summary
    lm = s["landmarks"]
    assert lm["realigned_from_source_photos"] and lm["images"] == 40 and lm["no_face"] == 20
    assert lm["by_condition"]["cam"] == {
        "C7": {"images": 20, "no_face": 0, "fallback": 0, "low_light": 0},
        "C9": {"images": 20, "no_face": 20, "fallback": 0, "low_light": 0},
    }
    assert lm["detector_only"] is None  # nothing was taken from an annotation
    assert s["n_failed_images"] == 20 and s["accuracy"] < as_trained["accuracy"]
    assert (
        s["per_condition"]["cam"]["C7"]["accuracy_at_threshold"]
        > s["per_condition"]["cam"]["C9"]["accuracy_at_threshold"]
    )
    from kface_cli.evaluate.report import landmark_table

    title, columns, rows = landmark_table(lm)
    assert rows[0][:6] == ["camera C7", rows[0][1], 20, 0, 0, 0] and rows[1][2:6] == [20, 0, 0, 20]


def test_faces_taken_from_their_annotation_are_counted_and_the_detector_only_accuracy_is_reported(
    tmp_path, monkeypatch
):
    ws = _ws(tmp_path)
    _with_source_photos(ws, monkeypatch)
    missed = evaluate_embedder(FakeEmbedder(), EvaluateOptions(workdir=ws, landmarks="detect", write_report=False))
    _with_source_photos(ws, monkeypatch, fallback=True)
    s = evaluate_embedder(FakeEmbedder(), EvaluateOptions(workdir=ws, landmarks="detect", write_report=False)).summary
    lm = s["landmarks"]
    assert lm["no_face"] == 0 and lm["sources"] == {"annotation-fallback": 20, "mesh": 20}
    assert lm["by_condition"]["cam"]["C9"] == {"images": 20, "no_face": 0, "fallback": 20, "low_light": 0}
    assert s["n_failed_images"] == 0 and s["accuracy"] > missed.summary["accuracy"]
    strict = lm["detector_only"]  # the same faces counted as missed: the accuracy without fallback
    assert strict["images_without_detection"] == 20
    assert strict["accuracy"] == pytest.approx(missed.summary["accuracy"])
    from kface_cli.evaluate.report import summary_rows

    rows = {r[0]: r for r in summary_rows(s)}
    assert rows["accuracy, detector only"][1].startswith(f"{100 * strict['accuracy']:.2f}")


def _with_test_part(ws, n_ids=10):
    """split/test/<id>/ and split/test_pairs.csv beside the val part (other identities' images)."""
    by_id = make_identities(ws / "split" / "test", n_ids=n_ids, seed=5)
    write_pairs_csv(ws / "split" / "test_pairs.csv", make_pairs(by_id, 5))
    return ws


def test_test_split_is_the_default_and_thresholds_are_chosen_on_val(tmp_path):
    import numpy as np

    from kface_cli.embedding import metrics as M

    ws = _with_test_part(_ws(tmp_path))
    emb = FakeEmbedder(source=_model(tmp_path))
    cal = dict(target_far=0.05, target_fpir=0.2, save_threshold=True, write_report=False)
    test = evaluate_embedder(emb, EvaluateOptions(workdir=ws, **cal)).summary
    assert test["protocol"] == test["split"] == "test" and test["pairs_source"].endswith("test_pairs.csv")
    assert test["identification"]["gallery"].endswith("test")
    val = evaluate_embedder(emb, EvaluateOptions(workdir=ws, split="val", **cal)).summary
    assert val["split"] == "val" and val["pairs_source"].endswith("val_pairs.csv")
    assert val["accuracy"] != test["accuracy"]  # other identities, other numbers
    for kind in (VERIFICATION, IDENTIFICATION):
        on_test, on_val = test["calibration"][kind], val["calibration"][kind]
        assert on_test["calibrated_on"] == on_val["calibrated_on"] == "val"
        assert on_test["threshold"] == pytest.approx(on_val["threshold"])  # chosen on val only
        assert "on_test" in on_test and "on_test" not in on_val
    # the operating point re-measured on test is the rate of the val threshold on the test pairs
    from kface_cli.embedding.photos import embed_pairs, prepare_pairs

    t = test["calibration"][VERIFICATION]["threshold"]
    dist, issame = embed_pairs(emb, prepare_pairs(read_pairs_csv(ws / "split" / "test_pairs.csv")))
    measured = test["calibration"][VERIFICATION]["on_test"]
    assert measured["far"] == pytest.approx(float(np.mean(dist[~issame] < t)))
    assert measured["tar"] == pytest.approx(float(np.mean(dist[issame] < t)))
    ident = test["calibration"][IDENTIFICATION]["on_test"]
    assert ident["n_strangers"] == 2 and 0 <= ident["fpir"] <= 1 and 0 <= ident["dir"] <= 1
    assert M.strangers_unsupported_reason(2, 0.2) is not None  # 2 strangers cannot read FPIR 0.2 by people
    assert test["calibration"][IDENTIFICATION]["measurable_by_people"] is False


def test_split_option_errors(tmp_path):
    ws = _ws(tmp_path)
    emb = FakeEmbedder(source=_model(tmp_path))
    assert evaluate_embedder(emb, EvaluateOptions(workdir=ws, write_report=False)).summary["split"] == "val"
    with pytest.raises(InputError, match="test pairs not found"):
        evaluate_embedder(emb, EvaluateOptions(workdir=ws, split="test", write_report=False))
    with pytest.raises(InputError, match="cannot go with"):
        evaluate_embedder(emb, EvaluateOptions(workdir=ws, split="val", pairs=ws / "split" / "val_pairs.csv"))
    with pytest.raises(InputError, match="unknown --split"):
        evaluate_embedder(emb, EvaluateOptions(workdir=ws, split="train"))


def test_a_probe_without_a_face_is_a_miss(tmp_path, monkeypatch):
    from kface_cli.embedding.photos import FaceLoader

    ws = _ws(tmp_path)
    emb = FakeEmbedder(source=_model(tmp_path))
    before = evaluate_embedder(emb, EvaluateOptions(workdir=ws, write_report=False)).summary
    gallery, probes = val_identification_split(ws / "split" / "val")
    enrolled = {lab for lab, _ in gallery}
    victim = next(p for lab, p in probes if lab in enrolled)
    real_call = FaceLoader.__call__
    monkeypatch.setattr(FaceLoader, "__call__", lambda self, path: None if path == victim else real_call(self, path))
    after = evaluate_embedder(emb, EvaluateOptions(workdir=ws, write_report=False)).summary
    assert after["n_known_no_face"] == 1 and after["n_known"] == before["n_known"]
    assert after["n_probes"] == before["n_probes"]
    hits = round(before["rank1"] * before["n_known"])
    assert after["rank1"] == pytest.approx((hits - 1) / before["n_known"])  # one fewer hit, same count
