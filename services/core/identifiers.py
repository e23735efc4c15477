"""Identifiers from documents are untrusted: check them at the boundary, confine paths.

Anyone who can publish on the bus chooses run uids, stream names and data keys. They end up
as Tiled keys and in file names, so they are checked before any router sees them: a run uid
is a UUID-like token, names are short words. Every path built from a document goes through
:func:`confined_path`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: A run, descriptor or resource uid: letters, digits, ``-``, ``_``, ``.``; no path separators,
#: never ``.`` or ``..``; at most 80 characters (a UUID has 36).
UID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
#: A stream name or data key (ophyd names: ``txm_cam_image``, ``energy``).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
#: Datum ids are ``<resource uid>/<n>`` by convention.
DATUM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}(/[0-9]{1,12})?")


class InvalidIdentifier(ValueError):
    """An identifier in a document is not of the expected form."""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_uid(value: Any, field: str) -> str:
    """``value`` if it is a valid uid; :class:`InvalidIdentifier` naming ``field`` otherwise."""
    if not isinstance(value, str) or not UID_PATTERN.fullmatch(value):
        raise InvalidIdentifier(f"{field} {_describe(value)} is not a UUID-like token")
    return value


def check_name(value: Any, field: str) -> str:
    """``value`` if it is a valid stream name or data key; :class:`InvalidIdentifier` otherwise."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidIdentifier(
            f"{field} {_describe(value)} is not a name (letters, digits, _ . -; <= 100 chars)"
        )
    return value


def check_datum_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not DATUM_ID_PATTERN.fullmatch(value):
        raise InvalidIdentifier(f"{field} {_describe(value)} is not a datum id")
    return value


def confined_path(root: Path, *parts: str) -> Path:
    """``root / parts``, refused unless it stays inside ``root`` once resolved.

    Raises
    ------
    InvalidIdentifier
        If a part is absolute or climbs out of ``root`` (``..``, symlinks).
    """
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise InvalidIdentifier(f"path {_describe(str(path))} leaves {base}")
    return path
