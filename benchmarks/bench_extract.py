"""Extraction speed: kface's extract (each zip opened once) vs the tutorial's way (a new ZipFile per member).

A real K-Face identity zip lists about 11,040 members (the 10,800-image grid plus 240
annotations). Opening a ``ZipFile`` parses that whole central directory, so the tutorial, which
opened the zip again for each of the 48 files it wanted (24 images + 24 annotations), parsed it
48 times per identity. This script builds zips with K-Face's full member list (the 24 tutorial
images are real synthetic renders; the other members are small placeholders, which keeps the zips
small without changing the central directory's size) and times both ways on the same files.

    python benchmarks/bench_extract.py [--ids 4] [--workers 1]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from kface_cli.atomic import write_bytes
from kface_cli.console import set_mode
from kface_cli.dataset import codes as kc
from kface_cli.prepare.extract import Selection, extract
from kface_cli.synth.identity import identity_ids, make_identity
from kface_cli.synth.sample_data import grid, identity_zip_bytes


def build_source(root: Path, n_ids: int, res: str = "Middle") -> list[str]:
    """K-Face-shaped zips: the full grid's member list, real images for the tutorial selection."""
    members = Selection().images()
    ids = identity_ids(n_ids, seed=11)
    for ident in ids:
        real, _ = identity_zip_bytes(make_identity(ident, 11), res, members, seed=11)
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(real)) as src, zipfile.ZipFile(buf, "w") as dst:
            have = set(src.namelist())
            for name in src.namelist():
                dst.writestr(src.getinfo(name), src.read(name))
            for acc, light, expr, cam in grid("full"):
                for ext in (".jpg", ".txt"):
                    if ext == ".txt" and not (acc == kc.ANNOTATED_ACCESSORY and light in kc.ANNOTATED_LIGHTS):
                        continue
                    name = kc.member_path(acc, light, expr, cam, ext)
                    if name not in have:
                        dst.writestr(name, b"placeholder")
        write_bytes(root / f"{res}_Resolution" / f"{ident}.zip", buf.getvalue())
    return ids


def tutorial_way(root: Path, out: Path, ids: list[str], res: str = "Middle") -> int:
    """What the original tutorial did: for every wanted member, open the zip again and extract it."""
    n = 0
    for ident in ids:
        path = root / f"{res}_Resolution" / f"{ident}.zip"
        for acc, light, expr, cam in Selection().images():
            for ext in (".jpg", ".txt"):
                with zipfile.ZipFile(path) as zf:
                    zf.extract(kc.member_path(acc, light, expr, cam, ext), out / ident)
                    n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=4)
    ap.add_argument(
        "--workers", type=int, default=1, help="kface extract's parallel identities (1 = same work, same core)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    set_mode(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "kface"
        t = time.perf_counter()
        ids = build_source(root, args.ids)
        size = sum(p.stat().st_size for p in root.rglob("*.zip"))
        with zipfile.ZipFile(next(root.rglob("*.zip"))) as zf:
            n_members = len(zf.namelist())
        print(
            f"built {args.ids} identity zips, {n_members} members each, {size / 1e6:.1f} MB ({time.perf_counter() - t:.1f} s)"
        )
        best_old = best_new = float("inf")
        for _ in range(args.repeat):
            out = Path(tmp) / "old"
            t = time.perf_counter()
            n_old = tutorial_way(root, out, ids)
            best_old = min(best_old, time.perf_counter() - t)
            shutil.rmtree(out)
            ws = Path(tmp) / "ws"
            t = time.perf_counter()
            r = extract(root, workdir=ws, res="Middle", workers=args.workers)
            best_new = min(best_new, time.perf_counter() - t)
            assert r.ok and r.images + r.annotations == n_old, (r, n_old)
            shutil.rmtree(ws)
        print(f"tutorial (ZipFile opened per member): {best_old:.3f} s for {n_old} files")
        print(f"kface extract (opened once, workers={args.workers}): {best_new:.3f} s")
        print(f"speed-up: {best_old / best_new:.1f}x  (best of {args.repeat}; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
