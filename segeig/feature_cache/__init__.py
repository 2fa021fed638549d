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

It knows nothing of datasets: callers hand it an :class:`ImageSource`.

Modules: ``views`` (:class:`View`, :class:`ImageSource`: what is cached),
``key`` (the hash of everything the features depend on, naming the cache's
directory), ``store`` (the files, their checks, :class:`FeatureCache` reading
them), ``fill`` (running the backbone to fill parts; :func:`prepare_feature_cache`).
"""

from segeig.feature_cache.fill import DISK_MARGIN, prepare_feature_cache
from segeig.feature_cache.key import FORMAT_VERSION, backbone_fingerprint, cache_key
from segeig.feature_cache.store import (
    Entry,
    FeatureCache,
    FeatureCacheError,
    estimate_bytes,
    remove_cache_dir,
)
from segeig.feature_cache.views import ImageSource, View

__all__ = [
    "DISK_MARGIN",
    "FORMAT_VERSION",
    "Entry",
    "FeatureCache",
    "FeatureCacheError",
    "ImageSource",
    "View",
    "backbone_fingerprint",
    "cache_key",
    "estimate_bytes",
    "prepare_feature_cache",
    "remove_cache_dir",
]
