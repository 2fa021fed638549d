"""Training entry points: :func:`train` (any dataset), :func:`fit_images`
(a user's own photos) and :func:`fit_or_reuse_checkpoint` (fit once, reuse after).

Strictly unsupervised: datasets are built with ``with_labels=False``, so label
files are never even opened. See ``docs/training.md`` for the defaults, the
log format, resuming and multi-GPU runs.

Example::

    from segeig.train import default_config, fit_images, train
    config = default_config("pascal_context", "/data/pcontext", epochs=10)
    checkpoint = train(config, "runs/pc")          # runs/pc/checkpoint.safetensors
    checkpoint = fit_images("my_photos/", "runs/photos")
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from segeig.checkpoint import CHECKPOINT_NAME
from segeig.config import BackboneConfig, WorkingResolution, default_max_long
from segeig.data import SegDataset
from segeig.data.base import Item, Sample
from segeig.data.files import list_images
from segeig.imageio import ImageReadError, read_image
from segeig.train.config import TrainConfig, default_config
from segeig.train.loader import ImageList
from segeig.train.runtime import DistContext
from segeig.train.trainer import Trainer
from segeig.transforms import to_working_resolution

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict], None]

#: Settings of :func:`fit_images`, chosen to finish in about a minute on a
#: 2-core CPU for a handful of photos with ViT-S/16 (see docs/training.md).
FIT_DEFAULTS: dict = dict(
    k=16, steps=120, batch_size=4, crop=224, resolution=224, scale=(0.75, 1.5), lr=3e-3,
    kmeans_k=16, kmeans_tokens=65_536, workers=0, log_every=5, checkpoint_every=0,
)

#: Sets up to this size are decoded once, up front, and kept in memory.
PRELOAD_LIMIT = 256


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: ProgressFn | None = None,
    dataset: SegDataset | None = None,
    checkpoint_path: str | Path | None = None,
    log_path: str | Path | None = None,
) -> Path:
    """Train a model (or fit the k-means baseline) and write its checkpoint.

    Args:
        config: the run's settings (:func:`default_config` gives the reference
            ones per dataset).
        out_dir: output directory: ``checkpoint.safetensors`` (written every
            ``checkpoint_every`` epochs and at the end, with centroids),
            ``train_state.safetensors`` (resume state) and ``train_log.jsonl``.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``, ...
        resume: continue the run in ``out_dir`` from its last saved state; the
            settings must equal the saved ones (except workers and logging
            cadence). Continues bit-for-bit on CPU.
        overwrite: replace an existing run in ``out_dir`` instead of refusing.
        rank, world_size: this process in a multi-process run; the caller must
            have initialised ``torch.distributed`` (the CLI does under torchrun).
            ``config.batch_size`` is per process.
        progress: ``progress(step, total, info)`` on rank 0; ``info["phase"]``
            is ``"train"`` (with ``loss``, ``trace``, ``penalty``, ``lr``,
            ``tau``, ``epoch``) or ``"kmeans"`` (``step``/``total`` count
            batches of the centroid pass).
        dataset: use this label-free dataset instead of building
            ``config.dataset`` at ``config.root``.
        checkpoint_path, log_path: override the output file paths.

    Returns:
        Path of the written ``checkpoint.safetensors`` (loadable by :func:`segeig.load`).

    Raises:
        ValueError: bad settings, an existing run without ``resume``/``overwrite``,
            a resume whose settings differ, or a dataset layout problem.
        TrainingDivergedError: the loss became NaN/inf (the last good
            checkpoint is left intact).
        segeig.backbone.BackboneWeightsError: backbone weights unavailable.
    """
    trainer = Trainer(config, out_dir, device=device, resume=resume, overwrite=overwrite,
                      dist=DistContext(rank, world_size), progress=progress, dataset=dataset,
                      checkpoint_path=checkpoint_path, log_path=log_path)
    return trainer.run()


class PreloadedImages(SegDataset):
    """Decoded images held in memory (``H×W×3`` uint8 each); no labels."""

    name = "folder"

    def __init__(self, images: list[np.ndarray], paths: list[Path]) -> None:
        names = [f"{i:06d}_{p.stem}" for i, p in enumerate(paths)]
        super().__init__(paths[0].parent, "all",
                         [Item(n, p) for n, p in zip(names, paths, strict=True)],
                         with_labels=False)
        self._images = images

    def load(self, index: int) -> Sample:
        item = self.items[index]
        return Sample(image=self._images[index], label=None, name=item.name, path=item.image)


def _image_files(images: str | Path | Sequence[str | Path]) -> tuple[list[Path], str]:
    """The candidate files and a description of where they came from."""
    if isinstance(images, (str, Path)):
        root = Path(images)
        if not root.exists():
            raise ValueError(f"{root} does not exist; pass a folder of images or image files")
        files = list_images(root)
        if not files:
            raise ValueError(f"no image files (.jpg, .png, ...) found under {root}")
        return files, str(root)
    files = [Path(p) for p in images]
    if not files:
        raise ValueError("fit_images got an empty list of images")
    return files, f"<{len(files)} image files>"


def _load_dataset(files: list[Path], resolution: WorkingResolution) -> SegDataset:
    """Small sets: decode all now, at the working resolution (unreadable ones
    skipped with a warning). Large sets: lazily, skipping unreadable files when drawn."""
    if len(files) > PRELOAD_LIMIT:
        for path in files:  # fail now, clearly, if nothing at all can be read
            try:
                read_image(path)
                return ImageList(files)
            except ImageReadError as err:
                logger.warning("skipping unreadable image %s: %s", path, err.reason)
        raise ValueError(f"none of the {len(files)} images could be read")
    images, kept, errors = [], [], []
    for path in files:
        try:
            images.append(to_working_resolution(read_image(path), resolution))
            kept.append(path)
        except ImageReadError as err:
            logger.warning("skipping unreadable image %s: %s", path, err.reason)
            errors.append(str(err))
    if not images:
        raise ValueError(f"none of the {len(files)} images could be read; first error: "
                         f"{errors[0]}")
    return PreloadedImages(images, kept)


def fit_images(
    images: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    backbone: BackboneConfig | None = None,
    k: int | None = None,
    steps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: ProgressFn | None = None,
    overwrite: bool = True,
    **overrides,
) -> Path:
    """Fit a model on a user's own unlabelled images, with small defaults.

    Args:
        images: a folder (searched recursively) or a list of image files.
            Unreadable files are skipped with a logged warning.
        out_dir: output directory (``checkpoint.safetensors`` and
            ``train_log.jsonl`` are written there), or the checkpoint's own
            ``.safetensors`` path (the log goes beside it as
            ``NAME.train_log.jsonl``).
        backbone: default ``BackboneConfig()`` = DINO ViT-S/16 from the hub.
        k: eigenfunctions K, also the number of ``eigen+kmeans`` centroids
            (default :data:`FIT_DEFAULTS`).
        steps: optimisation steps (default :data:`FIT_DEFAULTS`).
        device: ``auto``, ``cpu``, ``cuda``.
        seed: seed of everything random.
        progress: ``progress(step, total_steps, {"loss": ..., "trace": ...,
            "penalty": ..., "lr": ..., "tau": ..., "epoch": ...})`` after every
            training step.
        overwrite: replace an existing checkpoint at the destination.
        overrides: any other :class:`TrainConfig` field (``crop``,
            ``batch_size``, ``kmeans_k``, ...).

    Returns:
        Path of the written checkpoint (methods ``eigen`` and ``eigen+kmeans``).

    Raises:
        ValueError: no readable image, or bad settings.
    """
    files, where = _image_files(images)
    given = {key: value for key, value in overrides.items() if value is not None}
    settings = {**FIT_DEFAULTS, **given}
    if "crop" in given and "resolution" not in given and "resize_short" not in given:
        settings["resolution"] = given["crop"]  # photos are brought to the crop's scale
    if k is not None:
        settings["k"] = k
        if "kmeans_k" not in given:
            settings["kmeans_k"] = k
    if steps is not None:
        settings["steps"] = steps
    config = default_config("folder", where, backbone=backbone or BackboneConfig(), seed=seed,
                            **settings)
    resolution = config.working_resolution
    if not resolution.short:  # own size asked for: still bound what is held in memory
        resolution = WorkingResolution(config.crop, default_max_long(config.crop))
    dataset = _load_dataset(files, resolution)
    out = Path(out_dir)
    checkpoint_path = log_path = None
    if out.suffix == ".safetensors":
        checkpoint_path, log_path = out, out.with_suffix(".train_log.jsonl")
        out = out.parent
    logger.info("fitting on %d images (%s): K=%d, %d steps of %d crops of %d px",
                len(dataset), where, config.head.k, config.steps, config.batch_size, config.crop)

    def train_progress(step: int, total: int, info: dict) -> None:
        if progress is not None and info.get("phase") == "train":
            progress(step, total, info)

    return train(config, out, device=device, overwrite=overwrite, progress=train_progress,
                 dataset=dataset, checkpoint_path=checkpoint_path, log_path=log_path)


def fit_or_reuse_checkpoint(
    out_dir: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    overwrite: bool = False,
    wait: bool = False,
    backbone: BackboneConfig | None = None,
    k: int | None = None,
    steps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int, dict], None] | None = None,
    poll_seconds: float = 5.0,
    timeout: float | None = None,
    feature_cache: bool | None = None,
    feature_cache_dir: str | None = None,
) -> tuple[Path, bool]:
    """The checkpoint of a run without ``--checkpoint``: ``DIR/checkpoint.safetensors``.

    Reused when it exists (a resumed run segments with the same model), else
    fitted on ``images`` with :func:`fit_images`. The one place that decides
    between fitting and reusing: ``segeig segment`` and the demo both call it.

    Args:
        out_dir: the run's output directory.
        images: images to fit on (the run's inputs).
        overwrite: refit even if the checkpoint exists.
        wait: do not fit; wait until another process (shard 0) has written the
            checkpoint. Used by the other shards of a sharded run.
        backbone, k, steps, device, seed, progress: passed to ``fit_images``.
        poll_seconds, timeout: how often and how long (None: forever) to wait.
        feature_cache, feature_cache_dir: the fit's feature cache (``None``:
            :data:`FIT_DEFAULTS`, on, in a folder of ``out_dir`` removed after the fit).

    Returns:
        ``(checkpoint path, fitted by this call)``.

    Raises:
        TimeoutError: ``wait`` and the checkpoint did not appear in time.
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    if path.is_file() and not overwrite:
        logger.info("reusing %s fitted by an earlier run (pass --overwrite to refit)", path)
        return path, False
    if wait:
        if overwrite:
            raise ValueError("refitting (--overwrite) in a sharded run without --checkpoint would "
                             "race: refit once without --shard, or pass --checkpoint")
        logger.info("waiting for shard 0 to fit %s", path)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not path.is_file():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear within {timeout:.0f} s; is shard 0 "
                                   "running? Or fit first and pass --checkpoint")
            time.sleep(poll_seconds)
        return path, False
    logger.info("no checkpoint: fitting a head on the %d images first", len(images))
    fitted = fit_images(
        [Path(p) for p in images], Path(out_dir), backbone=backbone, k=k, steps=steps,
        device=device, seed=seed, progress=progress, feature_cache=feature_cache,
        feature_cache_dir=feature_cache_dir,
    )
    return Path(fitted), True
