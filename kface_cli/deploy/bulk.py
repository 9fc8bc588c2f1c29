"""Bulk enrolment: embeddings computed elsewhere (``kface embed``, another machine, a batch job) into a gallery.

The input is the HDF5 file ``kface embed --out FILE.h5`` writes
(:func:`kface_cli.deploy.compare.save_embeddings`)::

    embeddings (N, D) float   one row per face
    names      (N,)   text    per row: the photo's path (``kface embed``) or an identity name
    attrs: model = JSON of the model that made them (fingerprint, embedding_size, network, ...)

Every field is validated with bounded sizes before use. The model fingerprint in the file must be
the gallery's (a new gallery takes the file's model); a ``--model`` given as well must match too.
Identity names come from the ``names`` entries (:class:`NamesFrom`); vectors are checked finite,
non-zero and of the gallery's width, normalised, stored as float16 and committed in batches
(:meth:`~kface_cli.gallery.store.Gallery.append_vectors`), so a killed run keeps every committed
batch and running it again adds only what is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from kface_cli.errors import InputError, ModelMismatchError
from kface_cli.gallery.store import MAX_EMBEDDING_SIZE, MAX_ROWS, Gallery, ModelInfo

#: Rows read from the file and committed to the gallery at a time.
BULK_BATCH_ROWS = 16384
MAX_MODEL_JSON = 1 << 20
MAX_ENTRY_BYTES = 4096


class NamesFrom(str, Enum):
    AUTO = "auto"  # entry, or folder when every entry is a path
    ENTRY = "entry"  # the entry itself is the identity name
    FOLDER = "folder"  # the photo's folder: DIR/<name>/photo.jpg
    STEM = "stem"  # the photo's file name without its extension: DIR/<name>.jpg


@dataclass
class BulkResult:
    gallery: Path
    file: Path
    model: dict[str, Any]
    names_from: str
    rows: int
    added: int
    duplicates: int
    identities: int
    templates: int  # in the gallery afterwards
    per_identity: list[dict[str, Any]]  # {name, rows, added, duplicates, templates}, sorted by name
    seconds: float  # reading, checking and committing the rows
    index_seconds: float = 0.0  # building and saving the search index afterwards

    def to_json(self) -> dict[str, Any]:
        """What ``kface enroll --embeddings --json`` prints: ``kface enroll``'s keys, plus the file's."""
        return {
            "photos": 0,
            "added": self.added,
            "duplicates": self.duplicates,
            "skipped": 0,
            "templates_added": self.added,
            "templates_removed": 0,
            "gallery": self.gallery,
            "model": self.model,
            "per_identity": "all",
            "seconds": round(self.seconds, 3),
            "identities": self.per_identity,
            "problems": [],
            "embeddings_file": self.file,
            "names_from": self.names_from,
            "rows": self.rows,
            "templates_in_gallery": self.templates,
            "index_seconds": round(self.index_seconds, 3),
        }


def _bad(path: Path, what: str) -> InputError:
    return InputError(
        f"{path} is not an embeddings file kface can enrol ({what})",
        hint="Pass the HDF5 file `kface embed --out FILE.h5` writes (datasets embeddings and names, attribute model).",
    )


def _open_embeddings(path: Path):
    """Open and validate the file; returns (h5 file, rows, dimension, model dict)."""
    import h5py

    if not path.is_file():
        raise InputError(f"embeddings file not found: {path}", hint="Make one with `kface embed PHOTOS --out FILE.h5`.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise _bad(path, f"not a readable HDF5 file: {str(e).splitlines()[0][:100]}") from None
    try:
        for k in ("embeddings", "names"):
            if not isinstance(f.get(k, getlink=True), h5py.HardLink) or not isinstance(f[k], h5py.Dataset):
                raise _bad(path, f"no {k} dataset stored inside it")
            if f[k].external or f[k].is_virtual:
                raise _bad(path, f"its {k} refer to data outside the file")
        emb, names = f["embeddings"], f["names"]
        if emb.ndim != 2 or emb.dtype.kind != "f" or emb.dtype.itemsize not in (2, 4, 8):
            raise _bad(path, f"embeddings are {emb.dtype} with {emb.ndim} dimensions, expected (N, D) floats")
        n, d = emb.shape
        if not (0 < n <= MAX_ROWS and 1 <= d <= MAX_EMBEDDING_SIZE):
            raise _bad(path, f"embeddings of shape {n}x{d}")
        if names.ndim != 1 or names.shape[0] != n or names.dtype.kind not in "SOU":
            raise _bad(path, f"{names.shape[0] if names.ndim else 0} names of type {names.dtype} for {n} embeddings")
        if emb.id.get_storage_size() < n * d * emb.dtype.itemsize and emb.compression is None:
            raise _bad(path, f"it claims {n:,} embeddings but stores fewer")
        raw = f.attrs.get("model")
        if raw is None:
            raise _bad(path, "no model attribute: which model made these embeddings is unknown")
        if isinstance(raw, bytes | np.bytes_):
            raw = bytes(raw).decode("utf-8", errors="replace")
        if not isinstance(raw, str) or len(raw) > MAX_MODEL_JSON:
            raise _bad(path, "its model attribute is not JSON text")
        try:
            model = json.loads(raw)
        except (ValueError, RecursionError):
            raise _bad(path, "its model attribute is not valid JSON") from None
        if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str) or not model["fingerprint"]:
            raise _bad(path, "its model attribute has no fingerprint")
        size = model.get("embedding_size", d)
        if not isinstance(size, int) or isinstance(size, bool) or size != d:
            raise _bad(path, f"its model says {size}-d embeddings, the file holds {d}-d")
        faces = f.get("faces", getlink=True)
        if isinstance(faces, h5py.HardLink) and isinstance(f["faces"], h5py.Dataset) and f["faces"].shape == (n,):
            if int(np.max(f["faces"][()], initial=1)) > 1:  # `kface embed --all-faces`: a photo's faces share its entry
                raise InputError(
                    f"{path} holds several faces of some photos (kface embed --all-faces): its rows cannot be "
                    "named by their photo",
                    hint="Enrol embeddings of one face per photo (`kface embed` without --all-faces), or name "
                    "each face with Gallery.add_embeddings(names, vectors).",
                )
        return f, n, d, model
    except BaseException:
        f.close()
        raise


def _entries(f, path: Path) -> list[str]:
    out = []
    for v in f["names"][()]:
        if isinstance(v, bytes | np.bytes_):
            v = bytes(v).decode("utf-8", errors="surrogateescape")
        v = str(v)
        if len(v) > MAX_ENTRY_BYTES:
            raise _bad(path, f"a name entry is {len(v):,} characters long")
        out.append(v)
    return out


def identity_names(entries: list[str], names_from: NamesFrom | str) -> tuple[list[str], NamesFrom]:
    """Identity names from the file's entries; ``auto`` picks ``folder`` when every entry is a path, else ``entry``."""
    mode = NamesFrom(names_from)
    if mode is NamesFrom.AUTO:
        paths = ["/" in e or "\\" in e for e in entries]
        if all(paths):
            mode = NamesFrom.FOLDER
        elif not any(paths):
            mode = NamesFrom.ENTRY
        else:
            raise InputError(
                "some name entries are photo paths and some are not: cannot tell where the identity names are",
                hint="Say which with --names-from entry|folder|stem.",
            )
    if mode is NamesFrom.ENTRY:
        names = [e.strip() for e in entries]
    elif mode is NamesFrom.FOLDER:
        names = [Path(e.replace("\\", "/")).parent.name for e in entries]
    else:
        names = [Path(e.replace("\\", "/")).stem for e in entries]
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise InputError(
            f"{len(empty):,} entries give an empty identity name with --names-from {mode.value} "
            f"(first: row {empty[0]}, {entries[empty[0]]!r})",
            hint="Choose another --names-from (entry, folder or stem).",
        )
    from kface_cli.face.imageio import check_identity_name

    for i, name in enumerate(names):
        if name.strip().casefold() == "unknown":  # what identify reports for no match (one check for all)
            check_identity_name(name, f"row {i}, {entries[i]!r}")
    return names, mode


def enroll_embeddings(
    file: str | Path,
    gallery_path: str | Path,
    *,
    names_from: NamesFrom | str = NamesFrom.AUTO,
    embedder=None,
    batch_rows: int = BULK_BATCH_ROWS,
    update_index: bool = True,
) -> BulkResult:
    """Enrol every row of an embeddings file into the gallery (created if missing); see the module doc.

    ``embedder``: optional model (or a loader returning one) the user named: its fingerprint
    must match the file's. The gallery's must match too (:class:`ModelMismatchError`).
    """
    from kface_cli.console import info, progress
    from kface_cli.deploy.model import resolve_embedder

    file = Path(file)
    if batch_rows < 1:
        raise InputError(f"--commit-every must be at least 1, got {batch_rows}")
    f, n, d, model_doc = _open_embeddings(file)
    with f:
        entries = _entries(f, file)
        names, mode = identity_names(entries, names_from)
        if NamesFrom(names_from) is NamesFrom.AUTO:
            info(
                f"identity names from the entries' {'folders' if mode is NamesFrom.FOLDER else 'text'} "
                f"(--names-from {mode.value}); e.g. {entries[0]!r} -> {names[0]!r}"
            )
        model = ModelInfo(
            fingerprint=model_doc["fingerprint"],
            embedding_size=d,
            network=str(model_doc.get("network") or ""),
            source=str(model_doc.get("source") or ""),
        )
        if embedder is not None:
            given = ModelInfo.of(resolve_embedder(embedder))
            if given.fingerprint != model.fingerprint or given.embedding_size != d:
                raise ModelMismatchError(
                    f"{file} was made with another model ({model.network or '?'} {model.fingerprint[:12]}, {d}-d) "
                    f"than --model ({given.network or '?'} {given.fingerprint[:12]}, {given.embedding_size}-d)",
                    hint="Pass the model that made the file, or leave --model out.",
                )
        gallery = Gallery(gallery_path)
        if gallery.exists():
            ours = gallery.model()
            if ours.fingerprint != model.fingerprint or ours.embedding_size != d:
                raise ModelMismatchError(
                    f"{file} was made with another model ({model.network or '?'} {model.fingerprint[:12]}, {d}-d) "
                    f"than gallery {gallery.path} ({ours.network or '?'} {ours.fingerprint[:12]}, {ours.embedding_size}-d)",
                    hint="Embed the photos with the gallery's model, or enrol into a new --gallery.",
                )
        emb = f["embeddings"]
        for a in range(0, n, batch_rows):  # every row checked before anything is committed
            block = np.asarray(emb[a : a + batch_rows], dtype=np.float32)
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            bad = np.flatnonzero(~np.isfinite(norms) | (norms < 1e-6))
            if len(bad):
                row = a + int(bad[0])
                what = "is not finite (NaN or infinite)" if not np.isfinite(block[bad[0]]).all() else "is zero"
                raise InputError(
                    f"{file}: embedding {row} ({entries[row]!r}) {what}; nothing was enrolled",
                    hint="The model or job that wrote the file is broken; embed the photos again.",
                )
        sources = entries if mode is not NamesFrom.ENTRY else [f"{file.name}#{i}" for i in range(n)]
        started = time.perf_counter()
        before = gallery.facts().templates if gallery.exists() else 0
        text = sum(len(s.encode("utf-8", "surrogateescape")) for s in names + sources)
        gallery.reserve(before + n, model, text_bytes=text + (gallery._text_used() if before else 0))
        added = duplicates = 0
        duplicate_sources: set[str] = set()
        with progress("Enrolling embeddings", total=n) as bar:
            for a in range(0, n, batch_rows):
                b = min(n, a + batch_rows)
                r = gallery.append_vectors(
                    names[a:b], emb[a:b], model, sources=sources[a:b], batch_rows=batch_rows, reserve=False
                )
                added += r.added
                duplicates += len(r.duplicates)
                duplicate_sources.update(r.duplicates)
                bar.advance(b - a)
    from kface_cli.gallery.index import NUMPY_EXACT_MAX, load_index

    in_gallery = gallery.identities()
    facts = gallery.facts()
    seconds = time.perf_counter() - started
    stats: dict[str, list[int]] = {}
    for name, source in zip(names, sources):
        row = stats.setdefault(name, [0, 0])
        row[0] += 1
        row[1] += source in duplicate_sources
    per_identity = [
        {"name": k, "rows": v[0], "added": v[0] - v[1], "duplicates": v[1], "templates": in_gallery.get(k, 0)}
        for k, v in sorted(stats.items())
    ]
    if update_index and facts.templates > NUMPY_EXACT_MAX:
        load_index(gallery)  # build and save the index identify will load
    index_seconds = time.perf_counter() - started - seconds
    return BulkResult(
        gallery=gallery.path,
        file=file,
        model={"network": model.network, "fingerprint": model.fingerprint, "embedding_size": d, "source": model.source},
        names_from=mode.value,
        rows=n,
        added=added,
        duplicates=duplicates,
        identities=len(stats),
        per_identity=per_identity,
        templates=facts.templates,
        seconds=seconds,
        index_seconds=index_seconds,
    )
