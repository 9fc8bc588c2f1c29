"""Fetching a pack: from a known name, a URL or a local file, into the cache, all or nothing.

The steps, each of which may refuse the pack with one line (exit 2)::

    licence      a known pack's licence accepted (--accept-licence, or yes at a prompt)
    download     into <root>/models/.tmp-*/ by pooch (requests): connect and read time-outs,
                 a progress bar, at most MAX_DOWNLOAD_BYTES; a cut download raises
    verify       SHA-256 against --sha256, the pinned digest, or the one recorded at the
                 first download of that pack or URL (recorded now when there is none)
    unpack       kface_cli.archive.extract_all: no '..', no absolute names, no links, size limits
    inspect      the one recognition model found by its signature (kface_cli.hub.signature)
    manifest     kface-pack.json written into the temporary folder
    rename       the temporary folder becomes <root>/models/<name> in one rename

Whatever fails, the temporary folder is deleted: nothing under ``$KFACE_HOME`` looks like a pack of
that name, and nothing is written outside ``$KFACE_HOME``. A download that fails part way starts
again from the beginning on the next ``kface models get`` (nothing half-done is kept).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from kface_cli.errors import InputError, KFaceError
from kface_cli.hub import cache
from kface_cli.hub.packs import KnownPack, known_pack

#: Seconds to wait for a connection, and between two pieces of data once connected.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
#: Largest download (antelopev2.zip, the largest known pack, is under 400 MB).
MAX_DOWNLOAD_BYTES = 2 * 1024**3
#: Limits when unpacking: one member (ONNX models of a pack are below 300 MB), and all of them.
MAX_MEMBER_BYTES = 1024**3
MAX_UNPACKED_BYTES = 3 * 1024**3


class LicenceNotAccepted(KFaceError):
    """A known pack's licence must be accepted before it is downloaded."""


class DownloadError(KFaceError):
    """The download failed: offline, timed out, cut short, refused by the server."""


@dataclass
class FetchResult:
    name: str
    path: Path
    status: str  # "fetched" or "already cached"
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "status": self.status,
            **{k: v for k, v in self.manifest.items() if k != "name"},
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Source:
    kind: str  # "known", "url" or "file"
    location: str  # the URL, or the file's path
    known: KnownPack | None  # the known pack this becomes (by name or by --name)
    digest_key: str | None  # key of the recorded first-download digest


def _is_url(text: str) -> bool:
    return urlparse(text).scheme in ("http", "https")


def _default_name(location: str) -> str:
    base = PurePosixPath(urlparse(location).path if _is_url(location) else Path(location).name).name
    for suffix in (".zip", ".onnx"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    return base


def _resolve_source(source: str, name: str | None) -> tuple[_Source, str]:
    known = known_pack(source)
    if known is not None and not Path(source).exists():
        return _Source("known", known.url, known, known.name), cache.check_name(name or known.name)
    if _is_url(source):
        final = cache.check_name(name or _default_name(source))
        return _Source("url", source, known_pack(final), source), final
    path = Path(source).expanduser()
    if path.is_file():
        final = cache.check_name(name or _default_name(str(path)))
        k = known_pack(final)
        return _Source("file", str(path), k, k.name if k else None), final
    from kface_cli.hub.packs import KNOWN_PACKS

    raise InputError(
        f"{source!r} is not a known pack, a URL or a file",
        hint=f"Known packs: {', '.join(KNOWN_PACKS)} (`kface models list`); or pass an http(s) URL or a .zip/.onnx file.",
    )


def _check_licence(known: KnownPack | None, accepted: bool, confirm: Callable[[str], bool] | None) -> bool:
    if known is None:
        return False
    if accepted:
        return True
    question = f"{known.name}'s models are for {known.licence} ({known.licence_url}). Accept?"
    if confirm is not None and confirm(question):
        return True
    raise LicenceNotAccepted(
        f"{known.name} is licensed for {known.licence}",
        hint="Pass --accept-licence to accept these terms (or answer yes at the prompt).",
    )


def _manual_route(src: _Source, name: str) -> str:
    file = PurePosixPath(urlparse(src.location).path).name or "FILE.zip"
    extra = " --accept-licence" if src.known else ""
    return f"download {src.location} by another route, then run `kface models get {file} --name {name}{extra}`"


class _Progress:
    """pooch's progress-bar protocol (``total``, ``update``, ``reset``, ``close``) on kface's console;
    it also stops a download that grows past :data:`MAX_DOWNLOAD_BYTES`, whatever the server said."""

    def __init__(self, label: str, limit: int):
        self._label, self._limit = label, limit
        self._cm: Any = None
        self._bar: Any = None
        self._seen = 0
        self._done = False

    @property
    def total(self) -> int:
        return 0

    @total.setter
    def total(self, value: int) -> None:
        from kface_cli import console

        if value and value > self._limit:
            raise DownloadError(
                f"{self._label} is {value / 2**20:.0f} MiB, more than the {self._limit / 2**20:.0f} MiB limit"
            )
        self._cm = console.progress(f"Downloading {self._label} (MiB)", round(value / 2**20, 1) if value else None)
        self._bar = self._cm.__enter__()

    def update(self, n: int) -> None:
        if self._done:
            return
        self._seen += n
        if self._seen > self._limit + 1024**2:
            raise DownloadError(f"{self._label} grew past the {self._limit / 2**20:.0f} MiB limit")
        if self._bar is not None:
            self._bar.advance(n / 2**20)

    def reset(self) -> None:
        self._done = True

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


def _download(src: _Source, name: str, folder: Path, sha256: str | None, timeouts: tuple[float, float]) -> Path:
    import pooch
    import requests

    target = "download.bin"
    progress = _Progress(PurePosixPath(urlparse(src.location).path).name or name, MAX_DOWNLOAD_BYTES)
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeouts, chunk_size=256 * 1024)
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # pooch's own "Downloading..." and hash notes: kface says it
    manual = _manual_route(src, name)
    try:
        pooch.retrieve(
            src.location,
            known_hash=f"sha256:{sha256}" if sha256 else None,
            fname=target,
            path=folder,
            downloader=downloader,
            progressbar=False,
        )
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else "an error"
        raise DownloadError(
            f"{src.location} answered HTTP {status}; nothing was fetched", hint=f"Check the URL, or {manual}."
        ) from None
    except (requests.exceptions.ConnectTimeout, requests.exceptions.ConnectionError) as e:
        why = "the connection timed out" if isinstance(e, requests.exceptions.ConnectTimeout) else _connection_reason(e)
        if "Read timed out" in str(e):  # requests reports a stall mid-body as a ConnectionError
            why = f"the server sent nothing for {timeouts[1]:g} s"
        raise DownloadError(f"cannot download {src.location}: {why}", hint=f"Offline? {manual}.") from None
    except requests.exceptions.Timeout:
        raise DownloadError(
            f"cannot download {src.location}: the server sent nothing for {timeouts[1]:g} s",
            hint=f"Try again later, or {manual}.",
        ) from None
    except requests.exceptions.RequestException as e:  # ChunkedEncodingError: the connection closed early
        raise DownloadError(
            f"the download of {src.location} was cut short ({type(e).__name__}); nothing was kept",
            hint="Run the same command again: it starts the download afresh.",
        ) from None
    except ValueError as e:  # pooch: hash mismatch
        if "hash" not in str(e).lower():
            raise
        raise DownloadError(
            f"the file at {src.location} does not have the SHA-256 {sha256}; nothing was kept",
            hint="The download is damaged or the file changed: check the --sha256 value and the URL.",
        ) from None
    finally:
        logger.setLevel(level)
        progress.close()
    return folder / target


def _connection_reason(e: Exception) -> str:
    text = str(e)
    if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
        return "the host name cannot be looked up (no network?)"
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "the connection timed out"
    return "no connection"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _check_digest(actual: str, expected: str | None, src: _Source, how: str) -> None:
    if expected and actual != expected.lower():
        raise DownloadError(
            f"{src.location} has SHA-256 {actual}, not the {how} {expected}; nothing was kept",
            hint="The file is damaged or was replaced; check where it came from (a new version: `kface models get ... --sha256 NEW`).",
        )


def fetch_pack(
    source: str,
    *,
    name: str | None = None,
    sha256: str | None = None,
    accept_licence: bool = False,
    confirm: Callable[[str], bool] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
) -> FetchResult:
    """Fetch a pack into the cache (see the module docstring); the pack's manifest.

    Args:
        source: a known pack's name (``kface models list``), an http(s) URL, or a ``.zip``/``.onnx`` file.
        name: the name to keep it under (default: the known name, or the file name without ``.zip``).
        sha256: the expected SHA-256 of the archive (hex); checked before anything is unpacked.
        accept_licence: accept a known pack's licence (otherwise ``confirm`` is asked, if given).
        confirm: asks the user a yes/no question (the CLI's prompt when stdin is a terminal).
    """
    started = time.perf_counter()
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InputError(f"--sha256 {sha256!r} is not a SHA-256 (64 hex digits)")
    src, name = _resolve_source(source, name)
    accepted = _check_licence(src.known, accept_licence, confirm)
    existing = cache.cached_pack(name)
    root = cache.models_root()
    pinned = sha256 or (src.known.sha256 if src.known else None)
    recorded = cache.recorded_digests().get(src.digest_key or "", {}).get("sha256") if src.digest_key else None
    if existing is not None:
        if src.location in (existing.manifest.get("source"),) and (
            pinned is None or pinned == existing.manifest.get("sha256")
        ):
            return FetchResult(name, existing.path, "already cached", existing.manifest, time.perf_counter() - started)
        raise InputError(
            f"a pack named {name!r} is already cached (from {existing.manifest.get('source')})",
            hint=f"Pick another --name, or run `kface models remove {name}` first.",
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    except OSError as e:
        from kface_cli.atomic import storage_error

        raise (storage_error(e, root) or InputError(f"cannot write to {root}: {e}")) from None
    try:
        if src.kind == "file":
            archive = Path(src.location)
        else:
            archive = _download(src, name, work, pinned, (connect_timeout, read_timeout))
        actual = file_sha256(archive)
        _check_digest(actual, sha256, src, "expected (--sha256)")
        if not sha256:
            _check_digest(actual, src.known.sha256 if src.known else None, src, "pinned")
            _check_digest(actual, recorded, src, "recorded at the first download")
        unpacked = work / "pack"
        if zipfile.is_zipfile(archive):
            from kface_cli.archive import extract_all

            extract_all(
                archive,
                unpacked,
                max_member_bytes=MAX_MEMBER_BYTES,
                max_total_bytes=MAX_UNPACKED_BYTES,
                label=src.location,
            )
        elif _looks_like_onnx(archive, src.location):
            unpacked.mkdir()
            file_name = Path(urlparse(src.location).path if src.kind != "file" else src.location).name
            shutil.copyfile(archive, unpacked / (file_name if file_name.lower().endswith(".onnx") else f"{name}.onnx"))
        else:
            raise InputError(
                f"{src.location} is neither a zip archive nor an .onnx model (or it is incomplete); nothing was kept",
                hint="A pack is a zip of ONNX models (as insightface's buffalo_l.zip), or one .onnx file: fetch it again.",
            )
        if archive.parent == work:
            archive.unlink()  # the pack's files are what is kept
        from kface_cli.hub.signature import find_models

        found = find_models(unpacked)
        rec = found.recognition
        assert rec is not None
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        manifest = {
            "version": cache.MANIFEST_VERSION,
            "name": name,
            "source": src.location if src.kind != "file" else str(Path(src.location).resolve()),
            "source_kind": src.kind,
            "sha256": actual,
            "sha256_checked": "given (--sha256)"
            if sha256
            else "pinned"
            if src.known and src.known.sha256
            else "recorded at the first download"
            if recorded
            else "none (recorded now)"
            if src.digest_key
            else "none",
            "archive_bytes": os.path.getsize(src.location) if src.kind == "file" else None,
            "licence": src.known.licence if src.known else "unknown: see where the pack came from",
            "licence_accepted": accepted,
            "fetched_at": now,
            "recognition": {**rec.to_json(), "bytes": (unpacked / rec.file).stat().st_size},
            "other_models": [s.to_json() for s in found.others],
            "bytes": sum(p.stat().st_size for p in unpacked.rglob("*") if p.is_file()),
        }
        from kface_cli.atomic import write_text

        write_text(unpacked / cache.MANIFEST, json.dumps(manifest, indent=2) + "\n")
        final = root / name
        try:
            os.rename(unpacked, final)  # fails if another process put a pack there meanwhile
        except OSError:
            raise InputError(
                f"a pack named {name!r} appeared in {root} while fetching", hint="`kface models list` shows it."
            ) from None
        if src.digest_key and not recorded:
            cache.record_digest(src.digest_key, actual, now)
        return FetchResult(name, final, "fetched", manifest, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _looks_like_onnx(path: Path, location: str) -> bool:
    """An ONNX file: named ``.onnx``, or a protobuf that starts like one (field 1, ir_version)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return location.lower().split("?")[0].endswith(".onnx") or head[:1] == b"\x08"


def interactive() -> bool:
    """Whether a yes/no question can be asked (stdin and stderr are terminals)."""
    return sys.stdin is not None and sys.stdin.isatty() and sys.stderr.isatty()
