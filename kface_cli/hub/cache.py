"""The pack cache under ``$KFACE_HOME``: where packs live, what each is, finding one by name, removing it.

``$KFACE_HOME`` sets the root; without it, the platform's user cache folder
(``platformdirs.user_cache_dir("kface")``: ``~/.cache/kface`` on Linux). Packs are in
``<root>/models/<name>/``; a folder counts as a pack only when it holds :data:`MANIFEST`, which
is written last, inside the temporary folder that is then renamed (see :mod:`kface_cli.hub.fetch`).
Names starting with a dot are kface's own (temporary folders, the digest record) and never packs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kface_cli.errors import InputError
from kface_cli.workspace import user_cache_dir

HOME_ENV = "KFACE_HOME"
MODELS_DIR = "models"
MANIFEST = "kface-pack.json"
DIGESTS = ".digests.json"
MANIFEST_VERSION = 1
#: A pack name: a file name anyone can type (no separators, no leading dot).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home() -> Path:
    """The cache root: ``$KFACE_HOME``, else the platform's user cache folder for kface."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else user_cache_dir()


def models_root() -> Path:
    return home() / MODELS_DIR


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise InputError(
            f"bad pack name {name!r}",
            hint="Use letters, digits, '.', '_' or '-' (up to 64, not starting with a dot), e.g. --name mypack.",
        )
    return name


def pack_dir(name: str) -> Path:
    return models_root() / check_name(name)


@dataclass(frozen=True)
class CachedPack:
    """A fetched pack, as its manifest describes it."""

    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def recognition_file(self) -> Path:
        return self.path / self.manifest["recognition"]["file"]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, **{k: v for k, v in self.manifest.items() if k != "name"}}


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rec = data.get("recognition") if isinstance(data, dict) else None
    if not isinstance(rec, dict) or not isinstance(rec.get("file"), str):
        return None
    return data


def cached_pack(name: str) -> CachedPack | None:
    """The fetched pack called ``name``, or None (also for a name that cannot be a pack's)."""
    if not NAME_PATTERN.match(name or ""):
        return None
    folder = models_root() / name
    if not (folder / MANIFEST).is_file():
        return None
    manifest = _read_manifest(folder)
    if manifest is None:
        raise InputError(
            f"the manifest of pack {name!r} is damaged: {folder / MANIFEST}",
            hint=f"Run `kface models remove {name}` and fetch it again.",
        )
    return CachedPack(name, folder, manifest)


def list_cached() -> list[CachedPack]:
    root = models_root()
    if not root.is_dir():
        return []
    packs = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        manifest = _read_manifest(folder)
        if manifest is not None:
            packs.append(CachedPack(folder.name, folder, manifest))
    return packs


def resolve_pack(name: str) -> Path | None:
    """The recognition model file of the fetched pack ``name``, or None when there is no such pack.

    The file must still be there with the size recorded at fetch time (a pack changed by hand
    since is refused with one line, not half-used).
    """
    pack = cached_pack(name)
    if pack is None:
        return None
    file = pack.recognition_file
    expected = pack.manifest["recognition"].get("bytes")
    if not file.is_file() or (expected is not None and file.stat().st_size != expected):
        raise InputError(
            f"pack {name!r} is incomplete: {file} is missing or changed since it was fetched",
            hint=f"Run `kface models remove {name}` and fetch it again.",
        )
    return file


def remove_pack(name: str) -> CachedPack:
    """Forget the fetched pack ``name``: its folder is renamed away, then deleted."""
    pack = cached_pack(check_name(name))
    if pack is None:
        raise InputError(
            f"no pack named {name!r} in {models_root()}", hint="`kface models list` shows the fetched packs."
        )
    trash = pack.path.with_name(f".trash-{name}-{uuid.uuid4().hex[:8]}")
    os.replace(pack.path, trash)  # the name is gone at once, even if deleting the files is cut short
    shutil.rmtree(trash, ignore_errors=True)
    return pack


def recorded_digests() -> dict[str, Any]:
    """The SHA-256 recorded at the first download of each known pack and URL (``{key: {...}}``)."""
    try:
        data = json.loads((models_root() / DIGESTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_digest(key: str, sha256: str, when: str) -> None:
    from kface_cli.atomic import write_text

    data = recorded_digests()
    if key in data:
        return
    data[key] = {"sha256": sha256, "first_download": when}
    models_root().mkdir(parents=True, exist_ok=True)
    write_text(models_root() / DIGESTS, json.dumps(data, indent=2, sort_keys=True) + "\n")


def catalog() -> dict[str, Any]:
    """What ``kface models list`` shows: every known pack (cached or not) and every fetched pack."""
    from kface_cli.hub.packs import KNOWN_PACKS

    cached = {p.name: p for p in list_cached()}
    digests = recorded_digests()
    packs: list[dict[str, Any]] = []
    for known in KNOWN_PACKS.values():
        pack = cached.pop(known.name, None)
        recorded = digests.get(known.name, {}).get("sha256")
        packs.append(
            {
                **known.to_json(),
                "known": True,
                "cached": pack is not None,
                "path": pack.path if pack else None,
                "sha256": pack.manifest.get("sha256") if pack else recorded,
                "sha256_source": "pinned" if known.sha256 else "recorded at the first download" if recorded else None,
                "recognition_file": pack.manifest["recognition"]["file"] if pack else None,
                "bytes": pack.manifest.get("bytes") if pack else None,
            }
        )
    for pack in cached.values():
        m = pack.manifest
        packs.append(
            {
                "name": pack.name,
                "url": m.get("source"),
                "recognition": f"{m['recognition']['file']} ({m['recognition'].get('embedding_size')}-d)",
                "contents": ", ".join(o["file"] for o in m.get("other_models", [])) or "-",
                "size": None,
                "licence": m.get("licence"),
                "known": False,
                "cached": True,
                "path": pack.path,
                "sha256": m.get("sha256"),
                "sha256_source": m.get("sha256_checked"),
                "recognition_file": m["recognition"]["file"],
                "bytes": m.get("bytes"),
            }
        )
    return {"home": home(), "models": models_root(), "packs": packs}
