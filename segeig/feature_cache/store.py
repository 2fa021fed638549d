"""The cache on disk: its files, their checks, and the read side (:class:`FeatureCache`).

Files, under ``ROOT/<key>/`` (``key``: :func:`segeig.feature_cache.key.cache_key`):

* ``key.json`` — the settings the key hashes (it also marks the directory as
  a cache for :func:`remove_cache_dir`);
* ``part-R-of-W.bin`` — the float16 tokens of the images of part R
  (``image % W == R``), view after view, row-major over the grid: per patch
  the stacked token maps (``3·D``), the kernel features when stored apart
  (``Dk`` or nothing), then the view's colours (3, RGB in [0, 1]);
* ``part-R-of-W.json`` — its index: per (image, view) the token offset, grid,
  pixel extent and a CRC-32 of its bytes, plus each image's identity (name,
  file size and mtime), written after the ``.bin`` (both atomically).

On opening, the index is checked like any untrusted file (:func:`check_part`:
read with a bound, its schema, every entry inside the data file, non-empty,
tiling it exactly) and every CRC is verified (one sequential read, which also
warms the page cache for training). Reads go
through ``numpy.memmap``, so memory stays bounded whatever the cache size.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import stat
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segeig.feature_cache.views import ImageSource, View
from segeig.safeio import UserFileError, read_json_file

__all__ = ["DTYPE", "EXPECTED_REASONS", "Entry", "FeatureCache", "FeatureCacheError",
           "check_part", "estimate_bytes", "part_name",
           "remove_cache_dir", "size_text", "stored_worlds"]

#: What every cached channel is stored as.
DTYPE = np.float16


@dataclass(frozen=True)
class Entry:
    """Where one (image, view) lives: ``tokens`` rows from ``offset`` of its part."""

    part: int
    offset: int
    grid: tuple[int, int]
    pixels: tuple[int, int]
    crc: int

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]


def part_name(rank: int, world: int) -> str:
    """File stem of part ``rank`` of a ``world``-part set: ``"part-R-of-W"``."""
    return f"part-{rank}-of-{world}"


class FeatureCache:
    """Read side of a complete cache (one set of parts).

    Args:
        directory: the key directory.
        parts: per part, its parsed JSON index.
        n_views: views cached per image.
        feature_channels, kernel_channels: stacked token maps ``3·D``, and the
            kernel features stored apart (``Dk``, or 0 when they are the
            stack's last third).
        patch: the backbone's patch size.
    """

    def __init__(self, directory: Path, parts: dict[int, dict[str, Any]], n_views: int,
                 feature_channels: int, kernel_channels: int, patch: int) -> None:
        self.directory, self.n_views, self.patch = directory, n_views, patch
        self.feature_channels, self.kernel_channels = feature_channels, kernel_channels
        self.channels = feature_channels + kernel_channels + 3
        self.world = len(parts)
        self.entries: dict[tuple[int, int], Entry] = {}
        self.sizes = {rank: int(meta["tokens"]) for rank, meta in parts.items()}
        for rank, meta in parts.items():
            for image, view, offset, gh, gw, ph, pw, crc in meta["entries"]:
                self.entries[(image, view)] = Entry(rank, offset, (gh, gw), (ph, pw), crc)
        self._maps: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    @property
    def nbytes(self) -> int:
        """Bytes on disk (data files)."""
        return sum(self.sizes.values()) * self.channels * 2

    def _map(self, part: int) -> np.ndarray:
        # Opened lazily per process: DataLoader workers get their own mapping.
        if os.getpid() != self._pid:
            self._maps, self._pid = {}, os.getpid()
        if part not in self._maps:
            path = self.directory / f"{part_name(part, self.world)}.bin"
            self._maps[part] = np.memmap(path, dtype=DTYPE, mode="r",
                                         shape=(self.sizes[part], self.channels))
        return self._maps[part]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # never pickle mappings (spawned workers reopen them)
        return state

    def tokens(self, image: int, view: int) -> np.ndarray:
        """``h×w×C`` float16 (read-only memory map) of one (image, view)."""
        entry = self.entries[(image, view)]
        rows = self._map(entry.part)[entry.offset : entry.offset + entry.tokens]
        return rows.reshape(*entry.grid, self.channels)

    def window(self, image: int, view: int, top: int, left: int, size: tuple[int, int]
               ) -> tuple[np.ndarray, np.ndarray]:
        """A patch-aligned window of a view, padded past the view's edge.

        Args:
            top, left: offset of the window on the view's grid, in patches (≥ 0).
            size: ``(rows, cols)`` of the window in patches.

        Returns:
            ``(tokens rows×cols×C float16`` — zeros past the view —, ``fraction
            rows×cols float32`` of each patch's pixels that are real image:
            1 inside, less on the view's partial last row/column, 0 past it).
        """
        entry = self.entries[(image, view)]
        grid = self.tokens(image, view)
        rows, cols = size
        out = np.zeros((rows, cols, self.channels), DTYPE)
        h, w = min(rows, entry.grid[0] - top), min(cols, entry.grid[1] - left)
        if h > 0 and w > 0:
            out[:h, :w] = grid[top : top + h, left : left + w]
        p = self.patch
        ys = np.clip((entry.pixels[0] - (top + np.arange(rows)) * p) / p, 0.0, 1.0)
        xs = np.clip((entry.pixels[1] - (left + np.arange(cols)) * p) / p, 0.0, 1.0)
        return out, np.outer(ys, xs).astype(np.float32)

    def grid(self, image: int, view: int) -> tuple[int, int]:
        """Token grid ``(h, w)`` of one (image, view)."""
        return self.entries[(image, view)].grid

    def split(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B×C×h×w`` cached channels → ``(stacked 3D, kernel features, colours)``.

        The kernel features are the final map (the stack's last third) unless
        extra kernel channels were stored.
        """
        f, k = self.feature_channels, self.kernel_channels
        stacked = tokens[:, :f]
        kernel = tokens[:, f : f + k] if k else stacked[:, 2 * f // 3 :]
        return stacked, kernel, tokens[:, f + k :]


# -- checking -------------------------------------------------------------

class FeatureCacheError(RuntimeError):
    """The cache cannot be built or used: not enough disk, over its size bound, a write
    failed, or something that is not a cache file sits where one should be."""


#: Why a part is rebuilt without a warning: nothing is wrong, it is just not there yet.
EXPECTED_REASONS = ("missing", "written for other settings", "the images changed")

#: Fields of a part's index and their JSON types.
_INDEX_FIELDS: dict[str, type] = {"key": str, "channels": int, "tokens": int, "entries": list,
                                  "identities": dict}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index_limit(identities: dict[str, str], n_entries: int) -> int:
    """Most bytes a genuine index of these entries and identities can take (8 integers
    per entry, identities possibly escaped 6× by JSON), plus 1 MiB of slack."""
    return (1 << 20) + n_entries * 200 + sum(6 * len(v) + 32 for v in identities.values())


def _refuse(directory: Path, path: Path, what: str) -> FeatureCacheError:
    return FeatureCacheError(
        f"the feature cache {directory} holds {what} at {path.name}, where a cache file "
        f"should be; segeig does not delete it itself: delete the directory {directory} "
        "and run again")


def _present(directory: Path, path: Path) -> bool:
    """Whether a cache file is there (False: missing); anything but a regular file
    (a directory, FIFO, device, symbolic link) raises :class:`FeatureCacheError`."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(
            mode) else "a special file"
        raise _refuse(directory, path, kind)
    return True


def _read_index(path: Path, limit: int) -> tuple[Any, str]:
    """``(parsed index, "")`` or ``(None, why)`` (too large, not UTF-8 JSON, ...)."""
    try:
        return read_json_file(path, limit, "feature cache index", follow_symlinks=False), ""
    except UserFileError as err:
        return None, f"damaged index ({err})"


def _entries_problem(meta: dict[str, Any], mine: Sequence[int], n_views: int,
                     patch: int | None) -> str | None:
    """What is wrong with the ``entries`` of an index whose fields have the right types.

    Every (image, view) of the part exactly once; positive grids and pixel
    extents (the grid is the extent in patches, rounded up); CRCs of 32 bits;
    and the entries' token ranges tiling ``[0, tokens)`` without gap or
    overlap, so every slice is non-empty and inside a data file of the size
    the index states.
    """
    expected = {(i, v) for i in mine for v in range(n_views)}
    if len(meta["entries"]) != len(expected):
        return "incomplete"
    seen: set[tuple[int, int]] = set()
    spans = []
    for entry in meta["entries"]:
        if not (isinstance(entry, list) and len(entry) == 8 and all(map(_is_int, entry))):
            return f"damaged index (entry {str(entry)[:60]} is not 8 integers)"
        image, view, offset, gh, gw, ph, pw, crc = entry
        if (image, view) not in expected or (image, view) in seen:
            return f"damaged index (unexpected or repeated entry for image {image}, view {view})"
        seen.add((image, view))
        if min(gh, gw, ph, pw) < 1 or offset < 0 or not 0 <= crc < 1 << 32:
            return f"damaged index (entry of image {image}, view {view} is out of range)"
        if patch and (math.ceil(ph / patch), math.ceil(pw / patch)) != (gh, gw):
            return (f"damaged index (image {image}, view {view}: a {gh}×{gw} grid for "
                    f"{ph}×{pw} pixels)")
        spans.append((offset, gh * gw))
    position = 0
    for offset, length in sorted(spans):
        if offset != position:
            return f"damaged index (entries leave a gap or overlap at token {position})"
        position += length
    if position != meta["tokens"]:
        return f"damaged index (entries cover {position} tokens, it says {meta['tokens']})"
    return None


def check_part(directory: Path, rank: int, world: int, key: str, identities: list[str],
               n_views: int, channels: int, verify: bool, patch: int | None = None
               ) -> tuple[dict[str, Any] | None, str]:
    """``(index, "")`` when part ``rank`` of ``world`` is complete and intact, else
    ``(None, why)``; ``why`` not in :data:`EXPECTED_REASONS` means damage.

    The index is untrusted: read with a bound, checked against its schema and
    against the data file (:func:`_entries_problem`), and with ``verify`` every
    entry's CRC-32 over its (non-empty) slice of the data file.

    Args:
        identities: :meth:`~segeig.feature_cache.views.ImageSource.identity` of
            every image (the part's own must match its index).
        channels: stored channels per token.
        verify: also check the CRC of every (image, view) (reads the data file).
        patch: the backbone's patch size (grids are checked against pixel extents).

    Raises:
        FeatureCacheError: a directory, FIFO, device or symbolic link where a
            part's file should be (refused, naming the directory to delete:
            rebuilding would mean deleting what the user put there).
    """
    name = part_name(rank, world)
    mine = [i for i in range(len(identities)) if i % world == rank]
    own = {str(i): identities[i] for i in mine}
    index_path = directory / f"{name}.json"
    if not _present(directory, index_path):
        return None, "missing"
    meta, why = _read_index(index_path, _index_limit(own, len(mine) * n_views))
    if meta is None:
        return None, why
    if not isinstance(meta, dict):
        return None, "damaged index (not a JSON object)"
    if meta.get("key") != key or meta.get("channels") != channels:
        return None, "written for other settings"
    if meta.get("identities") != own:
        return None, "the images changed"
    for field, kind in _INDEX_FIELDS.items():
        value = meta.get(field)
        if not isinstance(value, kind) or (kind is int and (not _is_int(value) or value < 0)):
            return None, f"damaged index ({field!r} is not a {kind.__name__})"
    if set(meta) != set(_INDEX_FIELDS):
        return None, f"damaged index (unknown fields {sorted(set(meta) - set(_INDEX_FIELDS))})"
    problem = _entries_problem(meta, mine, n_views, patch)
    if problem:
        return None, problem
    path = directory / f"{name}.bin"
    expected = meta["tokens"] * channels * 2
    if not _present(directory, path):
        return None, "data file missing"
    size = path.stat().st_size
    if size != expected:
        return None, f"data file has {size} bytes, the index says {expected}"
    if verify and size:
        data = np.memmap(path, dtype=np.uint8, mode="r")
        row = channels * 2
        for image, view, offset, gh, gw, _, _, crc in meta["entries"]:
            chunk = data[offset * row : (offset + gh * gw) * row]
            if zlib.crc32(memoryview(chunk)) != crc:
                return None, f"checksum mismatch (image {image}, view {view})"
    return meta, ""


def stored_worlds(directory: Path) -> list[int]:
    """World sizes with at least one part file present, in increasing order."""
    worlds = set()
    for path in directory.glob("part-*-of-*.json"):
        try:
            worlds.add(int(path.stem.rsplit("-", 1)[1]))
        except ValueError:
            continue
    return sorted(worlds)


def estimate_bytes(source: ImageSource, indices: Sequence[int], views: Sequence[View],
                   patch: int, channels: int, sample: int = 256) -> int:
    """Bytes the views of ``indices`` take, from the sizes of up to ``sample`` of them."""
    if not indices:
        return 0
    step = max(1, len(indices) // sample)
    picked = list(indices)[::step]
    tokens = 0
    for i in picked:
        h, w = source.size(i)
        for view in views:
            vh, vw = view.size(h, w)
            tokens += math.ceil(vh / patch) * math.ceil(vw / patch)
    return int(tokens * len(indices) / len(picked)) * channels * 2


def size_text(n: int) -> str:
    """Bytes for a log line: ``"3.41 GiB"``, ``"12.0 MiB"``."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def remove_cache_dir(root: str | os.PathLike) -> None:
    """Delete a cache root written by :func:`~segeig.feature_cache.fill.prepare_feature_cache`
    (its key directories, and the root if then empty; nothing else)."""
    root = Path(root)
    if not root.is_dir():
        return
    for sub in root.iterdir():
        if sub.is_dir() and (sub / "key.json").is_file():
            shutil.rmtree(sub, ignore_errors=True)
    with contextlib.suppress(OSError):  # something else lives there: leave it
        root.rmdir()
