"""The cache key: a hash of everything the cached features depend on.

Any change (backbone name, weights, layers, preprocessing, working
resolution, view set, ``extra``, the image set) gives another key, hence
another directory, so nothing stale is ever read, and two image sets sharing
one cache root live side by side. The description hashed holds settings only —
no module or file path — so moving code never invalidates a cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from segeig.backbone import Backbone
from segeig.config import WorkingResolution
from segeig.feature_cache.views import View

__all__ = ["FORMAT_VERSION", "backbone_fingerprint", "cache_key"]

#: Version of the on-disk layout (part of the key: a new layout never reads an old cache).
FORMAT_VERSION = 1


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
              extra: dict[str, Any] | None = None, *, image_set: Sequence[str] | None = None
              ) -> tuple[str, dict[str, Any]]:
    """``(hex key, the JSON description it hashes)`` of a cache.

    Args:
        image_set: the images' identities in order
            (:meth:`~segeig.feature_cache.views.ImageSource.identity`: name,
            size, mtime); hashed into ``"images"``, so editing, adding or
            reordering images gives a new directory.
    """
    images = None
    if image_set is not None:
        images = hashlib.blake2b(json.dumps(list(image_set)).encode(),
                                 digest_size=16).hexdigest()
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
        "images": images,
    }
    text = json.dumps(description, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), description
