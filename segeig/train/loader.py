"""Training data: label-free datasets, a reproducible sample plan, augmented crops.

Reproducibility without saved loader state: the order of samples in epoch ``e``
is a permutation drawn from ``(seed, e)``, and every sample's augmentation is
seeded from ``(seed, e, position)``. A step's batch is therefore a pure
function of the run seed and the step number — independent of the number of
DataLoader workers and of interruptions — so resuming at step ``s`` only needs
``s``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from segeig.config import WorkingResolution
from segeig.data import ImageFolder, SegDataset
from segeig.data.base import Item
from segeig.data.files import is_image_file
from segeig.data.registry import build_dataset
from segeig.feature_cache import FeatureCache
from segeig.train.augment import TrainTransform, train_transform
from segeig.train.cached_crops import CachedCrops
from segeig.train.config import TrainConfig
from segeig.transforms import center_crop, resize_short_side, to_working_resolution

logger = logging.getLogger(__name__)


def build_train_dataset(config: TrainConfig) -> SegDataset:
    """The training split of ``config.dataset``, built so labels are never opened."""
    return build_dataset(config.dataset, config.root, config.split, with_labels=False)


class ImageList(ImageFolder):
    """An explicit list of image files, no labels; unreadable files are skipped
    with a warning when drawn (as for :class:`~segeig.data.ImageFolder`).

    Raises:
        ValueError: the list is empty or names no image file.
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        files = [Path(p) for p in paths]
        images = [p for p in files if is_image_file(p)]
        for p in files:
            if not is_image_file(p):
                logger.warning("skipping %s: not an image file (by extension)", p)
        if not images:
            raise ValueError(f"none of the {len(files)} given paths is an image file")
        names = [f"{i:06d}_{p.stem}" for i, p in enumerate(images)]
        self._bad: set[int] = set()
        SegDataset.__init__(self, Path(images[0]).parent, "all",
                            [Item(n, p) for n, p in zip(names, images, strict=True)],
                            with_labels=False)


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimisation steps in one epoch: every image seen about once, at least one step.

    Sets smaller than a global batch repeat images within the step (each copy
    gets its own random crop).
    """
    return max(1, num_samples // (batch_size * world_size))


def epoch_plan(num_samples: int, batch_size: int, world_size: int, seed: int,
               epoch: int) -> np.ndarray:
    """Sample indices of one epoch, ``steps × world_size × batch_size`` int64.

    Row ``[s, r]`` is the batch of process ``r`` at step ``s``. Concatenated
    permutations drawn from ``(seed, epoch)`` fill the plan, so every image
    appears once per epoch (up to the remainder) and small sets repeat.
    """
    steps = steps_per_epoch(num_samples, batch_size, world_size)
    need = steps * world_size * batch_size
    rng = np.random.default_rng([seed, epoch, 0x5E6E16])
    order = np.concatenate([rng.permutation(num_samples)
                            for _ in range(-(-need // num_samples))])
    return order[:need].reshape(steps, world_size, batch_size)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Augmentation seed of the sample at ``position`` (flat index in the epoch plan)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class PlanSampler(Sampler):
    """Batches ``[(index, augmentation seed), ...]`` of one process, steps
    ``start … total-1`` across epochs, in :func:`epoch_plan` order.

    One sampler spans the whole run so the DataLoader's workers persist across
    epochs.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int,
                 seed: int, start_step: int, total_steps: int) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.steps_per_epoch = steps_per_epoch(num_samples, batch_size, world_size)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        plan, plan_epoch = None, -1
        per_step = self.world_size * self.batch_size
        for step in range(self.start_step, self.total_steps):
            epoch, local = divmod(step, self.steps_per_epoch)
            if epoch != plan_epoch:
                plan = epoch_plan(self.num_samples, self.batch_size, self.world_size,
                                  self.seed, epoch)
                plan_epoch = epoch
            first = local * per_step + self.rank * self.batch_size
            yield [(int(index), sample_seed(self.seed, epoch, first + j))
                   for j, index in enumerate(plan[local, self.rank])]


class AugmentedCrops(Dataset):
    """``dataset[(index, seed)] → (crop 3×S×S uint8, valid S×S bool)``.

    ``valid`` is False where the augmentation padded the crop (the rescaled
    image was smaller than the crop). Labels are never read: the wrapped
    dataset must be built with ``with_labels=False``.

    Args:
        dataset: label-free dataset returning :class:`~segeig.data.Sample`.
        transform: the training augmentation (its random rescale is relative
            to the working resolution).
        resolution: bring images to this working resolution first (``None``:
            keep their own size).
        cache: keep decoded, pre-resized images in memory (per process).
    """

    def __init__(self, dataset: SegDataset, transform: TrainTransform,
                 resolution: WorkingResolution | None = None, cache: bool = False) -> None:
        if dataset.with_labels:
            raise ValueError("training datasets must be built with with_labels=False")
        self.dataset, self.transform = dataset, transform
        self.resolution, self.cache = resolution, cache
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> np.ndarray:
        """Decoded ``H×W×3`` uint8 image ``index`` at the working resolution."""
        if index in self._cache:
            return self._cache[index]
        image = to_working_resolution(self.dataset[index].image, self.resolution)
        if self.cache:
            self._cache[index] = image
        return image

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        image = self.image(index)
        self.transform.reseed(seed)
        crop, mask = self.transform(image, np.zeros(image.shape[:2], np.uint8))
        return torch.from_numpy(crop).permute(2, 0, 1).contiguous(), torch.from_numpy(mask != 255)


class CenterViews(Dataset):
    """Deterministic views for the centroid passes, at the working resolution.

    Each image is brought to the working resolution (with none: short side →
    ``crop``) and centre-cropped to a square of ``min(crop, short side)``, so
    views batch together and show objects at the scale the head was trained
    and will be used at. ``dataset[i] → 3×S×S uint8``.
    """

    def __init__(self, dataset: SegDataset, crop: int,
                 resolution: WorkingResolution | None = None) -> None:
        self.dataset, self.crop = dataset, crop
        self.resolution = resolution if resolution and resolution.short else None

    @property
    def size(self) -> int:
        """Side of every view."""
        return min(self.crop, self.resolution.short) if self.resolution else self.crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.dataset[index].image
        if self.resolution is None:
            image = resize_short_side(image, self.crop)
        else:
            image = to_working_resolution(image, self.resolution)
            if min(image.shape[:2]) < self.size:  # the long-side cap shrank it
                image = resize_short_side(image, self.size)
        image = center_crop(image, self.size)
        return torch.from_numpy(np.array(image, copy=True, order="C")).permute(2, 0, 1).contiguous()


def make_train_loader(config: TrainConfig, dataset: SegDataset, *, rank: int, world_size: int,
                      start_step: int, total_steps: int, pin_memory: bool,
                      pad_colour: tuple[float, float, float] = (0.0, 0.0, 0.0),
                      cache: FeatureCache | None = None) -> DataLoader:
    """DataLoader of ``(crops B×3×S×S uint8, valid B×S×S bool)`` for steps
    ``start_step … total_steps-1`` of process ``rank``.

    ``pad_colour`` (RGB in [0, 1], the backbone's mean) fills crop padding.
    With a feature ``cache`` the batches are cached windows instead:
    ``(tokens B×C×c×c float16, valid B×c×c bool)``
    (:class:`segeig.train.cached_crops.CachedCrops`), drawn in the main process
    (a memory-mapped read is cheaper than a worker's transfer).
    """
    sampler = PlanSampler(len(dataset), config.batch_size, rank, world_size, config.seed,
                          start_step, total_steps)
    if cache is not None:
        return DataLoader(CachedCrops(cache, config.crop, config.min_valid),
                          batch_sampler=sampler, num_workers=0, pin_memory=pin_memory)
    fill = tuple(int(round(255 * v)) for v in pad_colour)
    transform = train_transform(config.crop, scale=config.scale, hflip=config.hflip,
                                photometric=config.photometric, seed=config.seed, fill=fill)
    crops = AugmentedCrops(dataset, transform, config.working_resolution, config.cache_images)
    # An explicit generator keeps the loader from consuming torch's global RNG.
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(crops, batch_sampler=sampler, num_workers=config.workers,
                      pin_memory=pin_memory, generator=generator,
                      persistent_workers=False)


def token_validity(valid: torch.Tensor, patch: int, min_fraction: float) -> torch.Tensor:
    """Pixel validity → patch validity.

    Args:
        valid: ``B×H×W`` bool, True on real image pixels.
        patch: patch size p; the grid is ``ceil(H/p)×ceil(W/p)`` (the backbone
            pads the bottom/right to a multiple of p, and that padding is invalid).
        min_fraction: a patch is valid when at least this fraction of its
            pixels is.

    Returns:
        ``B×h×w`` bool.
    """
    h, w = valid.shape[-2:]
    pad_h, pad_w = (-h) % patch, (-w) % patch
    frac = F.avg_pool2d(F.pad(valid.float()[:, None], (0, pad_w, 0, pad_h)), patch)[:, 0]
    return frac >= min_fraction - 1e-6
