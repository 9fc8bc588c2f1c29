"""Option values with a fixed set of choices (``--mode align|box``, ``--index auto|flat|...``).

A :class:`Choice` is a ``str`` Enum whose :meth:`Choice.parse` turns what a user typed into a
member, case-insensitively, or raises :class:`~kface_cli.errors.InputError` listing the valid
choices: never a silent fallback.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from kface_cli.errors import InputError

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    @classmethod
    def parse(cls: type[C], value: str | C, what: str) -> C:
        """``value`` as a member of this Enum; ``what`` names the option in the error message."""
        try:
            return cls(str(getattr(value, "value", value)).strip().lower())
        except ValueError:
            raise InputError(
                f"unknown {what} {value!r}", hint=f"Use one of {', '.join(k.value for k in cls)}."
            ) from None
