"""End-to-end identification speed on CPU, after the model is loaded, and enrolment throughput.

One 640x480 photo with one face (the public-domain astronaut portrait from tests/fixtures, placed
on a 640x480 canvas), MobileFaceNet (random weights unless ``--model`` is given: speed does not
depend on the weights), a gallery of ``--gallery-size`` templates. Reports the median time of each
stage (read, detect, align, embed, search) and of the whole ``identify()`` call, then enrolment
throughput in photos/s for photos (detect + align + embed + commit) and for aligned crops.

    python benchmarks/bench_e2e.py [--model runs/x] [--runs 30] [--gallery-size 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "fixtures" / "astronaut.jpg"
BUDGET_MS = 100.0


def canvas_photo(shift: tuple[int, int] = (0, 0), gain: float = 1.0) -> np.ndarray:
    """The astronaut (320x320) on a 640x480 grey canvas: one face, a typical webcam frame size."""
    from kface_cli.face.imageio import read_image

    face = read_image(FIXTURE)
    canvas = np.full((480, 640, 3), 127, np.uint8)
    x, y = 160 + shift[0], 80 + shift[1]
    canvas[y : y + 320, x : x + 320] = np.clip(face.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return canvas


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="run folder / backbone.pth / .onnx (default: random-weight MobileFaceNet)"
    )
    ap.add_argument("--network", default=None)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--gallery-size", type=int, default=10_000)
    ap.add_argument("--enroll-photos", type=int, default=40)
    ap.add_argument(
        "--min-face",
        type=int,
        default=None,
        help="detector's smallest face (kface identify --min-face); default: the detector's",
    )
    args = ap.parse_args()
    os.environ.setdefault("KFACE_NO_PROGRESS", "1")

    import torch

    from kface_cli.deploy.enroll import enroll_folder
    from kface_cli.deploy.identify import identify
    from kface_cli.embedding.embedder import embedder_from_module
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.face.align import norm_crop
    from kface_cli.face.detector import get_detector
    from kface_cli.face.imageio import read_image, write_image
    from kface_cli.gallery.index import load_index, search_identities
    from kface_cli.gallery.store import Gallery, ModelInfo, Template, content_hash
    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    t = time.perf_counter()
    if args.model:
        embedder = load_embedder(args.model, network=args.network)
    else:
        embedder = embedder_from_module(get_backbone("mbf", embedding_size=512), network="mbf", backend="auto")
    print(
        f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; model {embedder.network} ({embedder.backend}) loaded in {time.perf_counter() - t:.1f} s"
    )
    detector = get_detector("detect", min_face=args.min_face) if args.min_face else get_detector("detect")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = tmp / "probe.jpg"
        write_image(photo, canvas_photo())
        # gallery: random templates + the astronaut herself
        gallery = Gallery(tmp / "gallery.h5")
        model = ModelInfo.of(embedder)
        rng = np.random.default_rng(0)
        d = embedder.embedding_size
        for start in range(0, args.gallery_size, 65536):
            n = min(65536, args.gallery_size - start)
            e = rng.standard_normal((n, d)).astype(np.float32)
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            gallery.append(
                [
                    Template(f"person{(start + i) // 5}", v, "synthetic", content_hash(f"{start + i}".encode()))
                    for i, v in enumerate(e)
                ],
                model,
            )
        img = read_image(photo)
        faces = detector.detect(img, path=photo)
        assert len(faces) == 1, f"expected one face, found {len(faces)}"
        me = embedder.embed(norm_crop(img, faces[0].points5)[None])
        gallery.append([Template("Eileen Collins", me[0], str(photo), content_hash(photo.read_bytes()))], model)
        loaded = load_index(gallery)

        names = ("read", "detect", "align", "embed", "search", "total")
        stages: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.runs + 3):
            marks = [(time.perf_counter(), time.process_time())]
            img = read_image(photo)
            marks.append((time.perf_counter(), time.process_time()))
            faces = detector.detect(img, path=photo)
            marks.append((time.perf_counter(), time.process_time()))
            crop = norm_crop(img, faces[0].points5)
            marks.append((time.perf_counter(), time.process_time()))
            emb = embedder.embed(crop[None])
            marks.append((time.perf_counter(), time.process_time()))
            best = search_identities(loaded, emb, top_k=3)[0][0]
            marks.append((time.perf_counter(), time.process_time()))
            if r >= 3:  # warm-up done
                spans = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
                spans.append((marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]))
                for k, (wall, c) in zip(names, spans):
                    stages[k].append(wall)
                    cpu[k].append(c)
        assert best.name == "Eileen Collins", best
        print(
            f"\nOne 640x480 photo, one face, gallery of {len(loaded.names):,} templates ({loaded.index.kind.value} index), "
            f"min face {args.min_face or 'default'}; median of {args.runs} runs"
        )
        print(
            "  (CPU time: all threads of this process; on a busy machine it shows the work itself, wall time the wait too)"
        )
        for k in names:
            print(f"  {k:8s} {median_ms(stages[k]):8.1f} ms wall {median_ms(cpu[k]):8.1f} ms CPU")
        total = median_ms(stages["total"])
        print(
            f"  => {total:.1f} ms per photo ({'within' if total <= BUDGET_MS else 'OVER'} the {BUDGET_MS:.0f} ms budget)"
        )

        calls = []
        for _ in range(5):
            t = time.perf_counter()
            identify([photo], gallery.path, embedder, detector=detector)
            calls.append(time.perf_counter() - t)
        print(f"  whole identify() call (opens gallery + index each time): {median_ms(calls):.1f} ms")

        # enrolment throughput
        people = tmp / "people"
        crops = tmp / "crops"
        for i in range(args.enroll_photos):
            im = canvas_photo(
                shift=(int(rng.integers(-60, 60)), int(rng.integers(-40, 40))), gain=float(rng.uniform(0.8, 1.1))
            )
            write_image(people / f"p{i:03d}" / "a.jpg", im)
            found = detector.detect(im)
            if found:
                write_image(crops / f"p{i:03d}" / "a.jpg", norm_crop(im, found[0].points5))
        res = enroll_folder(people, tmp / "g2.h5", embedder, detector=detector, update_index=False)
        res_aligned = enroll_folder(crops, tmp / "g3.h5", embedder, aligned=True, update_index=False)
        print(
            f"\nEnrolment ({args.enroll_photos} photos, batch 32): photos {res.photos_per_second:.1f} photos/s; "
            f"aligned crops {res_aligned.photos_per_second:.1f} photos/s"
        )


if __name__ == "__main__":
    main()
