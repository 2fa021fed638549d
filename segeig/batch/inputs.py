"""Which images a batch run processes: input expansion, output names, shards.

``segeig segment INPUT...`` accepts files, folders (searched recursively) and
glob patterns. :func:`expand_inputs` turns them into a deterministic, duplicate-
free list of :class:`InputFile`, each with the relative path its outputs will
mirror; :func:`select_shard` splits that list between cooperating processes;
:func:`decode_images` reads them in worker processes.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from segeig.data.files import is_image_file, list_images
from segeig.imageio import DEFAULT_MAX_PIXELS, ImageReadError, image_size, read_image
from segeig.workers import ordered_map

logger = logging.getLogger(__name__)

__all__ = [
    "Conflict",
    "InputFile",
    "decode_images",
    "expand_inputs",
    "parse_shard",
    "select_shard",
    "shard_of",
]

_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One image to segment.

    Attributes:
        path: the file as found (not resolved, so messages show what the user typed).
        rel: its path relative to the input it came from (a folder, the folder
            part of a glob, or just the file name for a file input), POSIX style.
        key: output name without extension, unique within a run: ``rel`` without
            its suffix (``trip/a.jpg`` → ``trip/a``), or with it (``trip/a.jpg``)
            when another input shares the stem (``trip/a.png``).
    """

    path: Path
    rel: PurePosixPath
    key: str


@dataclass(frozen=True)
class Conflict:
    """An input that cannot be processed because its output name is taken.

    Attributes:
        path: the input file.
        reason: which other input owns the output name, and what to do.
    """

    path: Path
    reason: str


def _is_glob(text: str) -> bool:
    return any(c in _GLOB_MAGIC for c in text)


def _glob_base(pattern: str) -> Path:
    """Leading components of ``pattern`` without glob characters (``a/b/*/c`` → ``a/b``)."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts:
        if _is_glob(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _expand_one(text: str | os.PathLike[str]) -> list[tuple[Path, PurePosixPath]]:
    """``(path, rel)`` pairs of one input; raises FileNotFoundError if it names nothing."""
    raw = os.fspath(text)
    path = Path(raw)
    if path.is_dir():
        return [(p, PurePosixPath(p.relative_to(path).as_posix())) for p in list_images(path)]
    if path.is_file():
        # An explicit file is attempted whatever its suffix: the user asked for it.
        return [(path, PurePosixPath(path.name))]
    if _is_glob(raw):
        base = _glob_base(raw)
        found: list[tuple[Path, PurePosixPath]] = []
        for match in sorted(glob.glob(raw, recursive=True)):
            m = Path(match)
            if m.is_dir():
                found.extend((p, PurePosixPath(p.relative_to(base).as_posix()))
                             for p in list_images(m))
            elif m.is_file() and is_image_file(m):
                found.append((m, PurePosixPath(m.relative_to(base).as_posix())))
        if not found:
            raise FileNotFoundError(f"pattern '{raw}' matches no image files")
        return found
    raise FileNotFoundError(f"input '{raw}' does not exist (expected an image, a folder or a "
                            "glob pattern such as 'photos/**/*.jpg')")


def expand_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> tuple[list[InputFile], list[Conflict]]:
    """Expand files, folders and globs into the images of a run.

    Folders are searched recursively for :data:`segeig.data.files.IMAGE_EXTENSIONS`
    (hidden entries skipped); glob matches are filtered the same way, while an
    explicitly named file is always included. The same file reached twice (by
    real path) is kept once, from its first input.

    Output names (:attr:`InputFile.key`) drop the suffix unless two inputs would
    then share one (``a.jpg`` and ``a.png`` → keys ``a.jpg`` and ``a.png``). Inputs
    whose name still collides (``x/a.jpg`` and ``y/a.jpg`` passed as two folders)
    are returned as conflicts — never silently overwritten.

    Args:
        inputs: files, folders and glob patterns.
        exclude: folders whose files are not inputs when reached through a
            folder or a glob (a file named explicitly always is) — pass the
            output folders (``DIR/labels`` ...), so that a run writing into a
            folder it reads does not segment its own label maps and overlays
            on the next run. Skipped files are logged with the folder.

    Returns:
        ``(files sorted by key, conflicts)``; the order does not depend on the
        file system or on the order of the inputs.

    Raises:
        FileNotFoundError: an input names nothing (message says which).
        ValueError: no input given.
    """
    if not inputs:
        raise ValueError("no inputs given: pass image files, folders or glob patterns")
    seen: set[str] = set()
    excluded = [Path(os.path.realpath(e)) for e in exclude]
    skipped: dict[Path, int] = {}
    pairs: list[tuple[Path, PurePosixPath]] = []
    for text in inputs:
        explicit = Path(os.fspath(text)).is_file()
        for path, rel in _expand_one(text):
            real = os.path.realpath(path)
            inside = next((e for e in excluded if Path(real).is_relative_to(e)), None)
            if inside is not None and not explicit:  # a file named explicitly is wanted
                skipped[inside] = skipped.get(inside, 0) + 1
                continue
            if real not in seen:
                seen.add(real)
                pairs.append((path, rel))
    for folder, count in skipped.items():
        logger.warning("not segmenting %d image(s) under %s: an output folder of this run "
                       "(name them explicitly to segment them anyway)", count, folder)

    stems: dict[str, int] = {}
    for _, rel in pairs:
        stem = rel.with_suffix("").as_posix()
        stems[stem] = stems.get(stem, 0) + 1
    files: list[InputFile] = []
    conflicts: list[Conflict] = []
    owners: dict[str, Path] = {}
    # Sort first so that which duplicate "wins" a contested name is deterministic.
    for path, rel in sorted(pairs, key=lambda pr: (pr[1].as_posix(), pr[0].as_posix())):
        stem = rel.with_suffix("").as_posix()
        key = stem if stems[stem] == 1 else rel.as_posix()
        if key in owners:
            conflicts.append(Conflict(path, (
                f"its output name '{key}' is already used by '{owners[key]}'; segment the "
                "two folders into different --out directories or rename one file")))
            continue
        owners[key] = path
        files.append(InputFile(path, rel, key))
    files.sort(key=lambda f: f.key)
    return files, conflicts


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (0-based shard I of N, ``0 <= I < N``) into ``(I, N)``."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need N >= 1 and 0 <= I < N (shards are 0-based: "
                         f"0/{max(count, 1)} .. {max(count, 1) - 1}/{max(count, 1)})")
    return index, count


def shard_of(key: str, count: int) -> int:
    """Shard of an output key among ``count``: a stable hash, the same on every machine.

    Hashing (rather than dealing out the sorted list) keeps a file in its shard
    when other files are added or removed, so resumed sharded runs agree.
    """
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(files: Sequence[InputFile], index: int, count: int) -> list[InputFile]:
    """The files of shard ``index`` (0-based) of ``count``; shards partition ``files``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"invalid shard {index}/{count}: need 0 <= index < count")
    return [f for f in files if shard_of(f.key, count) == index]


class _Decode:
    """Picklable decoder: index → ``(index, uint8 H×W×3 array | None, failure reason | None)``."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        self.paths = [os.fspath(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            # A numpy array crosses the worker pipe as a plain pickle, never through
            # /dev/shm (a torch tensor would, and Docker's 64 MB fills with 2 photos).
            return index, read_image(self.paths[index]), None
        except ImageReadError as err:
            return index, None, err.reason
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the run
            return index, None, f"{type(err).__name__}: {err}"

    def pixels(self, index: int) -> int:
        """Pixels the image at ``index`` decodes to (0 when its header is unreadable)."""
        try:
            width, height = image_size(self.paths[index])
        except ImageReadError:
            return 0  # the worker reports why
        return width * height


def decode_images(
    paths: Sequence[str | os.PathLike[str]],
    workers: int = 0,
    max_pixels_in_flight: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Read images with :func:`segeig.imageio.read_image`, in worker processes.

    Args:
        paths: image files.
        workers: worker processes; 0 reads in this process. At most
            ``2·workers`` decoded images wait in memory.
        max_pixels_in_flight: images are handed to workers only while the
            pixels being decoded, waiting, or held by the caller (the last one
            yielded) sum to at most this (read from the headers): decoding
            costs ~7 bytes per pixel, so four workers on four 100 MP images
            would otherwise need ~3 GB at once. A larger image is decoded alone.

    Yields:
        ``(index into paths, H×W×3 uint8 RGB or None, None or why it failed)``,
        in the order of ``paths``. A failure to read one file never stops the
        iteration.

    Raises:
        segeig.workers.WorkerError: a worker process died (e.g. killed
            for memory) or could not return an image; raised at once.
    """
    decode = _Decode(paths)
    if len(paths) <= 1:
        workers = 0
    yield from ordered_map(decode, range(len(paths)), workers, cost=decode.pixels,
                           budget=max_pixels_in_flight, what="decoding worker")
