"""JSON from untrusted files: duplicate keys refused, every failure naming the file.

Python's ``json`` keeps the last of two equal keys silently (a names file
saying ``{"3": "sky", "3": "road"}`` would lose "sky" without a word) and
raises ``RecursionError`` on deeply nested input with a message that names
nothing. :func:`parse_json` turns both into a :class:`UserFileError` that says
which document and what to do.
"""

from __future__ import annotations

import json
import os
from typing import Any

from segeig.safeio.files import UserFileError, read_bounded

__all__ = ["parse_json", "read_json_file"]


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def parse_json(data: bytes | str, what: str) -> Any:
    """Parse a JSON document (UTF-8 bytes or text) that a user supplied.

    Args:
        data: the document.
        what: how messages call it, e.g. ``"names file /x/names.json"``.

    Raises:
        UserFileError: not UTF-8, not valid JSON, a key repeated within one
            object, or nested too deeply for the parser; the message starts
            with ``what``.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserFileError(f"{what} is not valid JSON: it is not UTF-8 text (byte "
                                f"{err.start} is 0x{data[err.start]:02x})") from None
    try:
        return json.loads(data, object_pairs_hook=_unique_pairs)
    except _DuplicateKeyError as dup:
        raise UserFileError(f"{what}: the key {dup.key!r} appears more than once in one "
                            "object; give each key once") from None
    except RecursionError:
        raise UserFileError(f"{what} is nested too deeply to read (arrays or objects inside "
                            "each other thousands of levels deep); is it the right file?"
                            ) from None
    except json.JSONDecodeError as err:
        raise UserFileError(f"{what} is not valid JSON: {err}") from None


def read_json_file(path: str | os.PathLike[str], max_bytes: int, what: str = "JSON file", *,
                   follow_symlinks: bool = True) -> Any:
    """:func:`parse_json` of a regular file of at most ``max_bytes`` bytes
    (:func:`~segeig.safeio.files.read_bounded`); messages say ``what PATH``."""
    data = read_bounded(path, max_bytes, what, follow_symlinks=follow_symlinks)
    return parse_json(data, f"{what} {path}")
