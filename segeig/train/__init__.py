"""Training without labels: the NeuralEF loop over a frozen backbone, its data,
resume state and log, and the centroid passes that follow it.

Modules: ``launch`` (entry points :func:`train`, :func:`fit_images`,
:func:`fit_or_reuse_checkpoint`), ``config`` (:class:`TrainConfig` and the
per-dataset defaults), ``trainer`` (the step loop), ``step`` (the loss of one
step), ``loader`` (reproducible sample plan, augmented crops), ``cached_crops``
(training from the feature cache: views, patch-aligned crops, centre windows),
``augment`` (albumentations pipeline), ``centroids`` (k-means / spectral
centroid pass), ``state`` (resume state and JSONL log), ``runtime`` (processes
and precision).
"""

from segeig.train.config import DATASET_DEFAULTS, TrainConfig, apply_overrides, default_config
from segeig.train.launch import FIT_DEFAULTS, fit_images, fit_or_reuse_checkpoint, train
from segeig.train.state import LOG_NAME, STATE_NAME, load_train_state, read_log
from segeig.train.trainer import TrainingDivergedError

__all__ = [
    "DATASET_DEFAULTS",
    "FIT_DEFAULTS",
    "LOG_NAME",
    "STATE_NAME",
    "TrainConfig",
    "TrainingDivergedError",
    "apply_overrides",
    "default_config",
    "fit_images",
    "fit_or_reuse_checkpoint",
    "load_train_state",
    "read_log",
    "train",
]
