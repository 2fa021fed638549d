"""Shared fixtures: tiny random ViTs and models that build in milliseconds.

Nothing here downloads: the backbone is a randomly initialised timm ViT shrunk
with architecture overrides, exactly as a user's hub model would be built.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from segeig.backbone import Backbone
from segeig.config import BackboneConfig, HeadConfig
from segeig.model import SegEigModel, build_model


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run every test with one torch thread.

    CI machines have 2 shared cores: OpenMP threads waiting on each other cost
    more than these tiny operations gain (measured 10× slower with 2 threads
    under load). Tests that need more threads set them themselves.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: A 4-block ViT-S/16 shape-alike with width 48: same code paths, tiny cost.
TINY_ARCH = {"depth": 4, "embed_dim": 48, "num_heads": 2}


def tiny_backbone_config(**changes) -> BackboneConfig:
    config = BackboneConfig(weights="random", arch_overrides=dict(TINY_ARCH))
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.fixture
def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(tiny_backbone_config())


@pytest.fixture
def tiny_model(tiny_backbone) -> SegEigModel:
    torch.manual_seed(0)
    return build_model(tiny_backbone, HeadConfig(kind="mlp", k=12)).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``H×W×3`` uint8 image of a few flat rectangles plus noise."""
    image = np.zeros((height, width, 3), np.float32)
    for _ in range(4):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        image[y0:, x0:] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` set, as CI services and ``.ci/run`` do)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_pydensecrf() -> None:
    """Skip the calling test, with the reason, when pydensecrf is not installed;
    under CI fail instead.

    pydensecrf is an optional extra, so a user's plain install may lack it. CI
    installs ``[dev]``, which includes it: there a missing pydensecrf means the
    comparisons with the reference CRF would silently not run.
    """
    from segeig.crf import pydensecrf_available

    if pydensecrf_available():
        return
    reason = "pydensecrf (pydensecrf2, the [densecrf] extra) is not installed"
    if in_ci():
        pytest.fail(f"{reason}, but CI installs [dev], which includes it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def pydensecrf() -> None:
    """Tests of the ``densecrf`` backend: see :func:`require_pydensecrf`."""
    require_pydensecrf()
