"""Which files are images (the extensions segeig reads, a deterministic folder walk),
and a dataset's list files (class names, split ids) read safely."""

from __future__ import annotations

import os
from pathlib import Path

from segeig.safeio import UserFileError, read_bounded

#: File suffixes (lower case, with dot) treated as images; matching is case-insensitive.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """List image files (by :data:`IMAGE_EXTENSIONS`) under ``root``.

    Hidden files and directories (name starting with ".") below ``root`` are
    skipped, which also skips macOS "._*" resource forks and ".ipynb_checkpoints".
    Symlinked directories are followed once (cycles are cut). If ``root`` is
    itself an image file, ``[root]`` is returned.

    Returns:
        Paths sorted by their POSIX path relative to ``root`` (deterministic
        across machines and file systems).

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root] if is_image_file(root) else []
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{root}' does not exist")
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink cycle or duplicate link: visit each directory once
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        found.extend(
            Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_file(f)
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_text(path: str | os.PathLike[str], max_bytes: int, what: str) -> str:
    """A dataset's text file (a list, class names), read as untrusted input.

    It must be a regular file (a FIFO or a device is refused without
    blocking) of at most ``max_bytes``, checked before reading, in UTF-8 (a
    byte-order mark is dropped).

    Raises:
        UserFileError: naming the file and the problem.
    """
    data = read_bounded(path, max_bytes, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserFileError(f"{what} {path} is not UTF-8 text (byte {err.start})") from None


def read_list_file(path: str | os.PathLike[str], max_bytes: int, what: str) -> list[str]:
    """The non-blank lines of a dataset's list file, stripped (see :func:`read_text`)."""
    return [ln.strip() for ln in read_text(path, max_bytes, what).splitlines() if ln.strip()]
