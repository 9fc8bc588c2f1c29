"""The model packs kface knows by name: insightface's published packs (release v0.7 assets).

Facts from insightface's own pages (``python-package/README.md``, ``model_zoo/README.md``,
``python-package/insightface/utils/storage.py``): the packs are the zip assets of the GitHub release
``v0.7``; their models "are available for non-commercial research purposes only". insightface
publishes no checksum for them, so none is pinned here: the SHA-256 of the first download is
recorded and later downloads must match it (:mod:`kface_cli.hub.fetch`).

``$KFACE_MODELS_MIRROR`` replaces the release URL's folder (a local mirror of the same zips).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Where insightface's python package downloads its packs from.
INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7"
MIRROR_ENV = "KFACE_MODELS_MIRROR"

INSIGHTFACE_LICENCE = "non-commercial research use only"
INSIGHTFACE_LICENCE_URL = "https://github.com/deepinsight/insightface/tree/master/python-package#license"


@dataclass(frozen=True)
class KnownPack:
    name: str
    recognition: str  # the recognition network and its training data
    contents: str  # what else is inside
    size: str  # as insightface's model zoo states it
    licence: str = INSIGHTFACE_LICENCE
    licence_url: str = INSIGHTFACE_LICENCE_URL
    sha256: str | None = None  # pinned only where a public source states it (none does today)

    @property
    def url(self) -> str:
        base = os.environ.get(MIRROR_ENV) or INSIGHTFACE_RELEASE
        return f"{base.rstrip('/')}/{self.name}.zip"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "url": self.url,
            "recognition": self.recognition,
            "contents": self.contents,
            "size": self.size,
            "licence": self.licence,
            "licence_url": self.licence_url,
            "sha256_pinned": self.sha256,
        }


KNOWN_PACKS: dict[str, KnownPack] = {
    p.name: p
    for p in (
        KnownPack(
            "buffalo_l",
            "ResNet50 trained on WebFace600K (512-d)",
            "detector SCRFD-10GF, 2d106 and 3d68 landmarks, gender/age",
            "326 MB",
        ),
        KnownPack(
            "buffalo_s",
            "MobileFaceNet trained on WebFace600K (512-d)",
            "detector SCRFD-500MF, 2d106 and 3d68 landmarks, gender/age",
            "159 MB",
        ),
        KnownPack("buffalo_sc", "MobileFaceNet trained on WebFace600K (512-d)", "detector SCRFD-500MF", "16 MB"),
        KnownPack(
            "antelopev2",
            "ResNet100 trained on Glint360K (512-d)",
            "detector SCRFD-10GF, 2d106 and 3d68 landmarks, gender/age",
            "407 MB",
        ),
    )
}


def known_pack(name: str) -> KnownPack | None:
    return KNOWN_PACKS.get(name)
