"""Training configuration and the per-dataset defaults (docs/training.md,
"Defaults per dataset").

A :class:`TrainConfig` is everything that determines a training run (except the
device and the number of processes), so it is stored whole in the resume state
and in the checkpoint (``extra["training"]``). :func:`default_config` gives the
reference settings for a dataset; every field can be overridden.

Per-dataset defaults (``β = 0.08·256/K`` follows from ``ObjectiveConfig``).
``resolution`` is the working resolution (short side; the long side is capped
at twice it): training rescales each image to it and then by a random ratio in
``scale``, and every later use of the head (centroid passes, prediction,
evaluation) runs at it. k-means centroids: ``kmeans_k`` clusters (default K)
with ``kmeans_metric`` distance.

=============== ==== ===== ====== ====== ========== ========== ======== =========
dataset          K   crop  batch  epochs resolution scale      kmeans_k metric
=============== ==== ===== ====== ====== ========== ========== ======== =========
pascal_context  256  480   16     40     520        0.5–2.0    K        euclidean
ade20k          512  512   16     20     512        0.5–2.0    K        euclidean
cityscapes      256  512   16     40     1024       0.5–2.0    K        euclidean
cocostuff27     128  320   16     4      320        0.5–2.0    27       euclidean
cityscapes27    128  320   16     40     320        0.5–2.0    27       euclidean
potsdam3        32   320   16     25     320        0.5–2.0    3        euclidean
custom          64   320   8      60     320        0.5–2.0    K        euclidean
folder          64   320   8      60     320        0.5–2.0    K        euclidean
=============== ==== ===== ====== ====== ========== ========== ======== =========

Why: Pascal Context, ADE20K and Cityscapes are the paper's reference settings
(base short side 520 / 512 / 1024, ratio 0.5–2.0, k-means with K clusters,
Euclidean, on the head's hidden / final ViT features). ``custom`` and
``folder`` were chosen by measurement on the pretrained proxy backbone
(docs/method.md, "Defaults and how they were chosen"). Class-count k-means
(the old benchmark default) stays available: ``kmeans_k=<classes>``.

``cocostuff27``, ``cityscapes27`` and ``potsdam3`` follow the ``stego``
evaluation protocol's scale (short side 320, 320×320 centre crop): the working
resolution is 320 and the crop the protocol's 320 square, so the head trains at
the scale it is scored at. Potsdam's 200 px tiles are brought to 320 exactly as
the protocol upsamples them (one tile is one 320×320 view; 200 itself would
give the ViT a 13×13 patch grid where evaluation sees 20×20). K over-clusters
the classes about 5× for the 27-class sets (as 256 does for Pascal Context's
59) and 10× for Potsdam's 3 classes, which each gather very different
surfaces (roads with cars, buildings with clutter). Their k-means centroids
are class-count (27 / 27 / 3), so ``eigen+kmeans`` predicts one segment per
class, what the protocol's Hungarian matching scores. Epochs give each about
the image visits of the Pascal Context preset (~200k): COCO-Stuff's 49k
curated images × 4, Cityscapes' 2,975 × 40, Potsdam's 7,695 tiles × 25.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from segeig.config import (
    CENTROID_METRICS,
    DATASET_NAMES,
    BackboneConfig,
    HeadConfig,
    KernelConfig,
    ObjectiveConfig,
    SpectralConfig,
    WorkingResolution,
    default_max_long,
    from_dict,
    to_dict,
)

TrainMethod = Literal["eigen", "kmeans", "spectral"]
AmpMode = Literal["auto", "bf16", "fp16", "off"]


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        dataset: registry name (see :data:`segeig.data.DATASETS`).
        root: dataset root directory (a description string when the images
            were given as a list).
        split: split to train on (labels are never read).
        method: ``"eigen"`` trains the head and then fits ``eigen+kmeans``
            centroids on its hidden features; ``"kmeans"`` trains nothing and
            fits the baseline centroids on raw final backbone features;
            ``"spectral"`` trains nothing and fits the classic baseline's
            centroids: k-means over the mean final features of per-image
            exact spectral segments (:mod:`segeig.spectral`).
        backbone, head, kernel, objective: model and loss settings.
        spectral: per-image spectral clustering of the ``spectral`` method
            (its per-image kernel is ``kernel`` with ``spectral.k_feat``).
        epochs: passes over the data; ignored when ``steps`` is set.
        steps: total optimisation steps (overrides ``epochs``; the last epoch
            is then cut short).
        batch_size: images per step *per process*.
        crop: side of the square training crops (pixels); rescaled images
            smaller than the crop are padded with the backbone's mean colour
            (what inference pads with) and those patches leave the graph.
        scale: random rescale ratio range around the working resolution
            (the paper: 0.5–2.0 of the base).
        resolution: the working resolution, as a short side in pixels: every
            image is resized to it before augmenting, and the checkpoint
            records it so that inference runs at the same scale (0 or
            ``None``: each image at its own size).
        max_long: cap on the long side at the working resolution (``None``:
            twice ``resolution``).
        hflip, photometric: augmentation switches.
        lr, lr_min: Adam learning rate, cosine-annealed per iteration to ``lr_min``.
        amp: mixed precision on CUDA: ``auto`` (bf16 if supported, else fp16),
            ``bf16``, ``fp16`` or ``off``. ``bf16`` also works on CPU (slow;
            for tests); ``auto`` means ``off`` on CPU.
        seed: seeds head init, data order, augmentation and Gumbel noise.
        workers: DataLoader worker processes (0 = load in the main process).
        min_valid: a patch takes part in the kernel and loss only when at least
            this fraction of its pixels is real image (not crop padding).
        global_graph: in multi-process runs, build the kernel over the
            features of all processes' batches (the graph of the global batch).
        log_every: write a step record to the JSONL log every this many steps.
        save_every: also save the resume state every this many steps (0: only
            at epoch ends).
        checkpoint_every: save model checkpoint + resume state every this many
            epochs (0: only at the end of training).
        kmeans_k: centroids fitted after training (``None``: K, the head's
            number of eigenfunctions, as the paper).
        kmeans_metric: ``euclidean`` (the reference code's k-means) or
            ``cosine`` (spherical k-means).
        kmeans_tokens: tokens kept (uniform reservoir sample) for each k-means fit.
        kmeans_iters: Lloyd iterations.
        kmeans_images: images visited by the k-means pass (``None``: all).
        baseline_centroids: with ``method="eigen"``, also fit the ``kmeans``
            baseline centroids in the same pass, so one checkpoint runs all
            three methods.
        spectral_centroids: also fit the ``spectral`` baseline's centroids
            (with ``method="eigen"`` or ``"kmeans"``).
        cache_images: keep decoded (pre-resized) images in memory; for small
            sets of large photos.
        feature_cache: compute the frozen backbone once per image and view and
            train (and fit centroids) from a disk cache of its features
            (:mod:`segeig.train.cached_crops`); ``False``: run the backbone on
            every augmented crop, with photometric jitter.
        feature_cache_dir: where the cache lives (``None``: ``OUT/feature_cache``,
            kept for resuming; removed at the end of runs that keep no resume
            state, such as ``fit``). Several runs may share one directory:
            each set of settings gets its own key folder.
        feature_cache_gb: refuse to build a cache larger than this (GiB).
        cache_scales: rescale factors cached (besides 1, always cached);
            empty: the midpoints of ``scale``'s parts below and above 1.
        cache_flips: also cache every view flipped (doubles the fill).
    """

    dataset: str = "folder"
    root: str = ""
    split: str = "train"
    method: TrainMethod = "eigen"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    epochs: int = 20
    steps: int | None = None
    batch_size: int = 16
    crop: int = 480
    scale: tuple[float, float] = (0.5, 2.0)
    resolution: int | None = None
    max_long: int | None = None
    hflip: bool = True
    photometric: bool = True
    lr: float = 1e-3
    lr_min: float = 1e-5
    amp: AmpMode = "auto"
    seed: int = 0
    workers: int = 4
    min_valid: float = 0.5
    global_graph: bool = False
    log_every: int = 10
    save_every: int = 0
    checkpoint_every: int = 1
    kmeans_k: int | None = None
    kmeans_metric: str = "euclidean"
    kmeans_tokens: int = 262_144
    kmeans_iters: int = 30
    kmeans_images: int | None = None
    baseline_centroids: bool = False
    spectral_centroids: bool = False
    cache_images: bool = False
    feature_cache: bool = True
    feature_cache_dir: str | None = None
    feature_cache_gb: float = 200.0
    cache_scales: tuple[float, ...] = ()
    cache_flips: bool = False

    @property
    def working_resolution(self) -> WorkingResolution:
        """The scale this run trains at, which its checkpoint records."""
        short = int(self.resolution or 0)
        cap = default_max_long(short) if self.max_long is None else int(self.max_long)
        return WorkingResolution(short, cap if short else 0)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first nonsensical setting."""
        checks = [
            (self.method in ("eigen", "kmeans", "spectral"),
             f"method must be eigen|kmeans|spectral, not {self.method!r}"),
            (min(self.spectral.segments_per_image, self.spectral.n_eigenvectors,
                 self.spectral.k_feat, self.spectral.kmeans_iters) >= 1,
             f"spectral settings must all be ≥ 1, got {self.spectral}"),
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            (self.steps is None or self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch size must be ≥ 1, got {self.batch_size}"),
            (self.crop >= 16, f"crop must be ≥ 16 pixels, got {self.crop}"),
            (0 < self.scale[0] <= self.scale[1], f"scale must be 0 < min ≤ max, got {self.scale}"),
            (self.lr > 0 and 0 <= self.lr_min <= self.lr,
             f"need 0 ≤ lr_min ≤ lr and lr > 0, got lr={self.lr}, lr_min={self.lr_min}"),
            (self.amp in ("auto", "bf16", "fp16", "off"),
             f"amp must be auto|bf16|fp16|off, not {self.amp!r}"),
            (self.head.k >= 2, f"K must be ≥ 2, got {self.head.k}"),
            (0 < self.min_valid <= 1, f"min_valid must be in (0, 1], got {self.min_valid}"),
            (self.kmeans_k is None or self.kmeans_k >= 1,
             f"kmeans_k must be ≥ 1, got {self.kmeans_k}"),
            (self.kmeans_tokens >= 1, "kmeans_tokens must be ≥ 1"),
            (self.kmeans_metric in CENTROID_METRICS,
             f"kmeans_metric must be one of {CENTROID_METRICS}, not {self.kmeans_metric!r}"),
            (self.resolution is None or 0 <= self.resolution <= 16384,
             f"resolution must be in [0, 16384], got {self.resolution}"),
            (self.max_long is None or 0 <= self.max_long <= 16384,
             f"max_long must be in [0, 16384], got {self.max_long}"),
            (self.workers >= 0, "workers must be ≥ 0"),
            (all(0 < v <= 8 for v in self.cache_scales),
             f"cache scales must be in (0, 8], got {self.cache_scales}"),
            (self.feature_cache_gb > 0, "feature_cache_gb must be > 0"),
            (self.log_every >= 1, "log_every must be ≥ 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training setting: {message}")


#: Per-dataset overrides of the :class:`TrainConfig` defaults (see module docstring).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "pascal_context": dict(k=256, crop=480, batch_size=16, epochs=40, resolution=520),
    "ade20k": dict(k=512, crop=512, batch_size=16, epochs=20, resolution=512),
    "cityscapes": dict(k=256, crop=512, batch_size=16, epochs=40, resolution=1024),
    "cocostuff27": dict(k=128, crop=320, batch_size=16, epochs=4, resolution=320, kmeans_k=27),
    "cityscapes27": dict(k=128, crop=320, batch_size=16, epochs=40, resolution=320,
                         kmeans_k=27),
    "potsdam3": dict(k=32, crop=320, batch_size=16, epochs=25, resolution=320, kmeans_k=3),
    "custom": dict(k=64, crop=320, batch_size=8, epochs=60, resolution=320),
    "folder": dict(k=64, crop=320, batch_size=8, epochs=60, resolution=320),
}

#: Renamed settings: old name → new name (old checkpoints and resume states,
#: and the ``resize_short`` keyword, keep working).
RENAMED = {"resize_short": "resolution"}

#: Fields that may differ when resuming: they do not change what is computed.
RESUME_MUTABLE = frozenset({"workers", "log_every", "save_every", "checkpoint_every",
                            "feature_cache_dir", "feature_cache_gb"})


def apply_overrides(config: TrainConfig, **overrides: Any) -> TrainConfig:
    """``config`` with ``overrides`` applied (validated).

    Args:
        config: the base configuration.
        overrides: any :class:`TrainConfig` field, plus the shortcuts ``k``
            (head K), ``head_kind``, ``backbone_name``, ``backbone_weights``,
            ``backbone_arch_overrides``, ``backbone_kernel_features``,
            ``spectral_segments`` and ``spectral_eigenvectors``. ``None``
            values are ignored, so CLI flags can be passed as they are (use
            ``resolution=0`` for "each image at its own size"; the old name
            ``resize_short`` is accepted).

    Raises:
        ValueError: unknown field or invalid value.
    """
    given = {RENAMED.get(k, k): v for k, v in overrides.items() if v is not None}
    head = given.pop("head", config.head)
    if "k" in given:
        head = replace(head, k=int(given.pop("k")))
    if "head_kind" in given:
        head = replace(head, kind=given.pop("head_kind"))
    backbone = given.pop("backbone", config.backbone)
    for name in ("name", "weights", "arch_overrides", "kernel_features"):
        if f"backbone_{name}" in given:
            backbone = replace(backbone, **{name: given.pop(f"backbone_{name}")})
    spectral = given.pop("spectral", config.spectral)
    for short, name in (("spectral_segments", "segments_per_image"),
                        ("spectral_eigenvectors", "n_eigenvectors")):
        if short in given:
            spectral = replace(spectral, **{name: int(given.pop(short))})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"unknown training settings {unknown}")
    for name in ("scale", "cache_scales"):
        if name in given:
            given[name] = tuple(float(v) for v in given[name])
    out = replace(config, head=head, backbone=backbone, spectral=spectral, **given)
    out.validate()
    return out


def default_config(dataset: str, root: str | os.PathLike = "", **overrides: Any) -> TrainConfig:
    """The reference configuration for ``dataset`` with ``overrides`` applied.

    Args:
        dataset: one of :data:`DATASET_NAMES` (``-`` accepted for ``_``).
        root: dataset root.
        overrides: see :func:`apply_overrides`.

    Raises:
        ValueError: unknown dataset or field, invalid value.
    """
    key = dataset.lower().replace("-", "_")
    if key not in DATASET_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASET_NAMES)}")
    defaults = dict(DATASET_DEFAULTS[key])
    base = TrainConfig(dataset=key, root=str(root), head=HeadConfig(k=defaults.pop("k")),
                       **defaults)
    return apply_overrides(base, **overrides)


def config_differences(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """``field: saved → requested`` for every setting that changes the computation."""
    a, b = to_dict(saved), to_dict(requested)
    out = []
    for key in a:
        if key not in RESUME_MUTABLE and a[key] != b.get(key):
            out.append(f"{key}: {a[key]!r} → {b.get(key)!r}")
    return out


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from its JSON form, including forms written by
    earlier versions (renamed fields, see :data:`RENAMED`)."""
    data = {RENAMED.get(k, k): v for k, v in data.items()}
    # Runs saved before the feature cache existed ran the backbone on every crop.
    data.setdefault("feature_cache", False)
    return from_dict(TrainConfig, data)
