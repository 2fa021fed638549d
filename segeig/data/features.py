"""A disk cache of the frozen backbone's patch features, per image and per *view*.

The backbone never changes during training, yet an uncached run recomputes it
for every crop of every epoch (63 % of a CPU step, ``scripts/benchmark.py``).
The cache computes it once per (image, view) — a view is the image at the
working resolution, rescaled by ``scale`` and optionally flipped — and stores,
per patch, float16:

* the head's input: the three token maps stacked (``3·D`` channels);
* the kernel's features when they are not the final map (``kernel_features
  = "keys"``: ``Dk`` more channels; the final map is the stack's last third);
* the view's colours on its padded patch grid (3 channels, RGB in [0, 1]):
  what the pixel graph reads (:func:`segeig.kernel.pixel_points` of the view).

Files, under ``ROOT/<key>/`` where ``key`` hashes everything the features
depend on (backbone name, a hash of its weights, layers, preprocessing, the
working resolution, the view set, ``extra``), so any change gives another
directory and nothing stale is ever read:

* ``part-R-of-W.bin`` — the float16 tokens of the images of part R
  (``image % W == R``), view after view, row-major over the grid;
* ``part-R-of-W.json`` — its index: per (image, view) the token offset, grid,
  pixel extent and a CRC-32 of its bytes, plus each image's identity (name,
  file size and mtime), written after the ``.bin`` (both atomically).

A multi-process run fills one part per rank (no two processes write one file)
and every rank then reads all parts. Any complete, intact set of parts is
reused, whatever the number of processes that wrote it. On opening, file
sizes and every CRC are checked (one sequential read, which also warms the
page cache for training); a part that fails is rebuilt. Reads go through
``numpy.memmap``, so memory stays bounded whatever the cache size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from segeig.atomic import atomic_write, write_text
from segeig.backbone import Backbone
from segeig.config import WorkingResolution
from segeig.kernel import pad_to_grid
from segeig.transforms import to_tensor

if TYPE_CHECKING:
    from segeig.data.base import SegDataset

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "FeatureCache", "FeatureCacheError", "ImageSource", "View",
           "backbone_fingerprint", "prepare_feature_cache"]

FORMAT_VERSION = 1
_DTYPE = np.float16
#: Free space left untouched on the cache's disk (logs, checkpoints still need room).
DISK_MARGIN = 512 * 2**20


class FeatureCacheError(RuntimeError):
    """The cache cannot be built: not enough disk, over its size bound, or a write failed."""


@dataclass(frozen=True)
class View:
    """One cached rendering of an image.

    Attributes:
        scale: factor applied to the image at the working resolution.
        flip: mirrored left-right (after rescaling).
    """

    scale: float = 1.0
    flip: bool = False

    def size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size of this view of an ``height×width`` base image."""
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def render(self, image: np.ndarray) -> np.ndarray:
        """``H×W×3`` uint8 base image → this view (bilinear, as the training rescale)."""
        h, w = self.size(*image.shape[:2])
        if (h, w) != image.shape[:2]:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.flip:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


class ImageSource(Protocol):
    """What the cache is filled from: images at their base scale, and who they are."""

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray:
        """``H×W×3`` uint8 RGB image ``index`` at the base scale (the working resolution)."""

    def size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of :meth:`image` (cheap: used to estimate the cache size)."""

    def identity(self, index: int) -> str:
        """A string that changes when image ``index`` changes (name, file size, mtime)."""


def file_identity(dataset: SegDataset, index: int) -> str:
    """:meth:`ImageSource.identity` of a dataset's image file: name, size and mtime
    (just the name when the file cannot be stat'ed)."""
    item = dataset.items[index]
    try:
        stat = os.stat(item.image)
        return f"{item.name}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return item.name


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


def backbone_fingerprint(backbone: Backbone) -> str:
    """BLAKE2b of every parameter and buffer of the ViT (about 0.2 s for ViT-S).

    Hashing the weights themselves (not their source) makes random
    initialisations, local files and hub versions all safe keys.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(backbone.vit.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def cache_key(backbone: Backbone, resolution: WorkingResolution | None, views: Sequence[View],
              extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(hex key, the JSON description it hashes)`` of a cache."""
    description = {
        "version": FORMAT_VERSION,
        "backbone": backbone.config.name,
        "arch_overrides": backbone.config.arch_overrides,
        "weights": backbone_fingerprint(backbone),
        "layers": list(backbone.layer_indices),
        "kernel_features": backbone.config.kernel_features,
        "patch": backbone.patch_size,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "resolution": asdict(resolution) if resolution is not None else None,
        "views": [asdict(v) for v in views],
        "dtype": "float16",
        "extra": extra or {},
    }
    text = json.dumps(description, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), description


def _channels(backbone: Backbone) -> tuple[int, int]:
    """``(stacked head channels 3·D, extra kernel channels Dk or 0)``."""
    keys = backbone.config.kernel_features == "keys"
    return backbone.feature_dim, (backbone.embed_dim if keys else 0)


def _part_name(rank: int, world: int) -> str:
    return f"part-{rank}-of-{world}"


class FeatureCache:
    """Read side of a complete cache (one set of parts).

    Args:
        directory: the key directory.
        index: per part, its parsed JSON index.
        feature_channels, kernel_channels: see the module docstring.
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
            path = self.directory / f"{_part_name(part, self.world)}.bin"
            self._maps[part] = np.memmap(path, dtype=_DTYPE, mode="r",
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
        out = np.zeros((rows, cols, self.channels), _DTYPE)
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


# -- building -------------------------------------------------------------

def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_part(directory: Path, rank: int, world: int, key: str, identities: list[str],
                n_views: int, channels: int, verify: bool) -> tuple[dict[str, Any] | None, str]:
    """``(index, "")`` when part ``rank`` of ``world`` is complete and intact, else
    ``(None, why)``."""
    name = _part_name(rank, world)
    meta = _read_index(directory / f"{name}.json")
    if meta is None:
        return None, "missing"
    if meta.get("key") != key or meta.get("channels") != channels:
        return None, "written for other settings"
    mine = [i for i in range(len(identities)) if i % world == rank]
    if meta.get("identities") != {str(i): identities[i] for i in mine}:
        return None, "the images changed"
    if len(meta.get("entries", [])) != len(mine) * n_views:
        return None, "incomplete"
    path = directory / f"{name}.bin"
    expected = int(meta["tokens"]) * channels * 2
    try:
        size = path.stat().st_size
    except OSError:
        return None, "data file missing"
    if size != expected:
        return None, f"data file has {size} bytes, the index says {expected}"
    if verify:
        data = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        row = channels * 2
        for image, view, offset, gh, gw, _, _, crc in meta["entries"]:
            chunk = data[offset * row : (offset + gh * gw) * row]
            if zlib.crc32(memoryview(chunk)) != crc:
                return None, f"checksum mismatch (image {image}, view {view})"
    return meta, ""


def _complete_sets(directory: Path) -> list[int]:
    """World sizes with at least one part file present, current layout first."""
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


def _gib(n: int) -> str:
    """Bytes for a log line: ``"3.41 GiB"``, ``"12.0 MiB"``."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class _Rendered(Dataset):
    """``[i] → (image index, [view pixels H×W×3 uint8, ...])`` (decoded in DataLoader workers)."""

    def __init__(self, source: ImageSource, views: Sequence[View], indices: list[int]) -> None:
        self.source, self.views, self.indices = source, views, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, list[np.ndarray]]:
        index = self.indices[position]
        base = self.source.image(index)
        return index, [v.render(base) for v in self.views]


def _unbatched(item: Any) -> Any:
    return item


def _encode(backbone: Backbone, pixels: list[np.ndarray], device: torch.device,
            autocast_dtype: torch.dtype | None, with_kernel: bool) -> np.ndarray:
    """Cached channels of same-size views: ``B×h×w×C`` float16."""
    images = torch.stack([to_tensor(p) for p in pixels]).to(device)
    if autocast_dtype is not None:
        with torch.autocast(device.type, dtype=autocast_dtype):
            features = backbone(images)
    else:
        features = backbone(images)
    grid = features.kernel.shape[-2:]
    colours = F.interpolate(pad_to_grid(images, grid, backbone.patch_size, tuple(backbone.mean)),
                            size=grid, mode="bilinear", align_corners=False)
    parts = [*features.layers, *([features.kernel] if with_kernel else [])]
    stacked = torch.cat([t.float() for t in parts] + [colours], dim=1)
    return stacked.permute(0, 2, 3, 1).to("cpu", torch.float16).numpy()


@torch.no_grad()
def _fill_part(directory: Path, rank: int, world: int, key: str, backbone: Backbone,
               source: ImageSource, views: Sequence[View], identities: list[str],
               device: torch.device, autocast_dtype: torch.dtype | None, channels: int,
               progress: Callable[[int, int], None] | None, workers: int = 0,
               batch_size: int = 1) -> None:
    """Compute and write part ``rank`` of ``world`` (data first, then its index).

    Images are decoded and rendered in ``workers`` DataLoader processes; the
    views of up to ``batch_size`` images are grouped by size and each group
    runs as one batch (on CPU batching barely matters; on a GPU it does).
    Entries are written image after image, view after view.
    """
    name = _part_name(rank, world)
    (directory / f"{name}.json").unlink(missing_ok=True)  # never pair a new .bin with an old index
    mine = [i for i in range(len(source)) if i % world == rank]
    entries: list[list[int]] = []
    offset = 0
    with_kernel = channels - 3 > backbone.feature_dim
    loader = DataLoader(_Rendered(source, views, mine), batch_size=None, num_workers=workers,
                        collate_fn=_unbatched)

    def flush(handle, pending: list[tuple[int, list[np.ndarray]]]) -> None:
        nonlocal offset
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for slot, (_, rendered) in enumerate(pending):
            for v, pixels in enumerate(rendered):
                groups.setdefault(pixels.shape[:2], []).append((slot, v))
        out: dict[tuple[int, int], np.ndarray] = {}
        for members in groups.values():
            array = _encode(backbone, [pending[slot][1][v] for slot, v in members], device,
                            autocast_dtype, with_kernel)
            for j, member in enumerate(members):
                out[member] = array[j]
        for slot, (index, rendered) in enumerate(pending):
            for v in range(len(views)):
                tokens = np.ascontiguousarray(out[(slot, v)])
                data = tokens.tobytes()
                handle.write(data)
                h, w = rendered[v].shape[:2]
                entries.append([index, v, offset, tokens.shape[0], tokens.shape[1], h, w,
                                zlib.crc32(data)])
                offset += tokens.shape[0] * tokens.shape[1]

    def write(handle) -> None:
        pending: list[tuple[int, list[np.ndarray]]] = []
        done = 0
        for item in loader:
            pending.append(item)
            if len(pending) >= batch_size:
                flush(handle, pending)
                done, pending = done + len(pending), []
                if progress is not None:
                    progress(done, len(mine))
        if pending:
            flush(handle, pending)
            if progress is not None:
                progress(len(mine), len(mine))

    path = directory / f"{name}.bin"
    try:
        atomic_write(path, write)
        index = {"key": key, "channels": channels, "tokens": offset, "entries": entries,
                 "identities": {str(i): identities[i] for i in mine}}
        write_text(directory / f"{name}.json", json.dumps(index))
    except OSError as err:
        path.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FeatureCacheError(
                f"the disk holding the feature cache {directory} filled up while writing it "
                f"({_gib(offset * channels * 2)} written; nothing is left behind). Free some "
                "space, put the cache elsewhere (--feature-cache DIR) or run without it "
                "(--no-feature-cache).") from err
        raise FeatureCacheError(f"could not write the feature cache {path}: {err}") from err


def prepare_feature_cache(
    root: str | os.PathLike,
    backbone: Backbone,
    source: ImageSource,
    views: Sequence[View],
    resolution: WorkingResolution | None,
    *,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    max_bytes: int | None = None,
    extra: dict[str, Any] | None = None,
    fill: bool = True,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 0,
    batch_size: int = 1,
) -> FeatureCache | None:
    """Open the cache of ``source``'s ``views`` under ``root``, filling what is missing.

    Every rank of a multi-process run calls this with the same arguments; rank
    ``r`` fills part ``r`` (images ``i % world_size == r``) and all ranks then
    read all parts. The disk the fill will take is estimated and logged first.

    Args:
        root: cache root; the cache lives in ``root/<key>/``.
        backbone: the frozen backbone (eval mode, on ``device``).
        source: the images (see :class:`ImageSource`).
        views: views cached for every image (:class:`View`).
        resolution: the working resolution the source's images are at (part of the key).
        autocast_dtype: run the backbone under autocast (CUDA mixed precision).
        barrier: synchronises the ranks (between checking and filling, and after).
        max_bytes: refuse to build a cache larger than this.
        extra: more JSON settings the images depend on (part of the key).
        fill: ``False``: return an existing complete cache or ``None``, never compute.
        progress: ``progress(images done, images of this rank)`` while filling.
        workers: DataLoader processes decoding the images while filling.
        batch_size: images whose views are grouped into forward passes.

    Returns:
        The :class:`FeatureCache` (``None`` only with ``fill=False``).

    Raises:
        FeatureCacheError: larger than ``max_bytes`` or the free disk space
            (checked before computing anything), or the disk filled up anyway.
    """
    device = torch.device(device)
    key, description = cache_key(backbone, resolution, views, extra)
    directory = Path(root) / key
    head, kern = _channels(backbone)
    channels = head + kern + 3
    identities = [source.identity(i) for i in range(len(source))]
    n_views = len(views)

    def complete(world: int) -> dict[int, dict[str, Any]] | None:
        parts = {}
        for r in range(world):
            meta, why = _check_part(directory, r, world, key, identities, n_views, channels,
                                    verify=True)
            if meta is None:
                logger.info("feature cache %s: part %d of %d %s", directory, r, world, why)
                return None
            parts[r] = meta
        return parts

    def opened(parts: dict[int, dict[str, Any]]) -> FeatureCache:
        cache = FeatureCache(directory, parts, n_views, head, kern, backbone.patch_size)
        logger.info("feature cache %s: %d images × %d views, %s", directory, len(source),
                    n_views, _gib(cache.nbytes))
        return cache

    start = time.perf_counter()
    if directory.is_dir():
        for world in [world_size] + [w for w in _complete_sets(directory) if w != world_size]:
            parts = complete(world)
            if parts is not None:
                logger.info("feature cache: reusing %s (checked in %.1f s)", directory,
                            time.perf_counter() - start)
                return opened(parts)
    if not fill:
        return None
    own, why = _check_part(directory, rank, world_size, key, identities, n_views, channels,
                           verify=True)
    barrier()  # every rank has looked before any rank writes
    if own is None:
        mine = [i for i in range(len(source)) if i % world_size == rank]
        need = estimate_bytes(source, mine, views, backbone.patch_size, channels)
        total = need * world_size
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
        logger.info("feature cache: filling %s (%s): %d images × %d views (%s), about %s "
                    "for this process, %s in all; %s free", directory, why, len(mine),
                    n_views, ", ".join(f"×{v.scale:g}{' flipped' if v.flip else ''}"
                                       for v in views), _gib(need), _gib(total), _gib(free))
        if max_bytes is not None and total > max_bytes:
            raise FeatureCacheError(
                f"the feature cache would take about {_gib(total)}, over its bound of "
                f"{_gib(max_bytes)}; raise the bound, cache fewer views, or run without it "
                "(--no-feature-cache)")
        if need + DISK_MARGIN > free:
            raise FeatureCacheError(
                f"not enough disk for the feature cache in {directory}: it needs about "
                f"{_gib(need)} and {_gib(free)} is free (keeping {_gib(DISK_MARGIN)} spare). "
                "Put it on a larger disk (--feature-cache DIR) or run without it "
                "(--no-feature-cache).")
        write_text(directory / "key.json", json.dumps(description, indent=1))
        t0 = time.perf_counter()
        _fill_part(directory, rank, world_size, key, backbone, source, views, identities,
                   device, autocast_dtype, channels, progress, workers, batch_size)
        logger.info("feature cache: filled part %d of %d in %.1f s", rank, world_size,
                    time.perf_counter() - t0)
    barrier()
    parts = {}
    for r in range(world_size):
        meta, why = _check_part(directory, r, world_size, key, identities, n_views, channels,
                                verify=r != rank or own is not None)
        if meta is None:
            raise FeatureCacheError(f"feature cache part {r} of {world_size} in {directory} "
                                    f"is not usable after filling ({why})")
        parts[r] = meta
    return opened(parts)


def remove_cache_dir(root: str | os.PathLike) -> None:
    """Delete a cache root written by :func:`prepare_feature_cache` (and nothing else)."""
    root = Path(root)
    if not root.is_dir():
        return
    for sub in root.iterdir():
        if sub.is_dir() and (sub / "key.json").is_file():
            shutil.rmtree(sub, ignore_errors=True)
    with contextlib.suppress(OSError):  # something else lives there: leave it
        root.rmdir()
