"""Bounded reads of the user files a dataset layout names: id lists and ``.mat`` arrays.

A split list or a ``.mat`` file in a downloaded dataset is user input like any
other: it could be a directory, a FIFO, a multi-gigabyte file or text with a
path in it. These readers refuse anything but a regular file of bounded size
and check every line (or array) before a dataset uses it, with errors that
name the file, the line and what to do.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from segeig.data.files import read_text
from segeig.safeio import UserFileError, read_bounded

__all__ = ["ID_PATTERN", "MAX_LIST_BYTES", "MAX_MAT_BYTES", "ListFileError", "read_id_list",
           "read_mat_array"]

#: Largest id list read (COCO-Stuff's curated train list is ~0.6 MB).
MAX_LIST_BYTES = 16 << 20
#: Largest ``.mat`` file read (a Potsdam tile is ~160 kB).
MAX_MAT_BYTES = 64 << 20

#: One id: letters, digits, "_", "-", "."; no separators, so an id never leaves its folder.
ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class ListFileError(UserFileError):
    """A list or ``.mat`` file is not what its layout promises (message names the file)."""


def read_id_list(path: str | os.PathLike[str], *, what: str = "id list",
                 max_bytes: int = MAX_LIST_BYTES) -> list[str]:
    """Image ids from a list file: one id per line, surrounding blanks and blank lines ignored.

    Args:
        path: the list file.
        what: how errors name the file (e.g. ``"curated list"``).
        max_bytes: refuse larger files.

    Returns:
        The ids in file order (duplicates removed, first occurrence kept).

    Raises:
        ListFileError: not a regular file, too large, not UTF-8, or a line that
            is not a plain id (letters, digits, ``_-.``; no path separators);
            the message gives the line number.
    """
    path = Path(path)
    try:
        text = read_text(path, max_bytes, what)
    except UserFileError as e:
        raise ListFileError(str(e), e.errno) from None
    ids: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if not item:
            continue
        if not ID_PATTERN.fullmatch(item) or item in (".", ".."):
            shown = item if len(item) <= 60 else item[:57] + "..."
            raise ListFileError(f"{what} '{path}', line {number}: {shown!r} is not an image "
                                "id (one id per line: letters, digits, '_', '-', '.')")
        if item not in seen:
            seen.add(item)
            ids.append(item)
    return ids


def read_mat_array(path: str | os.PathLike[str], key: str, *,
                   max_bytes: int = MAX_MAT_BYTES) -> np.ndarray:
    """One numeric array from a MATLAB ``.mat`` file (v4–v7) via ``scipy.io.loadmat``.

    ``loadmat`` parses the MAT format itself (no pickle); object, struct and
    cell arrays are refused rather than returned.

    Args:
        path: the ``.mat`` file.
        key: the variable to return (e.g. ``"img"``).
        max_bytes: refuse larger files.

    Returns:
        The variable as stored: an integer, unsigned or float array of any shape.

    Raises:
        ListFileError: not a regular file, too large, not a readable MAT file
            (v7.3/HDF5 files included), ``key`` missing, or not a numeric array.
    """
    from scipy.io import loadmat  # scipy is heavy; only Potsdam needs it

    path = Path(path)
    try:
        data = read_bounded(path, max_bytes, ".mat file")
    except UserFileError as e:
        raise ListFileError(str(e), e.errno) from None
    try:
        contents: dict[str, Any] = loadmat(io.BytesIO(data), variable_names=[key])
    except NotImplementedError as e:  # v7.3 files are HDF5
        raise ListFileError(f".mat file '{path}' is MATLAB v7.3 (HDF5), which segeig does "
                            "not read; re-save it with MATLAB's -v7 option") from e
    except Exception as e:  # noqa: BLE001 - scipy raises many types on corrupt input
        raise ListFileError(f".mat file '{path}' cannot be read: {e}") from e
    if key not in contents:
        raise ListFileError(f".mat file '{path}' has no variable {key!r}; is it from the "
                            "right folder of the release?")
    array = contents[key]
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        kind = getattr(array, "dtype", type(array))
        raise ListFileError(f".mat file '{path}': variable {key!r} is not a numeric array "
                            f"(got {kind})")
    return array
