"""``kface extract``: copy a selection of K-Face images (and their annotations) into the workspace.

Reads ``SOURCE/<Res>_Resolution/<ID>.zip`` (or the unpacked ``<ID>/`` folders) and writes::

    <workdir>/raw/<Res>/<ID>/<S>/<L>/<E>/<C>.jpg   (+ C.txt where K-Face has an annotation)

The default selection is the original tutorial's: S001; L1, L3; E01-E03; C6-C9 (24 images per
identity). Practical notes:

- Each zip is opened once and read member by member; identities run in parallel threads
  (decompression and file writes release the GIL).
- Re-running is cheap and safe: an identity whose files are all present with the right sizes
  (recorded in ``raw/<Res>/<ID>/.extract.json``) is skipped without opening its zip; one that was
  interrupted or damaged is completed, rewriting only missing or wrong files. Every file is
  written atomically.
- Output paths are built from the K-Face codes, never from member names, so a hostile member name
  (``../x``, ``/etc/x``) cannot write outside the workspace; such members are counted as unsafe.
- A corrupt zip, or one without a single K-Face member (empty, or another layout than
  ``S001/L1/E01/C7.jpg``), is reported and skipped; the other identities finish and the result
  lists it in ``failures`` (the CLI then exits non-zero).
- Members are streamed to disk in bounded memory; one too large or too compressed (a zip bomb,
  see :data:`~kface_cli.dataset.source.MAX_MEMBER_BYTES`) is skipped with a warning naming it.
- A full disk or a read-only output folder stops the run with one line; every file already
  written is complete, and the next run resumes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kface_cli.dataset import codes as kc
from kface_cli.dataset.provenance import DONE_MARKER
from kface_cli.dataset.source import IdentitySource, list_identities, open_identity
from kface_cli.defaults import auto_workers
from kface_cli.errors import InputError, KFaceError
from kface_cli.workspace import DEFAULT_RESOLUTION, Workspace, normalise_resolution

#: Folder inside a workspace where `kface sample-data` writes and `kface extract` looks by default.
SOURCE_DIRNAME = "source"


def default_source(workdir: str | Path | None = None) -> Path:
    """``<workdir>/source``: the default K-Face root for ``sample-data`` and ``extract``."""
    return Workspace.resolve(workdir).root / SOURCE_DIRNAME


@dataclass(frozen=True)
class Selection:
    """Which images to take from every identity (codes in K-Face order)."""

    acc: tuple[str, ...] = kc.TUTORIAL_SELECTION["acc"]
    light: tuple[str, ...] = kc.TUTORIAL_SELECTION["light"]
    expr: tuple[str, ...] = kc.TUTORIAL_SELECTION["expr"]
    cam: tuple[str, ...] = kc.TUTORIAL_SELECTION["cam"]

    @classmethod
    def parse(
        cls, acc: str | None = None, light: str | None = None, expr: str | None = None, cam: str | None = None
    ) -> Selection:
        """From command-line text such as ``L1,L3`` or ``C6-C9`` (None: the tutorial's choice)."""
        return cls(
            kc.parse_selection("acc", acc),
            kc.parse_selection("light", light),
            kc.parse_selection("expr", expr),
            kc.parse_selection("cam", cam),
        )

    def images(self) -> list[tuple[str, str, str, str]]:
        return [(s, l_, e, c) for s in self.acc for l_ in self.light for e in self.expr for c in self.cam]

    def as_dict(self) -> dict[str, list[str]]:
        return {"acc": list(self.acc), "light": list(self.light), "expr": list(self.expr), "cam": list(self.cam)}

    def __len__(self) -> int:
        return len(self.acc) * len(self.light) * len(self.expr) * len(self.cam)


@dataclass
class IdentityOutcome:
    id: str
    status: str  # "extracted", "skipped" (already complete), "failed"
    images: int = 0  # images present after this run
    written: int = 0  # files written by this run (images + annotations)
    annotations: int = 0
    missing: list[tuple[str, str, str, str]] = field(default_factory=list)  # wanted images the source lacks
    missing_annotations: int = 0
    unsafe_members: int = 0
    oversized: list[tuple[str, str]] = field(default_factory=list)  # (member, why) skipped as too large
    error: str | None = None


@dataclass
class ExtractResult:
    source: Path
    out: Path
    res: str
    selection: dict
    identities: int
    extracted: int  # identities processed this run
    skipped: int  # identities already complete
    failed: int
    images: int  # images present in the output for the selected identities
    written: int  # files written this run
    annotations: int
    missing_images: int
    missing_by_code: dict[str, int]
    missing_annotations: int
    unsafe_members: int
    oversized_members: list[dict]  # {"id", "member", "why"}: skipped as too large or too compressed
    failures: list[dict]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.failed == 0


def _marker_key(sel: Selection, src: IdentitySource) -> dict:
    st = src.path.stat()
    return {
        "selection": sel.as_dict(),
        "source": str(src.path),
        "size": st.st_size if src.kind == "zip" else None,
        "mtime_ns": st.st_mtime_ns if src.kind == "zip" else None,
    }


def _is_complete(dest: Path, key: dict) -> bool:
    marker = dest / DONE_MARKER
    if not marker.is_file():
        return False
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = saved.get("files", {})
    return (
        saved.get("key") == key
        and isinstance(files, dict)
        and all(_size(dest / rel) == size for rel, size in files.items())
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def extract_identity(src: IdentitySource, dest: Path, sel: Selection) -> IdentityOutcome:
    """Extract one identity's selected images and annotations into ``dest`` (``raw/<Res>/<ID>``)."""
    key = _marker_key(sel, src)
    if _is_complete(dest, key):
        saved = json.loads((dest / DONE_MARKER).read_text(encoding="utf-8"))
        return IdentityOutcome(
            src.id,
            "skipped",
            images=saved.get("images", 0),
            annotations=saved.get("annotations", 0),
            missing=[tuple(m) for m in saved.get("missing", [])],
            missing_annotations=saved.get("missing_annotations", 0),
        )
    out = IdentityOutcome(src.id, "extracted")
    files: dict[str, int] = {}  # relative path -> size, for the completeness check of re-runs
    try:
        with open_identity(src) as reader:
            out.unsafe_members = len(reader.unsafe)
            out.oversized = list(reader.oversized)
            if not reader.index and not reader.oversized:
                raise InputError(
                    f"no K-Face images in {src.path.name}",
                    hint="It is empty or laid out differently: expected members such as S001/L1/E01/C7.jpg.",
                )
            for acc, light, expr, cam in sel.images():
                for ext in (".jpg", ".txt"):
                    k = (acc, light, expr, cam, ext)
                    annotated = acc == kc.ANNOTATED_ACCESSORY and light in kc.ANNOTATED_LIGHTS
                    if not reader.has(k):
                        if ext == ".jpg":
                            out.missing.append((acc, light, expr, cam))
                        elif annotated and reader.has((acc, light, expr, cam, ".jpg")):
                            out.missing_annotations += 1
                        continue
                    rel = kc.member_path(acc, light, expr, cam, ext)  # built from codes: cannot escape dest
                    target = dest / rel
                    if not (target.is_file() and target.stat().st_size == reader.sizes[k]):
                        reader.copy_to(k, target)
                        out.written += 1
                    files[rel] = reader.sizes[k]
                    if ext == ".jpg":
                        out.images += 1
                    else:
                        out.annotations += 1
    except InputError as e:
        out.status, out.error = "failed", str(e)
        return out
    from kface_cli.atomic import write_text

    write_text(
        dest / DONE_MARKER,
        json.dumps(
            {
                "key": key,
                "files": files,
                "images": out.images,
                "annotations": out.annotations,
                "missing": out.missing,
                "missing_annotations": out.missing_annotations,
            },
            indent=1,
        ),
    )
    return out


def extract(
    source: str | Path | None = None,
    *,
    workdir: str | Path | None = None,
    out: str | Path | None = None,
    res: str = DEFAULT_RESOLUTION,
    selection: Selection | None = None,
    ids: tuple[str, ...] | None = None,
    workers: int = 0,
) -> ExtractResult:
    """Extract the selection for every identity (or ``ids``) of ``source`` at resolution ``res``.

    ``out`` defaults to the workspace's ``raw/<Res>``; ``source`` to ``<workdir>/source``.
    ``workers`` 0 means one thread per CPU core (at most 8). Per-identity problems (corrupt zips)
    are collected in ``failures``; problems with the request itself (no such folder, unknown IDs,
    bad codes) raise :class:`~kface_cli.errors.KFaceError`.
    """
    from kface_cli.console import progress, warn

    t0 = time.perf_counter()
    res = normalise_resolution(res)
    ws = Workspace.resolve(workdir)
    if source is None:
        source = default_source(workdir)
        if not source.exists():
            raise InputError(
                f"no SOURCE given and {source} does not exist",
                hint="Pass the K-Face folder (the one holding Middle_Resolution/), or run `kface sample-data` first.",
            )
    source = Path(source).expanduser().resolve()
    out_dir = Path(out) if out is not None else ws.raw(res)
    sel = selection or Selection()
    sources = list_identities(source, res)
    if ids is not None:
        available = {s.id: s for s in sources}
        unknown = [i for i in ids if i not in available]
        if unknown:
            some = ", ".join(sorted(available)[:3])
            raise InputError(
                f"{len(unknown)} requested identit{'y is' if len(unknown) == 1 else 'ies are'} not in {source} "
                f"({', '.join(unknown[:5])}{'...' if len(unknown) > 5 else ''})",
                hint=f"IDs present there include {some}.",
            )
        sources = [available[i] for i in ids]
    n_workers = auto_workers(workers)
    outcomes: list[IdentityOutcome] = []
    with progress(f"Extracting {res}", total=len(sources)) as bar:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            futures = [pool.submit(extract_identity, s, out_dir / s.id, sel) for s in sources]
            try:
                for s, fut in zip(sources, futures):
                    o = fut.result()
                    if o.status == "failed":
                        warn(f"identity {s.id} failed: {o.error}")
                    if o.unsafe_members:
                        warn(
                            f"{s.path.name}: ignored {o.unsafe_members} member(s) with unsafe names "
                            "(absolute, '..', or a link out of the folder)"
                        )
                    for member, why in o.oversized:
                        warn(f"{s.path.name}: skipped {member} ({why})")
                    outcomes.append(o)
                    bar.advance()
            except KFaceError:  # a full disk or read-only output: the other identities would fail alike
                for fut in futures:
                    fut.cancel()
                raise
    missing_by_code: Counter = Counter()
    for o in outcomes:
        for combo in o.missing:
            missing_by_code.update(combo)
    failures = [{"id": o.id, "error": o.error} for o in outcomes if o.status == "failed"]
    return ExtractResult(
        source=source,
        out=out_dir,
        res=res,
        selection=sel.as_dict(),
        identities=len(outcomes),
        extracted=sum(o.status == "extracted" for o in outcomes),
        skipped=sum(o.status == "skipped" for o in outcomes),
        failed=len(failures),
        images=sum(o.images for o in outcomes),
        written=sum(o.written for o in outcomes),
        annotations=sum(o.annotations for o in outcomes),
        missing_images=sum(len(o.missing) for o in outcomes),
        missing_by_code=dict(sorted(missing_by_code.items(), key=lambda kv: _code_order(kv[0]))),
        missing_annotations=sum(o.missing_annotations for o in outcomes),
        unsafe_members=sum(o.unsafe_members for o in outcomes),
        oversized_members=[{"id": o.id, "member": m, "why": w} for o in outcomes for m, w in o.oversized],
        failures=failures,
        seconds=time.perf_counter() - t0,
    )


def _code_order(code: str) -> tuple[int, int]:
    return ("SLEC".index(code[0]), int(code[1:]))
