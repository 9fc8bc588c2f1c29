"""Reading a gallery: its model, facts and rows, every read checked against the commit record."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kface_cli.errors import InputError, ModelMismatchError
from kface_cli.gallery.formats import _V1, _unit
from kface_cli.gallery.schema import (
    _DIGEST_BLOCK_ROWS,
    _DIGEST_RE,
    _M64,
    SCHEMA_VERSION,
    GalleryFacts,
    GalleryRows,
    ModelInfo,
    _attr_int,
    _attr_text,
    _Commit,
    _detail_rows,
    _meta_hash,
    _row_hash_sum,
    _text,
    _text_sum,
    _warned_old,
)


class GalleryReads:
    """The read side of :class:`~kface_cli.gallery.store.Gallery`: its commit record, model, facts,
    rows, identities, and the digest check (:meth:`verify`)."""

    path: Path

    def _commit_of(self, f) -> _Commit:
        """The schema 2 commit record; a file without one is refused (nothing vouches for its rows)."""
        value = f.attrs.get("digest")
        if value is None:
            raise InputError(
                f"gallery {self.path} has no digest (schema {SCHEMA_VERSION} galleries always have one): "
                "it was changed outside kface",
                hint="Restore it from a backup or re-enroll into a new --gallery.",
            )
        try:
            m = _DIGEST_RE.fullmatch(_attr_text(value))
        except TypeError:
            m = None
        if m is None:
            raise self._damaged("its digest is unreadable")
        count, text = int(m[1]), int(m[2])
        return _Commit(count, text, *(int(m[i], 16) for i in (3, 4, 5, 6)))

    @staticmethod
    def _version(f) -> int:
        return int(f.attrs["schema_version"])

    def model(self) -> ModelInfo:
        """The model the gallery was made with (its fingerprint checked against the digest)."""
        with self._open() as f:
            if self._version(f) == SCHEMA_VERSION and self._commit_of(f).meta != _meta_hash(f.attrs):
                raise InputError(
                    f"gallery {self.path} failed its integrity check: its model or schema changed since they were written",
                    hint="Restore it from a backup or re-enroll into a new --gallery; `kface gallery --check` checks the whole file.",
                )
            return self._model_of(f)

    @staticmethod
    def _model_of(f) -> ModelInfo:
        a = f.attrs
        return ModelInfo(
            fingerprint=_attr_text(a["fingerprint"]),
            embedding_size=int(a["embedding_size"]),
            network=_attr_text(a.get("network", "")),
            source=_attr_text(a.get("model_source", "")),
        )

    def check_model(self, model: ModelInfo, *, ours: ModelInfo | None = None) -> None:
        """Refuse to mix embeddings of two models (:class:`ModelMismatchError`); ``ours``: the
        gallery's :meth:`model`, when the caller has just read it (the file is not opened again)."""
        self._check(self.model() if ours is None else ours, model)

    def _check(self, ours: ModelInfo, model: ModelInfo) -> None:
        if ours.fingerprint != model.fingerprint or ours.embedding_size != model.embedding_size:
            raise ModelMismatchError(
                f"gallery {self.path} was made with another model "
                f"({ours.network or '?'} {ours.fingerprint[:12]}, {ours.embedding_size}-d, from {ours.source or '?'}) "
                f"than the one given ({model.network or '?'} {model.fingerprint[:12]}, {model.embedding_size}-d, from {model.source or '?'})",
                hint=f"Use the model the gallery was made with (--model {ours.source or '...'}), or enroll everyone again with this model into a new --gallery.",
            )

    # integrity ----------------------------------------------------------------------------
    def _digest(self, f, commit: _Commit, *, embeddings: bool, vectors: np.ndarray | None = None) -> tuple[int, int]:
        """(names, embeddings) sums of the committed rows and text, read from the file."""
        n = commit.count
        dn = de = 0
        for a in range(0, n, _DIGEST_BLOCK_ROWS):
            b = min(n, a + _DIGEST_BLOCK_ROWS)
            dn += _row_hash_sum(
                _detail_rows(
                    f["lengths"][a:b], f["box"][a:b], f["score"][a:b], f["added"][a:b], f["content_hash"][a:b]
                ),
                a,
            )
            if embeddings:
                block = vectors[a:b] if vectors is not None else f["embeddings"][a:b]
                de += _row_hash_sum(np.asarray(block, dtype=np.float16), a)
        step = _DIGEST_BLOCK_ROWS * 64  # text bytes per block, a whole number of words
        for a in range(0, commit.text, step):
            b = min(commit.text, a + step)
            dn += _text_sum(f["text"][a:b], a // 8)
        return dn & _M64, de & _M64

    def _verify(self, f, *, embeddings: bool, vectors: np.ndarray | None = None) -> _Commit:
        """Refuse a file whose rows or identity no longer match its digest (InputError)."""
        commit = self._commit_of(f)
        bad = []
        if commit.meta != _meta_hash(f.attrs):
            bad.append("its model or schema")
        lengths = np.asarray(f["lengths"][: commit.count], dtype=np.int64)
        if int(lengths.sum()) != commit.text:
            bad.append("names")
        else:
            dn, de = self._digest(f, commit, embeddings=embeddings, vectors=vectors)
            if dn != commit.names:
                bad.append("names")
            if embeddings and de != commit.embeddings:
                bad.append("embeddings")
        if bad:
            raise InputError(
                f"gallery {self.path} failed its integrity check: {' and '.join(bad)} changed since they were written",
                hint="Restore it from a backup or re-enroll into a new --gallery; `kface gallery --check` checks the whole file.",
            )
        return commit

    def verify(self) -> dict:
        """Full integrity check of every committed row (``kface gallery --check``).

        Raises :class:`InputError` for a changed file, and for a schema 1 file that has no digest
        (nothing to check it against: ``kface gallery --upgrade`` signs it).
        """
        with self._open() as f:
            if self._version(f) == 1:
                n = _attr_int(f.attrs["count"])
                if "digest" not in f.attrs:
                    raise InputError(
                        f"gallery {self.path} has no digest (written by an older kface): its {n:,} rows cannot be checked",
                        hint="If you trust it, `kface gallery --upgrade` converts and signs it.",
                    )
                _V1(self, f).verify(embeddings=True)
                return {"templates": n, "verified": True, "rows_checked": n, "schema_version": 1}
            commit = self._verify(f, embeddings=True)
            return {
                "templates": commit.count,
                "verified": True,
                "rows_checked": commit.count,
                "schema_version": SCHEMA_VERSION,
            }

    # reading ------------------------------------------------------------------------------
    def facts(self) -> GalleryFacts:
        with self._open() as f:
            rows = self._read(f, embeddings=False, details=False)
            m = self._model_of(f)
            return GalleryFacts(
                path=self.path,
                schema_version=self._version(f),
                templates=len(rows),
                identities=len(set(rows.names)),
                capacity=int(f["embeddings"].shape[0]),
                embedding_size=m.embedding_size,
                fingerprint=m.fingerprint,
                network=m.network,
                model_source=m.source,
                created=float(f.attrs.get("created", 0.0)),
                checksum=rows.checksum,
                file_bytes=self.path.stat().st_size,
            )

    def read(self, *, embeddings: bool = True, details: bool = False) -> GalleryRows:
        """The committed rows, verified: names always; embeddings (float32) and the other columns on request."""
        with self._open() as f:
            return self._read(f, embeddings=embeddings, details=details)

    def _read(self, f, *, embeddings: bool, details: bool) -> GalleryRows:
        if self._version(f) == 1:
            self._warn_old()
            return _V1(self, f).read(embeddings=embeddings, details=details)
        commit = self._commit_of(f)
        n = commit.count
        stored = f["embeddings"][:n] if embeddings else None
        commit = self._verify(f, embeddings=embeddings, vectors=stored)
        lengths = np.asarray(f["lengths"][:n], dtype=np.int64).reshape(n, 2)
        text = bytes(f["text"][: commit.text])
        ends = np.cumsum(lengths.reshape(-1))
        starts = ends - lengths.reshape(-1)
        names = [_text(text[s:e]) for s, e in zip(starts[0::2].tolist(), ends[0::2].tolist())]
        rows = GalleryRows(names=names, checksum=commit.stamp, index_tag=commit.index)
        if embeddings:
            rows.embeddings = _unit(stored)
        if details:
            rows.sources = [_text(text[s:e]) for s, e in zip(starts[1::2].tolist(), ends[1::2].tolist())]
            rows.boxes = np.asarray(f["box"][:n], dtype=np.float32).reshape(n, 4)
            rows.scores = np.asarray(f["score"][:n], dtype=np.float32)
            rows.added = np.asarray(f["added"][:n], dtype=np.float64)
            rows.hashes = [bytes(h).hex() for h in f["content_hash"][:n]]
        return rows

    def _warn_old(self) -> None:
        key = str(self.path.resolve())
        if key in _warned_old:
            return
        _warned_old.add(key)
        from kface_cli.console import warn

        warn(
            f"gallery {self.path} has the older format (schema 1: 2.5x larger, its digest covers less); "
            f"`kface gallery --upgrade --gallery {self.path}` converts it (the original is kept)"
        )

    def identities(self) -> dict[str, int]:
        """Identity name -> number of templates, sorted by name."""
        names = self.read(embeddings=False).names
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        return dict(sorted(counts.items()))

    def hashes(self) -> set[str]:
        return set(self.read(embeddings=False, details=True).hashes or [])

    def schema_version(self) -> int:
        with self._open() as f:
            return self._version(f)
