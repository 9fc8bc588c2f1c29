"""`kface crop`: exact alignment geometry, profile fallback, box mode, bad annotations, manifest."""

import csv

import cv2
import numpy as np
import pytest
from geometry import similarity, transform_points
from synth_helpers import make_source

from kface_cli.dataset.annotation import format_annotation, parse_annotation
from kface_cli.errors import InputError, KFaceError
from kface_cli.face.align import ARCFACE_TEMPLATE, box_crop
from kface_cli.face.detector import DetectedFace
from kface_cli.face.pipeline import align_face
from kface_cli.prepare.crop import MANIFEST_COLUMNS, CropConfig, CropMode, crop
from kface_cli.prepare.extract import Selection, extract

W, H = 346, 230
KFACE_FROM_ARCFACE = [2, 0, 1, 3, 4]  # K-Face point k is ArcFace point KFACE_FROM_ARCFACE[k]


def crop_face(image, annotation, size=112):
    """What kface crop does with one annotated face (the shared alignment of kface_cli.face.pipeline)."""
    return align_face(image, DetectedFace(annotation.face_box, 1.0, annotation.points5, "annotation"), size)


def _marker_scene(m: np.ndarray) -> tuple[np.ndarray, str]:
    """A black image with white discs where the template points land under ``m``, and its annotation."""
    pts5 = transform_points(ARCFACE_TEMPLATE, m)  # ArcFace order, image coordinates
    img = np.zeros((H, W, 3), np.uint8)
    for x, y in pts5:  # sub-pixel centres (shift=4: 1/16 px)
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 3 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    kface = np.vstack(
        [pts5[KFACE_FROM_ARCFACE], [[pts5[:, 0].min() - 30, pts5[0, 1]], [pts5[:, 0].max() + 30, pts5[1, 1]]]]
    )
    x0, y0 = pts5.min(0) - 25
    x1, y1 = pts5.max(0) + 25
    boxes = {
        "face": (x0, y0, x1 - x0, y1 - y0),
        "eye_left": (1, 1, 5, 5),
        "eye_right": (1, 1, 5, 5),
        "nose": (1, 1, 5, 5),
        "mouth": (1, 1, 5, 5),
        "ear_left": (1, 1, 5, 5),
        "ear_right": (1, 1, 5, 5),
    }
    return img, format_annotation(kface, boxes)


def _blob_centres(img: np.ndarray) -> np.ndarray:
    grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    n, labels = cv2.connectedComponents((grey > 40).astype(np.uint8))
    centres = []
    for k in range(1, n):
        ys, xs = np.nonzero(labels == k)
        w = grey[ys, xs].astype(float)
        centres.append([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    return np.array(centres)


def _match(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    assert len(found) == len(expected), f"found {len(found)} markers, expected {len(expected)}"
    return np.array([np.linalg.norm(found - e, axis=1).min() for e in expected])


@pytest.mark.parametrize(
    "m", [similarity(1.0, 0, 100, 60), similarity(1.6, 14, 120, 20), similarity(0.7, -20, 150, 90)]
)
def test_align_puts_landmarks_on_the_template(m):
    img, text = _marker_scene(m)
    face, method = crop_face(img, parse_annotation(text))
    assert method == "align" and face.shape == (112, 112, 3)
    err = _match(_blob_centres(face), ARCFACE_TEMPLATE)
    assert err.max() < 1.0, err  # "within a pixel"


def test_align_geometry_through_the_stage(tmp_path):
    """The same check end to end: raw JPEG + .txt -> kface crop -> 112x112 JPEG on disk."""
    img, text = _marker_scene(similarity(1.25, 9, 110, 40))
    folder = tmp_path / "raw" / "Middle" / "19062531" / "S001" / "L1" / "E01"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "C7.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    (folder / "C7.txt").write_text(text)
    r = crop(tmp_path, res="Middle")
    assert r.cropped == 1 and r.methods == {"align": 1}
    out = cv2.imread(str(tmp_path / "faces" / "Middle" / "19062531" / "19062531_S001_L1_E01_C7.jpg"))
    err = _match(_blob_centres(out), ARCFACE_TEMPLATE)
    assert err.max() < 1.0, err  # within a pixel after two JPEG round trips


def test_other_sizes_scale_the_template():
    img, text = _marker_scene(similarity(1.0, 5, 100, 60))
    face, _ = crop_face(img, parse_annotation(text), size=224)
    assert face.shape == (224, 224, 3)
    assert _match(_blob_centres(face), ARCFACE_TEMPLATE * 2).max() < 0.8


def test_profile_points_fall_back_to_the_square_face_box():
    img = np.zeros((H, W, 3), np.uint8)
    img[60:160, 150:230] = 200  # the face box region: 80 x 100
    pts = [[160, 110], [175, 95], [177, 95], [172, 130], [173, 131], [220, 100], [224, 100]]
    ann = parse_annotation(
        format_annotation(
            np.array(pts),
            {
                "face": (150, 60, 80, 100),
                "eye_right": (170, 90, 10, 8),
                "nose": (155, 100, 15, 20),
                "mouth": (165, 125, 12, 10),
                "ear_right": (215, 90, 15, 25),
            },
        )
    )
    face, method = crop_face(img, ann)
    assert method == "box-fallback"
    np.testing.assert_array_equal(face, box_crop(img, ann.face_box, 112, square=True))
    # squared: the 80-wide region covers 80/100 of the width, all of the height
    row = face[56, :, 0] > 100
    assert abs(row.sum() - 112 * 0.8) <= 2 and (face[:, 56, 0] > 100).all()


def test_box_mode_margin_and_square():
    img = np.full((H, W, 3), 50, np.uint8)
    img[50:150, 100:200] = 200  # a 100 x 100 face box
    box = (100, 50, 100, 100)
    plain = box_crop(img, box, 112)
    assert (plain > 150).all()
    with_margin = box_crop(img, box, 112, margin=0.25)  # 150 x 150 around it: face is the middle 2/3
    assert abs((with_margin[56, :, 0] > 125).sum() - 112 / 1.5) <= 2
    assert (with_margin[:5] < 100).all() and (with_margin[:, -5:] < 100).all()
    wide = box_crop(
        img, (100, 75, 100, 50), 112, square=True
    )  # 100 x 50 grown to 100 x 100: all inside the bright area
    assert (wide > 150).all()
    corner = box_crop(img, (-20, -20, 60, 60), 112)  # outside the image: black padding
    assert corner[:20, :20].max() == 0 and corner[-10:, -10:].min() == 50
    with pytest.raises(InputError, match="zero size"):
        box_crop(img, (10, 10, 0, 20))


def _write(folder, name, img=None, text=None, raw_bytes=None):
    folder.mkdir(parents=True, exist_ok=True)
    if raw_bytes is not None:
        (folder / f"{name}.jpg").write_bytes(raw_bytes)
    elif img is not None:
        cv2.imwrite(str(folder / f"{name}.jpg"), img)
    if text is not None:
        (folder / f"{name}.txt").write_text(text)


def test_bad_annotations_are_counted_never_fatal(tmp_path):
    img, good = _marker_scene(similarity(1.0, 0, 100, 60))
    base = tmp_path / "raw" / "Low" / "19062531" / "S001" / "L1" / "E01"
    _write(base, "C6", img, good)
    _write(base, "C7", img, None)  # missing annotation
    _write(base, "C8", img, "\n".join(good.splitlines()[:9]))  # too few lines
    lines = good.splitlines()
    _write(base, "C9", img, "\n".join(lines[:7] + ["400 300 50 50"] + lines[8:]))  # box outside the image
    _write(base, "C10", img, "\n".join(lines[:7] + ["100 50 0 80"] + lines[8:]))  # zero size
    _write(base, "C11", text=good, raw_bytes=b"\xff\xd8 not really a jpeg")
    r = crop(tmp_path, res="Low", config=CropConfig(mode=CropMode.ALIGN, landmarks="annotation"))
    assert r.images == 6 and r.cropped == 1
    assert r.problems == {"missing-annotation": 1, "malformed-annotation": 3, "unreadable-image": 1}
    with open(r.manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == MANIFEST_COLUMNS
    by_cam = {row["cam"]: row for row in rows}
    assert by_cam["C6"]["status"] == "ok" and by_cam["C6"]["path"] == "19062531/19062531_S001_L1_E01_C6.jpg"
    assert "outside" in by_cam["C9"]["detail"] and "zero size" in by_cam["C10"]["detail"]
    assert by_cam["C8"]["status"] == "malformed-annotation" and by_cam["C7"]["path"] == ""
    assert len(list((tmp_path / "faces" / "Low").rglob("*.jpg"))) == 1


def test_crop_of_synthetic_kface(tmp_path):
    source = make_source(tmp_path / "kface", n_ids=2)
    ws = tmp_path / "ws"
    extract(source, workdir=ws, res="Low", selection=Selection.parse("S001-S002", "L1,L3,L7", "all", "C1,C6-C9"))
    r = crop(ws, res="Low", config=CropConfig(landmarks="annotation"))
    # per identity: 5 aligned (C6-C9, L7 C7), C1 profile -> box fallback, S002 has no annotation
    assert r.identities == 2 and r.methods == {"align": 10, "box-fallback": 2}
    assert r.problems == {"missing-annotation": 2}
    faces = list((ws / "faces" / "Low").rglob("*.jpg"))
    assert len(faces) == 12 and all(cv2.imread(str(p)).shape == (112, 112, 3) for p in faces)


def test_missing_raw_folder_names_the_stage(tmp_path):
    with pytest.raises(InputError, match="kface extract"):
        crop(tmp_path, res="Middle")


@pytest.mark.parametrize(
    "config",
    [
        CropConfig(mode=CropMode.BOX, margin=float("nan")),
        CropConfig(mode=CropMode.BOX, margin=float("inf")),
        CropConfig(mode=CropMode.BOX, margin=1e6),
        CropConfig(size=10**6),
    ],
)
def test_bad_crop_options_refused_before_anything_is_overwritten(tmp_path, config):
    source = make_source(tmp_path / "kface", n_ids=1)
    ws = tmp_path / "ws"
    extract(source, workdir=ws, res="Low", selection=Selection.parse("S001", "L1", "all", "C6"))
    manifest = crop(ws, res="Low").manifest
    before = manifest.read_bytes()
    with pytest.raises(InputError):
        crop(ws, res="Low", config=config)
    assert manifest.read_bytes() == before


class _StubDetector:
    """Faces by file stem: ``faces[stem]`` = number of faces (the first largest), 0 = none."""

    def __init__(self, faces: dict[str, int]):
        self.faces = faces
        self.calls: list[str] = []

    def detect(self, image, path=None):
        self.calls.append(path.name)
        found = []
        for k in range(self.faces.get(path.stem, 1)):
            scale = 2.0 / (k + 1)
            points = (ARCFACE_TEMPLATE * scale + 20).astype(np.float32)
            found.append(DetectedFace((20.0, 20.0, 112 * scale, 112 * scale), 0.9 - 0.1 * k, points))
        return found


def _photo(path, value=120, size=(300, 260)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size[1], size[0], 3), value, np.uint8)
    cv2.circle(img, (130, 130), 60, (30, 60, 200), -1)
    ok, enc = cv2.imencode(path.suffix, img)
    assert ok
    path.write_bytes(enc.tobytes())


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """SRC/<name>/... with nested folders, mixed formats, two faces, no face, a broken file, non-ASCII names."""
    src = tmp_path / "members"
    _photo(src / "김철수" / "a.jpg")
    _photo(src / "김철수" / "2020" / "여름" / "b.png")
    _photo(src / "김철수" / "a.webp")
    _photo(src / "Ана" / "group.bmp")
    _photo(src / "Ана" / "b.jpg", value=90)
    (src / "Ана" / "._b.jpg").write_bytes(b"AppleDouble")  # hidden: left out
    _photo(src / "Bob O'Neil" / "wall.jpg", value=200)
    _photo(src / "Bob O'Neil" / "ok.jpg")
    (src / "Bob O'Neil" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    stub = _StubDetector({"group": 2, "wall": 0})
    from kface_cli.face import detector as detect

    real = detect.get_detector
    monkeypatch.setattr(
        detect, "get_detector", lambda mode="auto", **kw: stub if mode == "detect" else real(mode, **kw)
    )
    return src, stub


def test_crop_of_a_photo_folder(tmp_path, photos):
    src, stub = photos
    ws = tmp_path / "ws"
    r = crop(ws, raw_dir=src)
    out = ws / "faces" / "members"
    assert r.kind == "photos" and r.out == out and r.identities == 3 and r.images == 8
    assert r.cropped == 6 and r.problems == {"no-face": 1, "unreadable-image": 1}
    assert r.several_faces == 1 and r.landmark_sources == {"mesh": 6}
    rows = {row["source"]: row for row in csv.DictReader(open(r.manifest, encoding="utf-8"))}
    assert set(rows) == {
        "김철수/a.jpg", "김철수/a.webp", "김철수/2020/여름/b.png", "Ана/group.bmp", "Ана/b.jpg",
        "Bob O'Neil/wall.jpg", "Bob O'Neil/ok.jpg", "Bob O'Neil/broken.jpg",
    }  # fmt: skip
    nested = rows["김철수/2020/여름/b.png"]
    assert nested["path"] == "김철수/2020__여름__b_png.jpg" and nested["id"] == "김철수"
    assert rows["김철수/a.webp"]["path"] != rows["김철수/a.jpg"]["path"]  # never the same crop
    group = rows["Ана/group.bmp"]
    assert group["faces"] == "2" and "used the largest" in group["detail"] and group["score"] == "0.9000"
    assert (
        rows["Bob O'Neil/wall.jpg"]["status"] == "no-face"
        and rows["Bob O'Neil/broken.jpg"]["status"] == "unreadable-image"
    )
    for row in rows.values():
        if row["status"] == "ok":
            assert cv2.imread(str(out / row["path"])).shape == (112, 112, 3) and row["landmarks"] == "mesh"
    # the largest face was used (its points are twice the template, shifted by 20 px)
    from kface_cli.face.align import norm_crop

    largest = norm_crop(cv2.imread(str(src / "Ана" / "group.bmp")), ARCFACE_TEMPLATE * 2 + 20)
    assert np.abs(cv2.imread(str(out / group["path"])).astype(float) - largest).mean() < 3


def test_photo_names_round_trip_through_split_and_train(tmp_path, photos):
    from kface_cli.prepare.split import read_sources, split
    from kface_cli.train.datasets import FolderDataset

    src, _ = photos
    ws = tmp_path / "ws"
    r = crop(ws, raw_dir=src)
    s = split(ws, faces_dir=r.out, val_ids=2, seed=0)
    names = {"김철수", "Ана", "Bob O'Neil"}
    assert set(s.train_ids) | set(s.val_ids) == names
    classes = (ws / "split" / "classes.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert [c.rsplit(",", 1)[0] for c in classes] == list(s.train_ids)
    assert FolderDataset(ws / "split" / "train", progress=False).classes == list(s.train_ids)
    sources = read_sources(ws / "split")
    assert len(sources) == r.cropped and all(p.is_file() for p in sources.values())
    assert any(p.name == "b.png" and p.parent.name == "여름" for p in sources.values())


def test_crop_resumes_and_redoes_on_new_settings(tmp_path, photos):
    src, stub = photos
    ws = tmp_path / "ws"
    first = crop(ws, raw_dir=src)
    stub.calls.clear()
    again = crop(ws, raw_dir=src)
    assert again.resumed == first.cropped == 6 and stub.calls == ["wall.jpg"]  # only the failure is tried again
    assert again.cropped == 6 and again.problems == first.problems
    _photo(src / "Ана" / "new.jpg")
    stub.calls.clear()
    more = crop(ws, raw_dir=src)
    assert sorted(stub.calls) == ["new.jpg", "wall.jpg"] and more.cropped == 7
    stub.calls.clear()
    other = crop(ws, raw_dir=src, config=CropConfig(size=96))  # other settings: everything again
    assert other.resumed == 0 and len(stub.calls) == 8
    assert cv2.imread(str(other.out / "Ана" / "new.jpg")).shape == (96, 96, 3)


def test_annotation_landmarks_need_annotations(tmp_path, photos):
    src, stub = photos
    r = crop(tmp_path / "ws", raw_dir=src, config=CropConfig(landmarks="annotation"))
    assert r.cropped == 0 and r.problems == {"missing-annotation": 8} and stub.calls == []
    with pytest.raises(KFaceError, match="unknown --landmarks"):
        crop(tmp_path / "ws", raw_dir=src, config=CropConfig(landmarks="eyes"))


def test_empty_photo_folder_is_refused(tmp_path):
    (tmp_path / "src" / "nobody").mkdir(parents=True)
    with pytest.raises(InputError, match="no photos"):
        crop(tmp_path / "ws", raw_dir=tmp_path / "src")


@pytest.mark.slow
def test_detector_crops_of_synthetic_kface_fall_back_to_the_annotation(tmp_path):
    """Real detector on K-Face photos: profiles it cannot find use the annotation; counted per camera."""
    source = make_source(tmp_path / "kface", n_ids=2)
    ws = tmp_path / "ws"
    extract(source, workdir=ws, res="Low", selection=Selection.parse("S001", "L1", "E01", "C1,C7"))
    r = crop(ws, res="Low", config=CropConfig(landmarks="detect"))
    assert r.cropped == 4 and not r.problems
    assert set(r.by_camera) == {"C1", "C7"} and sum(r.by_camera["C7"].values()) == 2
    assert r.by_camera["C7"].get("mesh", 0) + r.by_camera["C7"].get("detector", 0) == 2
    rows = list(csv.DictReader(open(r.manifest, encoding="utf-8")))
    assert all(row["score"] for row in rows) and all(row["landmarks"] for row in rows)


def test_crops_of_another_folder_are_never_overwritten(tmp_path, photos):
    src, _ = photos
    ws = tmp_path / "ws"
    first = crop(ws, raw_dir=src)
    before = first.manifest.read_bytes()
    other = tmp_path / "elsewhere" / "members"  # same folder name, other photos
    _photo(other / "Zoë" / "a.jpg")
    with pytest.raises(InputError, match="another folder"):
        crop(ws, raw_dir=other)
    assert first.manifest.read_bytes() == before
    assert crop(ws, raw_dir=other, out_dir=tmp_path / "zoe").cropped == 1
    with pytest.raises(InputError, match="source folder"):
        crop(ws, raw_dir=src, out_dir=src / "faces")


def test_an_interrupted_crop_resumes(tmp_path, photos, monkeypatch):
    from kface_cli.prepare import crop as crop_module

    src, stub = photos
    monkeypatch.setattr(crop_module, "SAVE_EVERY_S", 0.0)  # save the manifest after every photo
    real_detect = stub.detect

    def interrupted(image, path=None):
        if path.name == "a.jpg":  # the 7th of 8 photos (Latin, Cyrillic, then Hangul folders)
            raise KeyboardInterrupt
        return real_detect(image, path)

    monkeypatch.setattr(stub, "detect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        crop(tmp_path / "ws", raw_dir=src, workers=1)
    monkeypatch.setattr(stub, "detect", real_detect)
    stub.calls.clear()
    again = crop(tmp_path / "ws", raw_dir=src, workers=1)
    assert again.resumed == 4 and again.cropped == 6  # ok.jpg, b.jpg, group.bmp, b.png were saved
    assert "group.bmp" not in stub.calls and "a.jpg" in stub.calls
