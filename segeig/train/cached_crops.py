"""Training on cached backbone features (:mod:`segeig.feature_cache`).

The views cached for a run (:func:`training_views`): the image at the working
resolution (scale 1, which the centroid passes and inference use) and the
midpoints of the halves of the ``scale`` range below and above 1 — for the
paper's 0.5–2.0 that is {0.75, 1, 1.5}; for ``fit``'s 0.75–1.5 {0.875, 1,
1.25} — each also flipped when ``cache_flips``. No photometric jitter: it
changes the backbone's input, so each jittered copy would cost a full view
(docs/training.md, "Feature cache", has the measurements behind these choices).

A training sample (:class:`CachedCrops`) draws, from its own seed, one view
and a window of ``ceil(crop / p)`` patches at a random whole-patch offset
(offset 0, and invalid patches past the edge, when the view is smaller, as
the pixel augmentation pads). Its pixel graph reads the view's cached
colours on the same grid, so a window is exactly what the step would have
computed from the view's pixels.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segeig.config import WorkingResolution
from segeig.data import SegDataset
from segeig.feature_cache import FeatureCache, View, prepare_feature_cache
from segeig.model import SegEigModel
from segeig.train.config import TrainConfig
from segeig.transforms import to_working_resolution

logger = logging.getLogger(__name__)

#: Default cache folder inside a run's output directory.
CACHE_DIR_NAME = "feature_cache"


def training_views(config: TrainConfig) -> tuple[View, ...]:
    """The views cached for ``config`` (scale 1 first, unflipped)."""
    if config.cache_scales:
        scales = sorted(set(config.cache_scales) | {1.0})
    else:
        lo, hi = config.scale
        scales = [1.0]
        if lo < 1.0:
            scales.append((lo + min(hi, 1.0)) / 2)
        if hi > 1.0:
            scales.append((max(lo, 1.0) + hi) / 2)
        scales = sorted(set(scales))
    scales.remove(1.0)
    views = [View(1.0, False)] + [View(s, False) for s in scales]
    if config.hflip and config.cache_flips:
        views += [View(v.scale, True) for v in views]
    return tuple(views)


class DatasetImages:
    """A label-free dataset seen at the working resolution (an
    :class:`~segeig.feature_cache.ImageSource`)."""

    def __init__(self, dataset: SegDataset, resolution: WorkingResolution | None) -> None:
        self.dataset, self.resolution = dataset, resolution

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> np.ndarray:
        return to_working_resolution(self.dataset[index].image, self.resolution)

    def size(self, index: int) -> tuple[int, int]:
        path = self.dataset.items[index].image
        try:
            with Image.open(path) as handle:  # the header only
                width, height = handle.size
        except Exception:  # noqa: BLE001 - any unreadable header: decode it instead
            return self.image(index).shape[:2]
        if self.resolution is None:
            return height, width
        return self.resolution.size_for(height, width)

    def identity(self, index: int) -> str:
        return self.dataset.file_identity(index)


def cache_root(config: TrainConfig, out_dir: Path) -> Path:
    """Where a run's cache lives: ``feature_cache_dir`` or ``OUT/feature_cache``."""
    return Path(config.feature_cache_dir) if config.feature_cache_dir else out_dir / CACHE_DIR_NAME


def open_training_cache(config: TrainConfig, model: SegEigModel, dataset: SegDataset,
                        out_dir: Path, *, device: torch.device,
                        autocast_dtype: torch.dtype | None, rank: int, world_size: int,
                        barrier, fill: bool = True, progress=None) -> FeatureCache | None:
    """The run's feature cache, filled first when needed (see :func:`prepare_feature_cache`)."""
    return prepare_feature_cache(
        cache_root(config, out_dir), model.backbone,
        DatasetImages(dataset, config.working_resolution), training_views(config),
        config.working_resolution, device=device, autocast_dtype=autocast_dtype, rank=rank,
        world_size=world_size, barrier=barrier,
        max_bytes=int(config.feature_cache_gb * 2**30), fill=fill, progress=progress,
        workers=config.workers, batch_size=config.batch_size)


def crop_grid(crop: int, patch: int) -> int:
    """Patches per side of a crop: the grid the backbone gives a ``crop`` px input."""
    return math.ceil(crop / patch)


class CachedCrops(Dataset):
    """``dataset[(index, seed)] → (tokens C×c×c float16, valid c×c bool)``.

    ``tokens`` are the cached channels of a random patch-aligned window (see
    the module docstring); ``valid`` marks patches with at least
    ``min_valid`` real pixels. The draw is a function of ``seed`` alone, so
    batches stay reproducible across workers and resumes.
    """

    def __init__(self, cache: FeatureCache, crop: int, min_valid: float) -> None:
        self.cache, self.min_valid = cache, min_valid
        self.size = crop_grid(crop, cache.patch)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        view = int(rng.integers(self.cache.n_views))
        h, w = self.cache.grid(index, view)
        top = int(rng.integers(max(h - self.size, 0) + 1))
        left = int(rng.integers(max(w - self.size, 0) + 1))
        tokens, fraction = self.cache.window(index, view, top, left, (self.size, self.size))
        valid = fraction >= self.min_valid - 1e-6
        return torch.from_numpy(tokens).permute(2, 0, 1), torch.from_numpy(valid)


def center_windows(cache: FeatureCache, indices: list[int], crop: int,
                   resolution: WorkingResolution | None, batch_size: int
                   ) -> list[Callable[[], torch.Tensor]]:
    """The centroid pass's batches of centre views, from the cache.

    The cached counterpart of :class:`segeig.train.loader.CenterViews`: the
    centred square window of ``ceil(min(crop, short side) / p)`` patches of
    each image's scale-1 view (smaller when the view is: the long-side cap
    shrank it); consecutive windows of one size share a batch.

    Returns:
        One loader per batch (so the number of batches is known up front);
        each returns ``B×C×s×s`` float16.
    """
    side = min(crop, resolution.short) if resolution and resolution.short else crop
    want = crop_grid(side, cache.patch)
    groups: list[tuple[int, list[int]]] = []
    for index in indices:
        h, w = cache.grid(index, 0)
        s = min(want, h, w)
        if not groups or groups[-1][0] != s or len(groups[-1][1]) >= batch_size:
            groups.append((s, []))
        groups[-1][1].append(index)

    def load(s: int, members: list[int]) -> torch.Tensor:
        windows = []
        for index in members:
            h, w = cache.grid(index, 0)
            tokens, _ = cache.window(index, 0, (h - s) // 2, (w - s) // 2, (s, s))
            windows.append(torch.from_numpy(tokens).permute(2, 0, 1))
        return torch.stack(windows)

    return [functools.partial(load, s, members) for s, members in groups]


def describe(cache: FeatureCache, out_dir: Path) -> str:
    """One line for the log: where the cache is and how big."""
    where = cache.directory
    with contextlib.suppress(ValueError):  # a cache outside the run: say where
        where = where.relative_to(out_dir)
    return f"{where} ({cache.nbytes / 2**30:.2f} GiB, {cache.n_views} views per image)"
