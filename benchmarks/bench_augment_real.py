"""Training augmentation on real photos: models trained with and without ``--augment``, scored on
real faces that kface's detector finds and aligns, with intervals over people.

    python benchmarks/bench_augment_real.py PHOTOS -w WORKSPACE \\
        --arm none runs/aug-none runs/aug-none-s1 runs/aug-none-s2 \\
        --arm auto runs/aug-jitter-scale-shift-colour runs/aug-jitter-scale-shift-colour-s1 ...

PHOTOS: a folder of real photos, one file per photo (``.jpg``, ``.jpeg``, ``.png``). A photo's
person is its file name up to the first digit or ``.`` (``_`` trimmed) (``obama.jpg``, ``obama2.jpg`` and
``obama3.jpg`` are one person); a photo in which the detector finds several faces gives one person
per face (``t1.jpg#2``: its third face from the left). ``--skip NAME`` leaves a file out (a copy of
another photo, for instance). WORKSPACE: the workspace the models were trained in; its val pairs
choose each model's threshold (the one with the highest accuracy on val), so nothing here is
chosen on the real faces.

Real photos "you can make": every photo is re-captured ``len(RECAPTURES)`` ways (halved and
upscaled, cropped and rescaled, mirrored, JPEG quality 30, darker, brighter, rotated 10 degrees),
and each re-capture goes through the detector again, so its alignment noise is the detector's. A
detected face is matched to the original's face by where the original's face centre lands after
the re-capture's geometry.

Pairs: **re-capture** (the same face, two of its captures: same photo, another rendering),
**other photo** (one person's faces in two different photos: the only genuine variation of pose,
light, age and camera here) and **different** (two people). Per model: ROC AUC of same-person pairs
against different-person pairs (by cosine), and, at the model's val threshold, the share of
same-person pairs accepted (TAR) and of different-person pairs accepted (FAR). Per arm: the mean
over its models (training seeds) and the range. Intervals: 95% bootstrap over people (people drawn
with replacement; a pair of two drawn people counts as often as both were drawn), for each arm's
mean and for the difference between the first arm and the others. "Other photo" pairs exist only
for people with several photos; with one such person they get no interval (an anecdote).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOOTSTRAP = 2000
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _halved(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), np.float64([[1, 0, 0], [0, 1, 0]])


def _cropped(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Five percent off the left and top, two off the right and bottom, then scaled to 80%."""
    import cv2

    h, w = img.shape[:2]
    x0, y0, x1, y1 = round(0.05 * w), round(0.05 * h), round(0.98 * w), round(0.98 * h)
    s = 0.8
    out = cv2.resize(img[y0:y1, x0:x1], (round((x1 - x0) * s), round((y1 - y0) * s)), interpolation=cv2.INTER_AREA)
    return out, np.float64([[s, 0, -s * x0], [0, s, -s * y0]])


def _mirrored(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = img.shape[1]
    return np.ascontiguousarray(img[:, ::-1]), np.float64([[-1, 0, w - 1], [0, 1, 0]])


def _jpeg(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 30])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR), np.float64([[1, 0, 0], [0, 1, 0]])


def _light(factor: float, offset: float):
    def apply(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.clip(img.astype(np.float32) * factor + offset, 0, 255).astype(np.uint8)
        return out, np.float64([[1, 0, 0], [0, 1, 0]])

    return apply


def _rotated(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 10, 1.0)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT), m


#: name -> function(image) -> (re-captured image, 2x3 affine map from original to new coordinates)
RECAPTURES = {
    "original": lambda img: (img, np.float64([[1, 0, 0], [0, 1, 0]])),
    "halved": _halved,
    "cropped": _cropped,
    "mirrored": _mirrored,
    "jpeg30": _jpeg,
    "darker": _light(0.6, 0),
    "brighter": _light(1.25, 20),
    "rotated10": _rotated,
}


@dataclass
class Face:
    person: str
    photo: str
    capture: str
    crop: np.ndarray


def person_of(photo: str) -> str:
    return re.split(r"[\d.]", photo, maxsplit=1)[0].rstrip("_") or photo


def collect_faces(folder: Path, skip: set[str]) -> tuple[list[Face], list[str]]:
    """Every face of every re-capture of every photo; and what was not found."""
    from kface_cli.face.detector import get_detector
    from kface_cli.face.imageio import read_image
    from kface_cli.face.pipeline import faces_in_image

    detector = get_detector("detect")
    faces: list[Face] = []
    missed: list[str] = []
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.name not in skip)
    for photo in photos:
        image = read_image(photo)
        originals = faces_in_image(image, detector)
        if not originals:
            missed.append(f"{photo.name}: no face")
            continue
        # people of a photo: left to right; their centres and eye distances in the original
        originals.sort(key=lambda f: f.face.points5[:, 0].mean())
        centres = np.array([f.face.points5.mean(axis=0) for f in originals], np.float64)
        eyes = np.array([np.linalg.norm(f.face.points5[1] - f.face.points5[0]) for f in originals])
        labels = (
            [person_of(photo.name)]
            if len(originals) == 1
            else [f"{photo.name}#{k}" for k in range(len(originals))]  # a group photo: one person per face
        )
        for name, recapture in RECAPTURES.items():
            if name == "original":
                found = originals
                img, m = image, np.float64([[1, 0, 0], [0, 1, 0]])
            else:
                img, m = recapture(image)
                found = faces_in_image(img, detector)
            expected = centres @ m[:, :2].T + m[:, 2]
            scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
            for k, (centre, eye) in enumerate(zip(expected, eyes)):
                near = [
                    (float(np.linalg.norm(f.face.points5.mean(axis=0) - centre)), f)
                    for f in found
                    if np.linalg.norm(f.face.points5.mean(axis=0) - centre) < 0.5 * eye * scale
                ]
                if not near:
                    missed.append(f"{photo.name} {name}: {labels[k]} not found")
                    continue
                faces.append(Face(labels[k], photo.name, name, min(near, key=lambda t: t[0])[1].crop))
    return faces, missed


def val_threshold(model, workdir: Path) -> float:
    """The cosine threshold with the highest accuracy on the workspace's val pairs (no flip: as
    ``kface verify`` and ``identify`` embed)."""
    import csv

    from kface_cli.face.pipeline import load_aligned

    with open(workdir / "split" / "val_pairs.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = sorted({r["path1"] for r in rows} | {r["path2"] for r in rows})
    index = {p: i for i, p in enumerate(paths)}
    emb = model.embed(np.stack([load_aligned(workdir / "split" / p) for p in paths]))
    cos = np.array([float(emb[index[r["path1"]]] @ emb[index[r["path2"]]]) for r in rows])
    same = np.array([r["same"] == "1" for r in rows])
    cuts = np.unique(cos)
    acc = [((cos >= c) == same).mean() for c in cuts]
    return float(cuts[int(np.argmax(acc))])


def weighted_auc(score: np.ndarray, same: np.ndarray, weight: np.ndarray) -> float:
    """P(a same-person pair scores above a different-person pair), pairs weighted; ties count half."""
    order = np.argsort(score, kind="stable")
    s, y, w = score[order], same[order], weight[order]
    neg = np.where(~y, w, 0.0)
    pos = np.where(y, w, 0.0)
    # per distinct score: negatives strictly below, and tied negatives
    uniq, start = np.unique(s, return_index=True)
    neg_at = np.add.reduceat(neg, start)
    pos_at = np.add.reduceat(pos, start)
    below = np.cumsum(neg_at) - neg_at
    total = pos.sum() * neg.sum()
    return float((pos_at * (below + 0.5 * neg_at)).sum() / total) if total > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, help="folder of real photos (see the module doc)")
    ap.add_argument("-w", "--workdir", type=Path, required=True, help="workspace whose val pairs set each threshold")
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar=("LABEL", "RUN"),
                    help="a label and its models (run folders), e.g. --arm none runs/a runs/b; first arm: baseline")  # fmt: skip
    ap.add_argument("--skip", nargs="*", default=[], help="photo file names to leave out")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()
    if any(len(a) < 2 for a in args.arm):
        ap.error("--arm needs a label and at least one run folder")
    from kface_cli.embedding.loading import load_embedder

    faces, missed = collect_faces(args.photos, set(args.skip))
    people = sorted({f.person for f in faces})
    print(f"{len(faces)} faces of {len(people)} people from {args.photos} ({len(RECAPTURES)} captures per photo):")
    for p in people:
        mine = [f for f in faces if f.person == p]
        print(f"  {p}: {len(mine)} faces from {len({f.photo for f in mine})} photo(s)")
    for m in missed:
        print(f"  not used: {m}")

    i, j = np.triu_indices(len(faces), k=1)
    pi = np.array([people.index(f.person) for f in faces])
    same = pi[i] == pi[j]
    other_photo = same & np.array([faces[a].photo != faces[b].photo for a, b in zip(i, j)])
    recapture = same & ~other_photo
    different = ~same
    kinds = {"re-capture": recapture, "other photo": other_photo}
    print(
        f"pairs: {int(recapture.sum())} re-capture, {int(other_photo.sum())} other photo "
        f"({len({p for p in pi[i[other_photo]]})} person), {int(different.sum())} different people"
    )

    crops = np.stack([f.crop for f in faces])
    results: dict[str, list[dict]] = {}
    cosines: dict[str, list[np.ndarray]] = {}
    for label, *runs in args.arm:
        results[label], cosines[label] = [], []
        for run in runs:
            model = load_embedder(run)
            emb = model.embed(crops)
            cos = np.einsum("nd,nd->n", emb[i], emb[j])
            t = val_threshold(model, args.workdir)
            row = {"run": run, "val_threshold": t, "far": float((cos[different] >= t).mean())}
            for k, mask in kinds.items():
                sel = mask | different
                row[f"auc {k}"] = weighted_auc(cos[sel], same[sel], np.ones(int(sel.sum())))
                row[f"tar {k}"] = float((cos[mask] >= t).mean()) if mask.any() else float("nan")
            results[label].append(row)
            cosines[label].append(cos)

    rng = np.random.default_rng(0)
    metrics = ["auc re-capture", "tar re-capture", "far", "auc other photo", "tar other photo"]

    def arm_means(counts: np.ndarray) -> dict[str, dict[str, float]]:
        """Each arm's mean over its models of the re-capture metrics, pairs weighted by ``counts``."""
        w = np.where(same, counts[pi[i]], counts[pi[i]] * counts[pi[j]]).astype(np.float64)
        out = {}
        for label, rows in results.items():
            vals = {"auc re-capture": [], "tar re-capture": [], "far": []}
            for row, cos in zip(rows, cosines[label]):
                sel = recapture | different
                vals["auc re-capture"].append(weighted_auc(cos[sel], same[sel], w[sel]))
                t = row["val_threshold"]
                vals["tar re-capture"].append(float((w * recapture * (cos >= t)).sum() / (w * recapture).sum()))
                vals["far"].append(float((w * different * (cos >= t)).sum() / (w * different).sum()))
            out[label] = {k: float(np.mean(v)) for k, v in vals.items()}
        return out

    boot = []
    while len(boot) < BOOTSTRAP:
        counts = np.bincount(rng.integers(0, len(people), len(people)), minlength=len(people))
        w = np.where(same, counts[pi[i]], counts[pi[i]] * counts[pi[j]])
        if (w * recapture).sum() == 0 or (w * different).sum() == 0:
            continue  # a draw of one person: no different-person pair
        boot.append(arm_means(counts))

    def interval(values: list[float]) -> tuple[float, float]:
        v = np.sort(np.asarray(values))
        return float(v[int(0.025 * len(v))]), float(v[int(0.975 * len(v)) - 1])

    base = next(iter(results))
    summary: dict[str, dict] = {}
    print(f"\nper model (threshold: highest accuracy on {args.workdir}/split/val_pairs.csv; cosine, no flip)")
    print("| arm | run | val threshold | AUC re-capture | TAR re-capture | FAR | AUC other photo | TAR other photo |")
    print("|---|---|---|---|---|---|---|---|")
    for label, rows in results.items():
        for row in rows:
            print(
                f"| {label} | {Path(row['run']).name} | {row['val_threshold']:.3f} | {row['auc re-capture']:.4f} | "
                f"{row['tar re-capture']:.1%} | {row['far']:.1%} | {row['auc other photo']:.4f} | "
                f"{row['tar other photo']:.1%} |"
            )
    print("\nper arm: mean over its models [range], 95% bootstrap over people (re-capture and different pairs)")
    print("| arm | AUC re-capture | TAR re-capture | FAR | AUC other photo | TAR other photo |")
    print("|---|---|---|---|---|---|")
    for label, rows in results.items():
        summary[label] = {}
        cells = []
        for k in metrics:
            vals = [r[k] for r in rows]
            entry = {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals))}
            pct = not k.startswith("auc")
            fmt = (lambda x: f"{x:.1%}") if pct else (lambda x: f"{x:.4f}")
            cell = f"{fmt(entry['mean'])} [{fmt(entry['min'])}-{fmt(entry['max'])}]"
            if k in boot[0][label]:
                entry["ci95"] = interval([b[label][k] for b in boot])
                cell += f" ({fmt(entry['ci95'][0])}-{fmt(entry['ci95'][1])})"
            summary[label][k] = entry
            cells.append(cell)
        print(f"| {label} ({len(rows)} models) | " + " | ".join(cells) + " |")
    for label in results:
        if label == base:
            continue
        print(f"\n{label} minus {base} (means over models; 95% bootstrap over people):")
        for k in ("auc re-capture", "tar re-capture", "far"):
            d = summary[label][k]["mean"] - summary[base][k]["mean"]
            lo, hi = interval([b[label][k] - b[base][k] for b in boot])
            verdict = "above zero" if lo > 0 else "below zero" if hi < 0 else "includes zero"
            scale, unit = (1, "") if k.startswith("auc") else (100, " points")
            print(f"  {k}: {d * scale:+.4g}{unit} (95% {lo * scale:+.4g} to {hi * scale:+.4g}: {verdict})")
            summary[label][f"minus {base} {k}"] = {"mean": d, "ci95": [lo, hi]}
        d = summary[label]["auc other photo"]["mean"] - summary[base]["auc other photo"]["mean"]
        print(f"  auc other photo: {d:+.4f} (one person's photos: no interval)")
    if args.json:
        args.json.write_text(
            json.dumps({"people": people, "missed": missed, "arms": results, "summary": summary}, indent=2)
        )
        print(f"\n{args.json}")


if __name__ == "__main__":
    sys.exit(main())
