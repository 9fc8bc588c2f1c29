"""The one error type users see.

Lower layers raise :class:`KFaceError` (or a subclass) for anything a user can cause: a missing
file, a bad code, a corrupt zip, an unreadable image, a gallery made with another model. The CLI
turns it into one red line (what happened, which file, what to do) and a non-zero exit code.
"""

from __future__ import annotations

from pathlib import Path


class KFaceError(Exception):
    """A problem the user can fix. ``hint`` says what to do; ``path`` names the file involved."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, path: str | Path | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        text = self.message
        if self.path is not None and str(self.path) not in text:
            text = f"{text} ({self.path})"
        if self.hint:
            text = f"{text}. {self.hint}" if not text.endswith(".") else f"{text} {self.hint}"
        return text


class InputError(KFaceError):
    """A missing, unreadable or malformed input file or folder."""


class CodeError(KFaceError):
    """An invalid K-Face code or code range (``L31``, ``C6-C99``...)."""


class ModelMismatchError(KFaceError):
    """Embeddings of different models would be mixed (e.g. a gallery made with another model)."""


class TrainingError(KFaceError):
    """Training cannot go on (NaN loss, no data, bad configuration)."""


class DiskFullError(KFaceError):
    """A write failed because the disk (or the user's quota) is full; nothing committed was lost."""


class ReadOnlyError(KFaceError):
    """A write was asked of a file or folder kface may not change (read-only file, folder or filesystem)."""
