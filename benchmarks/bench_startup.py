"""Whole-process time of the commands people wait for, against `python -c pass` and face_recognition.

Each command is a fresh process, as from a shell script: `kface --help`, `kface identify` of one
640x480 photo, `kface verify` of two photos (skipped, with a note, where the command does not
exist), `kface enroll` of one photo into a new gallery, and `kface identify` of three photos
holding 8 faces, against a 3-person gallery and an ONNX model. The face_recognition 1.3.0 CLI
(when found) does the same where it can: it has no enroll, and re-encodes its known people on
every run. Rounds interleave all commands (a busy machine slows them alike); medians are printed
with the CPU time (user + sys of the process and its threads), the ratios to `python -c pass`
and to face_recognition, the largest imports of each kface command (`python -X importtime`), and
throughput on 100 photos with one thread and with one per core (in-process, after loading).

    python benchmarks/bench_startup.py [--model model.onnx] [--rounds 5] [--photos 100]
        [--known DIR --query DIR]  [--face-recognition PATH/TO/face_recognition]

For `kface identify` of one photo it also prints where the time goes: each phase's start and end
(median over the rounds, ms after the process was started), in the thread it runs in; the photo
is read and searched in a worker thread while the main thread loads the model and the gallery.

Children run with Python's bytecode cache on, as an installed kface does: PYTHONDONTWRITEBYTECODE
is removed from their environment (compiling every module on every run adds ~60 ms).

Without --known/--query the photos are made from tests/fixtures/astronaut.jpg (speed does not
depend on who is in them); without --model a random-weight MobileFaceNet is exported to ONNX.
face_recognition 1.3.0's CLI, in a venv of its own (found on PATH, or pass --face-recognition)::

    python3 -m venv /tmp/fr
    /tmp/fr/bin/pip install numpy Pillow Click 'setuptools<81' dlib-bin face-recognition-models
    /tmp/fr/bin/pip install --no-deps face_recognition==1.3.0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_e2e import FIXTURE, canvas_photo  # noqa: E402 (benchmarks/ is the script's folder)

HEAVY = ("torch", "onnx", "matplotlib", "mediapipe", "onnxruntime", "cv2", "faiss", "h5py")
GOAL_IDENTIFY_S = 0.5  # issue 24: one photo, whole process, median of 5
GOAL_HELP_S = 0.5
GOAL_FR_RATIO = 0.3
#: Top-level imports listed per command.
TOP_IMPORTS = 6
#: (width, height) and faces (x, y, side) of the three-photo case: 4 + 2 + 2 faces.
SCENES = (
    ((1280, 886), ((60, 280, 150), (400, 260, 160), (760, 300, 140), (1060, 240, 150))),
    ((640, 480), ((40, 120, 240), (360, 140, 220))),
    ((1024, 768), ((100, 200, 300), (600, 220, 280))),
)


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def median(self) -> tuple[float, float]:
        return statistics.median(self.wall), statistics.median(self.cpu)


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + sys, all threads) of one process; fails loudly on errors."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # 1: kface identify/verify found nobody it knows
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def top_imports(cmd: list[str], env: dict[str, str]) -> tuple[list[tuple[str, float]], list[str]]:
    """The largest top-level imports (name, cumulative s) of a command, and the heavy ones it loads."""
    out = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=env)
    rows = []
    loaded = set()
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit():
            loaded.add(name.strip().split(".")[0])
            if not name.startswith("  "):
                rows.append((name.strip(), int(cumulative) / 1e6))
    rows.sort(key=lambda r: -r[1])
    return rows[:TOP_IMPORTS], sorted(m for m in HEAVY if m in loaded)


#: Run as ``python -c PHASE_PROBE ARGS``: ``kface ARGS`` with its phases timed (perf_counter is
#: the system's monotonic clock, shared with the parent); prints one JSON line on stderr.
PHASE_PROBE = """
import functools, json, sys, threading, time
T = [("python started", None, time.perf_counter(), threading.current_thread().name)]
def mark(name, t0):
    T.append((name, t0, time.perf_counter(), threading.current_thread().name))
t = time.perf_counter()
import kface_cli.cli
mark("import kface_cli.cli (Typer, rich)", t)
from kface_cli.cli import common
t = time.perf_counter()
import kface_cli.cli.deploy
with common.one_blas_thread():  # as identify_cmd imports them
    from kface_cli.deploy import identify as idm
    from kface_cli.face import detector, graphs
    from kface_cli.gallery import read
mark("import identify's modules (numpy, kface)", t)
def timed(owner, attr, name):
    fn = getattr(owner, attr)
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            mark(name, t0)
    setattr(owner, attr, wrapper)
timed(idm, "identify", "identify(): the library call")
timed(read.GalleryReads, "model", "gallery checked (h5py)")
timed(idm, "resolve_embedder", "model loaded (ONNX Runtime)")
timed(idm, "load_index", "gallery read, index")
timed(idm, "_find_faces", "photo: read, detect, align")
timed(graphs, "import_mediapipe", "  mediapipe imported")
timed(detector.MediaPipeDetector, "_candidates", "  faces found (graphs made, BlazeFace)")
timed(detector.MediaPipeDetector, "_mesh_points", "  landmarks (Face Mesh)")
timed(idm, "_rank", "embedding, search")
t = time.perf_counter()
def report():
    mark("kface identify (the command, to its exit)", t)
    print(json.dumps([0, T]), file=sys.stderr)
import atexit
atexit.register(report)  # run at exit, quick or not
sys.argv = ["kface", *sys.argv[1:]]
common.main()
"""


def phases(cmd: list[str], env: dict[str, str], rounds: int) -> None:
    """Where the time of ``cmd`` (a ``kface identify`` of one photo) goes, median over ``rounds``."""
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        proc = subprocess.run([cmd[0], "-c", PHASE_PROBE, *cmd[3:]], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        line = next((x for x in reversed(proc.stderr.splitlines()) if x.startswith("[")), None)
        if line is None:
            raise SystemExit(f"phase probe failed:\n{proc.stderr[-2000:]}")
        code, marks = json.loads(line)
        if code not in (0, 1, None):
            raise SystemExit(f"phase probe: exit {code}:\n{proc.stderr[-2000:]}")
        phase: dict[str, tuple[float, float, str]] = {}
        for name, start, end, thread in marks:  # the first time each is reached
            phase.setdefault(name, (1000 * ((start or end) - t0), 1000 * (end - t0), thread))
        phase["python started"] = (0.0, phase["python started"][1], "MainThread")
        phase["process exited"] = (1000 * wall, 1000 * wall, "")
        runs.append(phase)
    names = list(runs[0])
    print(f"\nWhere the time goes, identify 1 photo (ms after the process started; median of {rounds}):")
    print(f"  {'phase':42s} {'start':>6s} {'end':>6s} {'took':>6s}  thread")
    for name in names:
        starts = [r[name][0] for r in runs if name in r]
        ends = [r[name][1] for r in runs if name in r]
        start, end = statistics.median(starts), statistics.median(ends)
        thread = runs[0][name][2].replace("MainThread", "main").split("_")[0]
        print(f"  {name:42s} {start:6.0f} {end:6.0f} {end - start:6.0f}  {thread}")


def scene(size: tuple[int, int], faces: tuple[tuple[int, int, int], ...], seed: int) -> np.ndarray:
    import cv2

    from kface_cli.face.imageio import read_image

    rng = np.random.default_rng(seed)
    face = read_image(FIXTURE)
    image = np.full((size[1], size[0], 3), 110, np.uint8)
    for x, y, side in faces:
        tile = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        tile = tile * rng.uniform(0.8, 1.1)
        image[y : y + side, x : x + side] = np.clip(tile[:, :: rng.choice([1, -1])], 0, 255).astype(np.uint8)
    return image


def make_model(tmp: Path) -> Path:
    """A random-weight MobileFaceNet exported to ONNX (speed does not depend on the weights)."""
    import json

    import torch

    from kface_cli.embedding.export import export_model
    from kface_cli.models.registry import get_backbone

    torch.manual_seed(0)
    run = tmp / "runs" / "random-mbf"
    run.mkdir(parents=True)
    torch.save(get_backbone("mbf", 512).state_dict(), run / "backbone.pth")
    (run / "config.json").write_text(json.dumps({"network": "mbf", "embedding_size": 512}))
    return export_model(run, tmp / "mbf.onnx").path


def throughput(model: Path, folder: Path, tmp: Path, rounds: int) -> None:
    """identify and enroll of a folder of photos, in-process after loading: 1 thread vs one per core."""
    from kface_cli.deploy.enroll import enroll_folder
    from kface_cli.deploy.identify import identify
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.parallel import default_workers

    os.environ["KFACE_NO_PROGRESS"] = "1"
    embedder = load_embedder(model)
    photos = sorted(folder.rglob("*.jpg"))
    gallery = tmp / "throughput.h5"
    enroll_folder(folder, gallery, embedder, update_index=True, workers=1)  # warms the main thread's graphs
    rates: dict[tuple[str, int], list[float]] = {}
    many = default_workers()
    for r in range(rounds):
        for workers in (1, many):
            t = identify([folder], gallery, embedder, workers=workers)
            rates.setdefault(("identify", workers), []).append(len(photos) / t.seconds)
            e = enroll_folder(folder, tmp / f"enroll-{r}-{workers}.h5", embedder, update_index=False, workers=workers)
            rates.setdefault(("enroll", workers), []).append(e.photos_per_second)
    print(f"\nThroughput, {len(photos)} photos 640x480 (in-process, model loaded; median of {rounds}):")
    for what in ("identify", "enroll"):
        one, all_ = (statistics.median(rates[(what, w)]) for w in (1, many))
        print(f"  {what:8s} 1 thread {one:5.1f} photos/s   {many} threads {all_:5.1f} photos/s   ({all_ / one:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: a random-weight mbf)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--photos", type=int, default=100, help="photos for the throughput part (0: skip it)")
    ap.add_argument("--known", type=Path, default=None, help="folder of known people, one photo each")
    ap.add_argument("--query", type=Path, default=None, help="folder of the photos of the several-photo case")
    ap.add_argument("--face-recognition", default=None, help="face_recognition CLI (default: on PATH)")
    args = ap.parse_args()
    from kface_cli.face.imageio import write_image

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},  # bytecode on
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "KFACE_NO_PROGRESS": "1",
            "KFACE_CACHE": str(tmp / "cache"),
        }
        model = args.model.resolve() if args.model else make_model(tmp)
        known = args.known
        if known is None:
            known = tmp / "known"
            for i, name in enumerate(("ann", "bea", "cho")):
                write_image(known / f"{name}.jpg", canvas_photo(shift=(40 * i - 40, 20 * i), gain=0.9 + 0.05 * i))
        one = tmp / "one.jpg"
        write_image(one, canvas_photo(shift=(30, -10), gain=0.95))
        query = args.query  # a folder: face_recognition checks one file or one folder
        if query is None:
            query = tmp / "query"
            for i, (size, faces) in enumerate(SCENES):
                write_image(query / f"scene{i}.jpg", scene(size, faces, seed=i))
        query_photos = sum(1 for p in query.iterdir() if p.is_file())
        newcomer = tmp / "newcomer"
        write_image(newcomer / "dee.jpg", canvas_photo(shift=(-20, 10), gain=1.05))
        first_known = sorted(p for p in known.iterdir() if p.is_file())[0]
        one_known = tmp / "one-known"  # face_recognition's verify: a "known people" folder of one
        one_known.mkdir()
        shutil.copy(first_known, one_known)
        gallery = tmp / "gallery.h5"

        py = sys.executable
        kface = [py, "-m", "kface_cli"]
        subprocess.run(
            [*kface, "enroll", str(known), "--gallery", str(gallery), "--model", str(model)],
            env=env,
            check=True,
            capture_output=True,
        )
        verify = [*kface, "verify", str(one), str(first_known), "--model", str(model), "--json"]
        has_verify = subprocess.run(verify, env=env, capture_output=True).returncode in (0, 1)  # 1: not the same
        fr = args.face_recognition or shutil.which("face_recognition")

        enrolled = iter(range(10**6))
        cases: list[tuple[str, Callable[[], list[str]] | None, list[str] | None]] = [
            ("python -c pass", lambda: [py, "-c", "pass"], None),
            ("--help", lambda: [*kface, "--help"], [fr, "--help"] if fr else None),
            (
                "identify 1 photo (640x480, 1 face)",
                lambda: [*kface, "identify", str(one), "--gallery", str(gallery), "--model", str(model), "--json"],
                [fr, str(known), str(one)] if fr else None,
            ),
            (
                "verify 2 photos",
                (lambda: verify) if has_verify else None,
                [fr, str(one_known), str(one)] if fr else None,
            ),
            (
                "enroll 1 photo (new gallery)",
                lambda: [
                    *kface,
                    "enroll",
                    str(newcomer),
                    "--gallery",
                    str(tmp / f"new{next(enrolled)}.h5"),
                    "--model",
                    str(model),
                    "--json",
                ],
                None,
            ),
            (
                f"identify {query_photos} photos (3-person gallery)",
                lambda: [
                    *kface,
                    "identify",
                    str(query),
                    "--gallery",
                    str(gallery),
                    "--model",
                    str(model),
                    "--json",
                ],
                [fr, str(known), str(query)] if fr else None,
            ),
        ]
        ours: dict[str, Timings] = {name: Timings() for name, _, _ in cases}
        theirs: dict[str, Timings] = {name: Timings() for name, _, peer in cases if peer}
        for _, make, _ in cases:  # warm the page cache and the ONNX cache once
            if make:
                run_timed(make(), env)
        for _ in range(args.rounds):
            for name, make, peer in cases:
                if make:
                    wall, cpu = run_timed(make(), env)
                    ours[name].wall.append(wall)
                    ours[name].cpu.append(cpu)
                if peer:
                    wall, cpu = run_timed(peer, env)
                    theirs[name].wall.append(wall)
                    theirs[name].cpu.append(cpu)

        print(
            f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; model {model.name}; "
            f"median of {args.rounds} rounds, commands interleaved; CPU = user + sys of all threads"
        )
        print(f"face_recognition: {fr or 'not found (see the docstring to install it)'}\n")
        bare = ours["python -c pass"].median()[0]
        print(
            f"{'command':42s} {'kface wall':>10s} {'CPU':>6s} {'/ pass':>7s}   {'face_rec. wall':>14s} {'CPU':>6s} {'kface/fr':>8s}"
        )
        results: dict[str, float] = {}
        for name, make, peer in cases:
            if make is None:
                print(f"{name:42s} skipped: `kface verify PHOTO PHOTO --model M` does not run in this checkout")
                continue
            wall, cpu = ours[name].median()
            results[name] = wall
            line = f"{name:42s} {wall:9.2f}s {cpu:5.2f}s {wall / bare:6.1f}x"
            if peer:
                fw, fc = theirs[name].median()
                line += f"   {fw:13.2f}s {fc:5.2f}s {wall / fw:7.2f}x"
            print(line)

        rounds_one = ours["identify 1 photo (640x480, 1 face)"]
        print(
            "\nidentify 1 photo, each round: wall "
            + " ".join(f"{w:.3f}" for w in rounds_one.wall)
            + " s; CPU "
            + " ".join(f"{c:.3f}" for c in rounds_one.cpu)
            + f" s (medians {statistics.median(rounds_one.wall):.3f} / {statistics.median(rounds_one.cpu):.3f})"
        )
        identify_one = results["identify 1 photo (640x480, 1 face)"]
        several = cases[-1][0]
        print(
            f"\ngoals: identify 1 photo <= {GOAL_IDENTIFY_S} s: {'yes' if identify_one <= GOAL_IDENTIFY_S else 'NO'} "
            f"({identify_one:.2f} s); --help <= {GOAL_HELP_S} s: "
            f"{'yes' if results['--help'] <= GOAL_HELP_S else 'NO'} ({results['--help']:.2f} s)"
            + (
                f"; {several} <= {GOAL_FR_RATIO} x face_recognition: "
                f"{'yes' if results[several] <= GOAL_FR_RATIO * theirs[several].median()[0] else 'NO'} "
                f"({results[several] / theirs[several].median()[0]:.2f}x)"
                if several in theirs
                else ""
            )
        )

        phases(cases[2][1](), env, args.rounds)

        print(f"\nLargest imports (python -X importtime, cumulative; {TOP_IMPORTS} largest top-level):")
        for name, make, _ in cases[1:]:
            if make is None:
                continue
            rows, heavy = top_imports(make(), env)
            print(f"  {name}: " + ", ".join(f"{m} {s:.2f}s" for m, s in rows))
            print(f"  {'':{len(name)}s}  heavy libraries loaded: {', '.join(heavy) or 'none'}")

        if args.photos:
            folder = tmp / "many"
            rng = np.random.default_rng(1)
            for i in range(args.photos):
                shift = (int(rng.integers(-120, 120)), int(rng.integers(-60, 60)))
                write_image(
                    folder / f"p{i:03d}" / "a.jpg", canvas_photo(shift=shift, gain=float(rng.uniform(0.8, 1.1)))
                )
            throughput(model, folder, tmp, rounds=max(1, args.rounds // 2))


if __name__ == "__main__":
    main()
