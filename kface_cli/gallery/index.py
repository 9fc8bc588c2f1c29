"""The search index: FAISS over the gallery's unit embeddings, kept beside the gallery file.

``gallery.h5`` -> ``gallery.faiss`` (the index) + ``gallery.faiss.json`` (what it was built from:
template count, the gallery's content stamp, the index kind and its parameters, and the SHA-256 of
``gallery.faiss``). A hash of that JSON is recorded in the gallery's own digest
(:meth:`~kface_cli.gallery.store.Gallery.bind_index`), so the index is trusted only when the
gallery vouches for the JSON, the JSON for the index file's bytes, and the JSON's stamp is the
gallery's current content. Otherwise (stale, edited, or saved where the gallery could not record
it) :func:`load_index` rebuilds it from the verified embeddings, and says so when it had been changed.

Kinds (``--index``):

* ``flat``: exact inner-product search (``IndexFlatIP``). The right choice up to ~50k templates
  (a query scans everything: ~2 ms per 10k 512-d templates on one core).
* ``ivf``: inverted lists with 8-bit scalar-quantised vectors (``IndexIVFScalarQuantizer``),
  ``nlist ~ 2 sqrt(N)`` k-means cells trained on a sample, ``nprobe`` = 64 cells scanned per
  query. Builds in a few minutes at 1M templates on 2 cores, takes a quarter of the RAM of the
  float vectors; the default for large galleries. Distances are within ~0.002 of exact.
* ``hnsw``: a graph (``IndexHNSWFlat``, M=32). Fast queries, slow to build on few cores.
* ``auto``: ``flat`` below :data:`AUTO_FLAT_MAX` templates, else ``ivf``.

Embeddings are unit vectors, so inner product = cosine and the distance reported everywhere is
the squared L2 distance ``|a - b|^2 = 2 - 2 cos`` (0 = identical, 2 = orthogonal, 4 = opposite),
the unit of ``--threshold`` and of the verification metrics.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kface_cli.atomic import atomic_path
from kface_cli.choices import IndexKind
from kface_cli.defaults import AUTO_FLAT_MAX, MAX_DISTANCE
from kface_cli.errors import DiskFullError, InputError, KFaceError, ReadOnlyError
from kface_cli.workspace import cache_dir

INDEX_SUFFIX = ".faiss"
META_SUFFIX = ".faiss.json"
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128
#: IVF: cells scanned per query, and training points per cell (a sample, to build fast).
IVF_NPROBE = 64
IVF_TRAIN_PER_CELL = 48


def cosine_to_distance(cos: float | np.ndarray) -> float | np.ndarray:
    """Cosine similarity of unit vectors -> squared L2 distance (2 - 2 cos)."""
    return 2.0 - 2.0 * cos


def resolve_kind(kind: IndexKind | str, n: int) -> IndexKind:
    kind = IndexKind.parse(kind, "index kind")
    if kind is IndexKind.AUTO:
        return IndexKind.FLAT if n <= AUTO_FLAT_MAX else IndexKind.IVF
    return kind


def ivf_nlist(n: int) -> int:
    """Number of IVF cells: ~2 sqrt(N), a power of two, at least 1 and at most N/39 (FAISS's minimum training points per cell)."""
    target = max(1, int(2 * math.sqrt(max(n, 1))))
    nlist = 1 << max(0, round(math.log2(target)))
    return max(1, min(nlist, n // 39 if n >= 39 else 1))


def index_paths(gallery: Path) -> tuple[Path, Path]:
    gallery = Path(gallery)
    return gallery.with_suffix(INDEX_SUFFIX), gallery.with_suffix(META_SUFFIX)


@dataclass(frozen=True)
class SearchResult:
    """Top-k rows per query: ``rows`` (Q, k) int64 (-1 = none) and ``distances`` (Q, k) squared L2."""

    rows: np.ndarray
    distances: np.ndarray


class SearchIndex:
    """A built FAISS index and what it was built from. ``search`` takes a batch of unit queries."""

    def __init__(self, index, kind: IndexKind, count: int, checksum: str, params: dict):
        self.index = index
        self.kind = kind
        self.count = count
        self.checksum = checksum
        self.params = params

    def __len__(self) -> int:
        return self.count

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Nearest ``k`` templates of each query (Q, D) float32 unit vectors; distances ascending."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(len(queries), -1))  # (Q, D)
        k = max(1, min(int(k), self.count)) if self.count else 1
        if self.count == 0 or len(q) == 0:
            return SearchResult(
                np.full((len(q), k), -1, dtype=np.int64), np.full((len(q), k), np.inf, dtype=np.float32)
            )
        sims, rows = _search_few_threads(self.index, q, k)  # (Q, k) inner products, descending
        dist = np.clip(cosine_to_distance(sims.astype(np.float32)), 0.0, MAX_DISTANCE)
        dist[rows < 0] = np.inf
        return SearchResult(rows.astype(np.int64), dist)

    def meta(self) -> dict:
        return {"count": self.count, "checksum": self.checksum, "kind": self.kind.value, "params": self.params}


#: ``auto`` galleries of at most this many templates are searched exactly in numpy, without a
#: saved index: the same results as FAISS's flat index, and no FAISS import or index file for
#: the one-photo, small-gallery runs where start-up is most of the time.
NUMPY_EXACT_MAX = 10_000


class NumpyFlatIP:
    """Exact inner-product search in numpy, with FAISS's ``search(q, k) -> (sims, rows)`` shape."""

    def __init__(self, x: np.ndarray):
        self.x = np.ascontiguousarray(x, dtype=np.float32)  # (N, D) unit rows
        self.ntotal = len(self.x)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = q @ self.x.T  # (Q, N)
        rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (Q, k) best first
        return np.take_along_axis(sims, rows, axis=1), rows


#: Below this many queries FAISS runs on one thread: a handful of queries gains nothing from
#: OpenMP, and on a busy machine its spinning threads multiply the latency.
FEW_QUERIES = 8


def _search_few_threads(index, q: np.ndarray, k: int):
    if isinstance(index, NumpyFlatIP) or len(q) >= FEW_QUERIES:
        return index.search(q, k)
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(q, k)
    finally:
        faiss.omp_set_num_threads(threads)


def build_index(
    embeddings: np.ndarray, kind: IndexKind | str = IndexKind.AUTO, *, checksum: str = "", seed: int = 0
) -> SearchIndex:
    """Build an index over (N, D) float32 unit embeddings (``kind`` ``auto`` picks by size)."""
    import faiss

    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))  # (N, D)
    assert x.ndim == 2, f"embeddings must be (N, D), got {x.shape}"
    n, d = x.shape
    chosen = resolve_kind(kind, n)
    params: dict = {}
    if chosen is IndexKind.FLAT or n == 0:
        chosen = IndexKind.FLAT if n == 0 else chosen
        index = faiss.IndexFlatIP(d)
        index.add(x)
    elif chosen is IndexKind.HNSW:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(x)
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    else:
        nlist = ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        # 8-bit codes: a quarter of the memory and memory traffic of float32 vectors, so twice
        # the cells can be scanned in the same time (distances stay within ~0.002 of exact).
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        rng = np.random.default_rng(seed)
        n_train = min(n, max(nlist * IVF_TRAIN_PER_CELL, 1000))
        sample = x[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else x
        index.cp.seed = seed
        index.train(sample)
        index.add(x)
        nprobe = min(nlist, IVF_NPROBE)
        index.nprobe = nprobe
        params = {"nlist": nlist, "nprobe": nprobe, "codes": "sq8", "trained_on": int(n_train)}
    return SearchIndex(index, chosen, n, checksum, params)


#: Largest index description (JSON) read back.
MAX_META_BYTES = 1 << 16


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


#: A digest is remembered only for a file whose last change is at least this old (ns) when it is
#: hashed: a change made within a timestamp tick after the hash would leave its times unchanged.
_SETTLED_NS = 2_000_000_000
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _file_key(st: os.stat_result) -> str:
    """What the system changes whenever a file's bytes change: the status-change time (ctime: set
    by the kernel on every write, truncation or rename, and no program can set it back, unlike the
    modification time), the inode (a replaced file is another inode), size and modification time."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _private(st: os.stat_result) -> bool:
    """Owned by this user and writable by no one else (where the system has owners)."""
    if not hasattr(os, "getuid"):
        return True
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _index_sha256(path: Path) -> str:
    """SHA-256 of the saved index file ``path``, read in full once per version of the file.

    Hashing reads the whole file (about 0.8 CPU ms per MiB: 0.16 s for a 100,000-template flat
    index, 0.4 s for 1M as IVF) on every `identify`, where FAISS itself maps only what a search
    touches. So the digest of the file as it is is remembered in the user's own cache
    (``index-digests/`` under :func:`~kface_cli.workspace.cache_dir`: one small record per index
    path, in a folder only this user may write), with the file's :func:`_file_key`. It is used
    only while that key is unchanged: any change to the file (bytes, truncation, a file put in
    its place, a modification time set back) changes its ctime or inode, and the file is hashed
    again. A digest is remembered only when the file did not change while it was hashed and its
    last change was at least :data:`_SETTLED_NS` old (timestamps have a granularity); a record
    this user does not own or that others may write is ignored.
    """
    st = os.stat(path)
    key = _file_key(st)
    folder = cache_dir() / "index-digests"
    record = folder / f"{hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:32]}.json"
    try:
        rst = os.lstat(record)
        if stat.S_ISREG(rst.st_mode) and rst.st_size <= 1024 and _private(rst) and _private(os.stat(folder)):
            saved = json.loads(record.read_bytes())
            if saved.get("file") == key and _SHA256_HEX.fullmatch(str(saved.get("sha256"))):
                return saved["sha256"]
    except (OSError, ValueError, AttributeError):
        pass  # no record, or not a usable one: hash the file
    digest = _file_sha256(path)
    settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= _SETTLED_NS
    if settled and _file_key(os.stat(path)) == key:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if _private(os.stat(folder)):
                with atomic_path(record, mode=0o600) as tmp:
                    tmp.write_bytes(json.dumps({"file": key, "sha256": digest}).encode())
        except (OSError, KFaceError):  # a read-only or full cache: the file is hashed next time too
            pass
    return digest


def meta_tag(meta_bytes: bytes) -> int:
    """The 128-bit hash of an index description that the gallery records (0 is "no index")."""
    return int.from_bytes(hashlib.sha256(meta_bytes).digest()[:16], "big") or 1


def save_index(index: SearchIndex, gallery) -> bool:
    """Write ``gallery.faiss`` and its JSON (atomically), and record the JSON's hash in the gallery.

    ``gallery``: a :class:`~kface_cli.gallery.store.Gallery` (or its path). Returns False when
    nothing was saved: another kface process is writing the gallery, or it is a schema 1 file
    (which cannot vouch for an index). Raises :class:`ReadOnlyError` / :class:`DiskFullError`.
    """
    import faiss

    from kface_cli.atomic import write_bytes
    from kface_cli.gallery.lock import writer_lock
    from kface_cli.gallery.schema import SCHEMA_VERSION
    from kface_cli.gallery.store import Gallery

    gallery = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    path, meta_path = index_paths(gallery.path)
    with writer_lock(gallery.path, wait=False) as held:
        if not held:
            return False
        gallery._refuse_read_only()
        if gallery.schema_version() != SCHEMA_VERSION:
            return False
        gallery._remove_stale_temporaries()
        # The index holds the embeddings too (biometric data): private, like the gallery itself.
        with atomic_path(path, mode=0o600) as tmp:
            try:
                faiss.write_index(index.index, str(tmp))
            except RuntimeError as e:  # FAISS reports a failed write as RuntimeError ("... (No space left on device)")
                raise OSError(errno.ENOSPC if os.strerror(errno.ENOSPC) in str(e) else errno.EIO, str(e)) from None
            digest = _file_sha256(tmp)
        meta = (json.dumps({**index.meta(), "sha256": digest}, indent=2) + "\n").encode("utf-8")
        write_bytes(meta_path, meta)
        return gallery.bind_index(index.checksum, meta_tag(meta))


def _load_saved(gallery: Path, kind: IndexKind, count: int, checksum: str, tag: int) -> tuple[SearchIndex | None, str]:
    """The saved index if the gallery vouches for it and it matches (count, stamp, kind), else (None, why).

    ``why``: "" (no saved index, or another kind asked for), "stale" (built for other rows),
    "changed" (not what the gallery recorded: edited, or saved where the gallery could not record it).
    """
    path, meta_path = index_paths(gallery)
    if not (path.is_file() and meta_path.is_file()):
        return None, ""
    import faiss

    try:
        if not (stat.S_ISREG(os.lstat(path).st_mode) and stat.S_ISREG(os.lstat(meta_path).st_mode)):
            return None, "changed"  # links, FIFOs and devices are never read
        if meta_path.stat().st_size > MAX_META_BYTES:
            return None, "changed"
        raw = meta_path.read_bytes()
        meta = json.loads(raw)
        if not isinstance(meta, dict):
            return None, "changed"
        saved_kind = IndexKind.parse(meta["kind"], "index kind")
        if int(meta["count"]) != count or str(meta["checksum"]) != checksum:
            return None, "stale"
        if kind is not IndexKind.AUTO and saved_kind is not resolve_kind(kind, count):
            return None, ""  # "auto" keeps whatever kind was built last (e.g. a forced hnsw)
        if not tag or meta_tag(raw) != tag or _index_sha256(path) != str(meta.get("sha256")):
            return None, "changed"
        # Memory-mapped: a fresh `kface identify` on a million-template IVF index reads only the
        # lists it probes instead of loading gigabytes first.
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if index.ntotal != count:
            return None, "changed"
        params = meta.get("params", {})
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, InputError, RecursionError):
        return None, "changed"  # unreadable or foreign: rebuild
    return SearchIndex(index, saved_kind, count, checksum, dict(params) if isinstance(params, dict) else {}), ""


@dataclass(frozen=True)
class LoadedIndex:
    index: SearchIndex
    names: list[str]  # identity of each gallery row
    rebuilt: bool


def load_index(
    gallery, kind: IndexKind | str = IndexKind.AUTO, *, rebuild: bool = False, save: bool = True
) -> LoadedIndex:
    """The gallery's index, rebuilt (and saved) when missing, stale, of another kind, or ``rebuild``.

    ``gallery`` is a :class:`~kface_cli.gallery.store.Gallery`. When the saved index matches,
    only the names are read from the gallery (not the embeddings). Without one, an ``auto``
    gallery of at most :data:`NUMPY_EXACT_MAX` templates is searched exactly in numpy (nothing
    built or saved).
    """
    from kface_cli.console import info

    kind = IndexKind.parse(kind, "index kind")
    # Without a saved index the embeddings are needed (searched in numpy, or indexed): read once.
    saved_files = not rebuild and all(p.is_file() for p in index_paths(gallery.path))
    rows = gallery.read(embeddings=not saved_files)
    if not rebuild:
        saved, why = _load_saved(gallery.path, kind, len(rows), rows.checksum, rows.index_tag)
        if saved is not None:
            return LoadedIndex(saved, rows.names, rebuilt=False)
        if why == "changed":
            info(
                f"the search index {index_paths(gallery.path)[0].name} is not the one {gallery.path.name} recorded "
                "(changed since it was built, or saved by a process that could not record it): rebuilding it"
            )
        if kind is IndexKind.AUTO and len(rows) <= NUMPY_EXACT_MAX:
            if rows.embeddings is None:
                rows = gallery.read(embeddings=True)
            exact = SearchIndex(
                NumpyFlatIP(rows.embeddings), IndexKind.FLAT, len(rows), rows.checksum, {"engine": "numpy"}
            )
            return LoadedIndex(exact, rows.names, rebuilt=False)
    if rows.embeddings is None:
        rows = gallery.read(embeddings=True)
    chosen = resolve_kind(kind, len(rows))
    if len(rows) > AUTO_FLAT_MAX or chosen is not IndexKind.FLAT:
        info(f"Building the {chosen.value} search index over {len(rows):,} templates ...")
    index = build_index(rows.embeddings, chosen, checksum=rows.checksum)
    if save:
        try:
            if not save_index(index, gallery) and rows.schema_version != 1:
                info("another kface process is writing the gallery: the search index is kept in memory this time")
        except ReadOnlyError:  # a read-only deployment: the index lives in memory, rebuilt each run
            info(f"{gallery.path.parent} is read-only: the search index is kept in memory, not saved")
        except (DiskFullError, OSError) as e:  # the cache only: the gallery is untouched
            from kface_cli.console import warn

            reason = "the disk is full" if isinstance(e, DiskFullError) else (e.strerror or str(e))
            warn(f"search index not saved beside {gallery.path} ({reason}); it is rebuilt next time")
    return LoadedIndex(index, rows.names, rebuilt=True)


@dataclass(frozen=True)
class Candidate:
    name: str
    distance: float  # squared L2, the best over the identity's templates


def rank_identities(result: SearchResult, names: list[str], top_k: int) -> list[list[Candidate]]:
    """Per query, the ``top_k`` closest distinct identities (an identity's best template counts)."""
    out: list[list[Candidate]] = []
    for rows, dists in zip(result.rows, result.distances):
        best: dict[str, float] = {}
        for r, d in zip(rows, dists):
            if r < 0 or not np.isfinite(d):
                continue
            name = names[int(r)]
            if name not in best or d < best[name]:
                best[name] = float(d)
        ranked = sorted(best.items(), key=lambda kv: kv[1])[:top_k]
        out.append([Candidate(n, d) for n, d in ranked])
    return out


def search_identities(
    loaded: LoadedIndex, queries: np.ndarray, top_k: int = 3, templates_per_identity: int = 1
) -> list[list[Candidate]]:
    """Batch search: the ``top_k`` nearest identities of each query.

    Enough rows are fetched that ``top_k`` distinct identities are found even when each has
    several templates (``templates_per_identity``, e.g. the gallery's largest count).
    """
    k_rows = max(top_k, 1) * max(1, templates_per_identity) + 8
    result = loaded.index.search(queries, k_rows)
    return rank_identities(result, loaded.names, max(top_k, 1))
