"""The synthetic dataset on disk: the grid of conditions, one zip per identity in K-Face's layout
(``<Res>_Resolution/<ID>.zip``), written in parallel by ``kface sample-data``."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kface_cli.choices import GridPreset
from kface_cli.dataset import codes as kc
from kface_cli.dataset.annotation import format_annotation
from kface_cli.defaults import SAMPLE_IDENTITIES, auto_workers
from kface_cli.errors import InputError
from kface_cli.synth.generator import render_face
from kface_cli.synth.identity import Identity, identity_ids, make_identity
from kface_cli.workspace import DEFAULT_RESOLUTION, normalise_resolution

JPEG_QUALITY = 75
#: Fixed zip timestamps, so archives are byte-identical for a given seed.
ZIP_DATE = (2019, 6, 25, 0, 0, 0)

#: Extra conditions of the "sample" grid, beyond the tutorial selection: dark lights, wider and
#: profile angles, an accessory (one image each, E01, frontal unless stated).
SAMPLE_EXTRAS: tuple[tuple[str, str, str, str], ...] = (
    ("S001", "L6", "E01", "C7"),
    ("S001", "L7", "E01", "C7"),
    ("S001", "L1", "E01", "C5"),
    ("S001", "L1", "E01", "C10"),
    ("S001", "L1", "E01", "C1"),
    ("S002", "L1", "E01", "C7"),
)


def grid(preset: GridPreset | str = GridPreset.SAMPLE) -> list[tuple[str, str, str, str]]:
    """The (acc, light, expr, cam) combinations of a preset, in K-Face order.

    ``tutorial``: S001 x L1,L3 x E01-E03 x C6-C9 (24 images); ``sample``: the tutorial plus
    :data:`SAMPLE_EXTRAS` (30 images); ``full``: 6 x 30 x 3 x 20 = 10,800 images.
    """
    preset = GridPreset.parse(preset, "grid")
    if preset == GridPreset.FULL:
        sel = {k: kc.all_codes(k) for k in kc.CODE_KINDS}
    else:
        sel = kc.TUTORIAL_SELECTION
    combos = [(s, l_, e, c) for s in sel["acc"] for l_ in sel["light"] for e in sel["expr"] for c in sel["cam"]]
    if preset == GridPreset.SAMPLE:
        combos += [x for x in SAMPLE_EXTRAS if x not in combos]
    return combos


def _zip_info(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    return info


def identity_zip_bytes(
    ident: Identity, res: str, combos: Sequence[tuple[str, str, str, str]], seed: int = 0
) -> tuple[bytes, int]:
    """One identity's zip, as K-Face ships it. Returns (zip bytes, number of images)."""
    import cv2

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for acc, light, expr, cam in combos:
            face = render_face(ident, acc, light, expr, cam, res, seed)
            ok, jpg = cv2.imencode(".jpg", face.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            assert ok, "JPEG encoding failed"
            zf.writestr(_zip_info(kc.member_path(acc, light, expr, cam), zipfile.ZIP_STORED), jpg.tobytes())
            if acc == kc.ANNOTATED_ACCESSORY and light in kc.ANNOTATED_LIGHTS:
                text = format_annotation(face.points, face.boxes)
                zf.writestr(_zip_info(kc.member_path(acc, light, expr, cam, ".txt"), zipfile.ZIP_DEFLATED), text)
    return buf.getvalue(), len(combos)


@dataclass(frozen=True)
class SampleDataResult:
    root: Path
    identities: int
    images: int
    resolutions: tuple[str, ...]
    grid: str
    seed: int
    bytes: int
    zips: tuple[Path, ...]


def _write_one(job: tuple[str, str, str, int, list]) -> tuple[str, int, int]:
    out, ident_id, res, seed, combos = job
    from kface_cli.atomic import write_bytes

    data, n = identity_zip_bytes(make_identity(ident_id, seed), res, combos, seed)
    path = Path(out) / f"{res}_Resolution" / f"{ident_id}.zip"
    write_bytes(path, data)
    return str(path), n, len(data)


def parse_resolution_limits(text: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """``Middle,Low:8,High:2`` -> (("Middle", "Low", "High"), {"Low": 8, "High": 2})."""
    resolutions: list[str] = []
    limits: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, count = part.partition(":")
        res = normalise_resolution(name)
        resolutions.append(res)
        if count:
            if not count.isdigit() or int(count) < 1:
                raise InputError(
                    f"{part!r}: the number after ':' must be a positive count of identities",
                    hint="E.g. --res Middle,High:2.",
                )
            limits[res] = int(count)
    if not resolutions:
        raise InputError("no resolution given", hint="E.g. --res Middle or --res Middle,Low:8,High:2.")
    return tuple(dict.fromkeys(resolutions)), limits


def generate_sample_data(
    out: str | Path,
    *,
    n_ids: int = SAMPLE_IDENTITIES,
    seed: int = 0,
    resolutions: Iterable[str] = (DEFAULT_RESOLUTION,),
    grid_preset: GridPreset | str = GridPreset.SAMPLE,
    ids_per_resolution: dict[str, int] | None = None,
    workers: int = 1,
    combos: Sequence[tuple[str, str, str, str]] | None = None,
) -> SampleDataResult:
    """Write a synthetic K-Face tree under ``out`` and return what was written.

    ``ids_per_resolution`` limits some resolutions to the first N identities (e.g. High for 2 of
    40) to keep the tree small. ``workers`` > 1 renders identities in parallel processes (0: one
    per CPU core, at most 8). ``combos`` (a list of (acc, light, expr, cam)) replaces the preset's grid.
    """
    from kface_cli.choices import check_seed

    check_seed(seed)
    from kface_cli.console import progress
    from kface_cli.dataset.provenance import mark_synthetic

    out = Path(out)
    res_list = tuple(dict.fromkeys(normalise_resolution(r) for r in resolutions))
    grid_name = GridPreset.parse(grid_preset, "grid").value if combos is None else "custom"
    combos = list(combos) if combos is not None else grid(grid_preset)
    ids = identity_ids(n_ids, seed)
    limits = ids_per_resolution or {}
    jobs = [(str(out), i, r, seed, combos) for r in res_list for i in ids[: limits.get(r, len(ids))]]
    workers = auto_workers(workers)
    paths: list[Path] = []
    images = total = 0
    with progress("Generating", total=len(jobs)) as bar:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(_write_one, jobs)
                for path, n, size in results:
                    paths.append(Path(path))
                    bar.advance()
                    images, total = images + n, total + size
        else:
            for job in jobs:
                path, n, size = _write_one(job)
                paths.append(Path(path))
                bar.advance()
                images, total = images + n, total + size
    mark_synthetic(out, seed=seed, identities=len(ids), grid=grid_name)
    return SampleDataResult(
        root=out,
        identities=len(ids),
        images=images,
        resolutions=res_list,
        grid=grid_name,
        seed=seed,
        bytes=total,
        zips=tuple(paths),
    )
