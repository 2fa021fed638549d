"""Atomic file writes: a temp file in the target directory, then ``os.replace``.

Readers never see a partial file and an interruption (even Ctrl-C) leaves no
temp file behind. Every file segeig writes goes through :func:`atomic_write`.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temp file in the same directory, then rename.

    The temp file ``.NAME.<random>.tmp`` (``.segeig-<random>.tmp`` when NAME
    is too long for that) is created with mode 0o666 minus the umask, like
    any ordinary file (``mkstemp`` or safetensors' writer would make it 0600,
    unreadable to collaborators on a shared disk).

    Args:
        path: destination (parent directories are created).
        write: called with the open binary temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    tmp = path.with_name(f".{path.name}.{token}.tmp")
    if len(os.fsencode(tmp.name)) > _name_max(path.parent):
        # The name itself fits but not with 18 more bytes: a temp name of its own.
        tmp = path.with_name(f".segeig-{token}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _name_max(folder: Path) -> int:
    """Longest file name (bytes) the file system of ``folder`` allows (255 if unknown)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, Any], key: str,
                      document: dict[str, Any]) -> None:
    """Atomically write tensors with one JSON document in the safetensors metadata.

    Args:
        path: destination file.
        tensors: name → CPU tensor (made contiguous here).
        key: metadata key holding the JSON.
        document: JSON-serialisable description.
    """
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={key: json.dumps(document)})
    atomic_write(path, lambda f: f.write(blob))
