"""Filling the cache: the backbone run over every view of every image, one part
per process, and :func:`prepare_feature_cache`, which reuses what is there.

A multi-process run fills one part per rank (no two processes write one file)
and every rank then reads all parts. Any complete, intact set of parts is
reused, whatever the number of processes that wrote it; a part that fails its
checks (:func:`segeig.feature_cache.store.check_part`) is rebuilt. The disk a
fill will take is estimated first and a fill that would not fit is refused
before anything is computed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from segeig.atomic import atomic_write, write_text
from segeig.backbone import Backbone
from segeig.config import WorkingResolution
from segeig.feature_cache.key import cache_key
from segeig.feature_cache.store import (
    EXPECTED_REASONS,
    FeatureCache,
    FeatureCacheError,
    check_part,
    estimate_bytes,
    part_name,
    size_text,
    stored_worlds,
)
from segeig.feature_cache.views import ImageSource, View
from segeig.kernel import pad_to_grid
from segeig.transforms import to_tensor

logger = logging.getLogger(__name__)

__all__ = ["DISK_MARGIN", "prepare_feature_cache"]

#: Free space left untouched on the cache's disk (logs, checkpoints still need room).
DISK_MARGIN = 512 * 2**20


def _channels(backbone: Backbone) -> tuple[int, int]:
    """``(stacked head channels 3·D, extra kernel channels Dk or 0)``."""
    keys = backbone.config.kernel_features == "keys"
    return backbone.feature_dim, (backbone.embed_dim if keys else 0)


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
    name = part_name(rank, world)
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
                f"({size_text(offset * channels * 2)} written; nothing is left behind). Free some "
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
    identities = [source.identity(i) for i in range(len(source))]
    # The image set is part of the key: two sets sharing one root never rebuild
    # each other's parts, and a run never reads another set's bytes.
    key, description = cache_key(backbone, resolution, views, extra, image_set=identities)
    directory = Path(root) / key
    head, kern = _channels(backbone)
    channels = head + kern + 3
    n_views = len(views)
    patch = backbone.patch_size

    def check(r: int, world: int, verify: bool = True) -> tuple[dict[str, Any] | None, str]:
        meta, why = check_part(directory, r, world, key, identities, n_views, channels,
                               verify=verify, patch=patch)
        if meta is None and why not in EXPECTED_REASONS:
            logger.warning("feature cache %s: part %d of %d is damaged (%s); it is rebuilt",
                           directory, r, world, why)
        return meta, why

    def complete(world: int) -> dict[int, dict[str, Any]] | None:
        parts = {}
        for r in range(world):
            meta, why = check(r, world)
            if meta is None:
                logger.info("feature cache %s: part %d of %d %s", directory, r, world, why)
                return None
            parts[r] = meta
        return parts

    def opened(parts: dict[int, dict[str, Any]]) -> FeatureCache:
        cache = FeatureCache(directory, parts, n_views, head, kern, backbone.patch_size)
        logger.info("feature cache %s: %d images × %d views, %s", directory, len(source),
                    n_views, size_text(cache.nbytes))
        return cache

    start = time.perf_counter()
    if directory.is_dir():
        for world in [world_size] + [w for w in stored_worlds(directory) if w != world_size]:
            parts = complete(world)
            if parts is not None:
                logger.info("feature cache: reusing %s (checked in %.1f s)", directory,
                            time.perf_counter() - start)
                return opened(parts)
    if not fill:
        return None
    own, why = check(rank, world_size)
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
                                       for v in views),
                    size_text(need), size_text(total), size_text(free))
        if max_bytes is not None and total > max_bytes:
            raise FeatureCacheError(
                f"the feature cache would take about {size_text(total)}, over its bound of "
                f"{size_text(max_bytes)}; raise the bound, cache fewer views, or run without it "
                "(--no-feature-cache)")
        if need + DISK_MARGIN > free:
            raise FeatureCacheError(
                f"not enough disk for the feature cache in {directory}: it needs about "
                f"{size_text(need)} and {size_text(free)} is free "
                f"(keeping {size_text(DISK_MARGIN)} spare). "
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
        meta, why = check_part(directory, r, world_size, key, identities, n_views, channels,
                               verify=r != rank or own is not None, patch=patch)
        if meta is None:
            raise FeatureCacheError(f"feature cache part {r} of {world_size} in {directory} "
                                    f"is not usable after filling ({why})")
        parts[r] = meta
    return opened(parts)
