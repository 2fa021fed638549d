"""The ``densecrf`` backend: pydensecrf, the reference implementation (CPU only).

pydensecrf (the ``pydensecrf2`` distribution, ``pip install segeig[densecrf]``)
is imported lazily, so the rest of segeig, the torch backend included, works
without it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np

from segeig.crf.params import CRFParams

__all__ = ["check_crf_inputs", "dense_crf", "pydensecrf_available", "require_pydensecrf"]

_PROB_EPS = 1e-5  # floor before -log(p): keeps unaries finite without biasing real labels


def require_pydensecrf() -> tuple[ModuleType, Callable[..., np.ndarray]]:
    """Import pydensecrf, or raise ``ImportError`` saying how to install it.

    Callers that will need it later call this first, so a missing package
    fails before any expensive work rather than after it.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as exc:
        raise ImportError(
            "the densecrf CRF backend needs pydensecrf; install it with `pip install "
            "pydensecrf2`, or use the torch backend (--crf-backend torch)") from exc
    return dcrf, unary_from_softmax


def pydensecrf_available() -> bool:
    """Whether pydensecrf imports."""
    try:
        require_pydensecrf()
    except ImportError:
        return False
    return True


def check_crf_inputs(image: np.ndarray, probs: np.ndarray) -> None:
    """Raise ``ValueError`` unless image is uint8 ``H×W×3`` and probs ``M×H×W``, M ≥ 1."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if probs.ndim != 3:
        raise ValueError(f"probs must be (K, H, W), got shape {probs.shape}")
    if probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs spatial size {probs.shape[1:]} != image size {image.shape[:2]}")
    if probs.shape[0] < 1:
        raise ValueError("probs must have at least one label")


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None,
              bilateral_sxy: float | None = None) -> np.ndarray:
    """Refine softmax probabilities with pydensecrf's fully connected CRF.

    Args:
        image: uint8 ``(H, W, 3)`` RGB in ``[0, 255]``, the image the
            probabilities belong to (same size).
        probs: float ``(K, H, W)`` per-pixel probabilities summing to 1 over K
            (a softmax). Values are clipped to ``[1e-5, 1]`` before the log.
        params: CRF hyper-parameters; ``CRFParams()`` if None.
        bilateral_sxy: bilateral spatial std in pixels of this image; default
            ``params.bilateral_sxy`` as given (no rescaling).

    Returns:
        float32 ``(K, H, W)`` refined marginals in ``[0, 1]``, summing to 1 over K.
    """
    params = params or CRFParams()
    image = np.asarray(image)
    probs = np.asarray(probs)
    check_crf_inputs(image, probs)
    n_labels, height, width = probs.shape
    if n_labels == 1:
        return np.ones_like(probs, dtype=np.float32)
    dcrf, unary_from_softmax = require_pydensecrf()

    # pydensecrf reads raw buffers: every array handed to it must be
    # C-contiguous with the exact dtype it expects, or results are garbage.
    clipped = np.clip(probs.astype(np.float32, copy=False), _PROB_EPS, 1.0)
    unary = np.require(
        unary_from_softmax(clipped, clip=None), dtype=np.float32, requirements=["C", "W"]
    )
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy if bilateral_sxy is None else bilateral_sxy,
        srgb=params.bilateral_srgb,
        # pydensecrf's memoryviews also reject read-only buffers (e.g.
        # np.asarray(PIL image)), hence "W" as well as "C".
        rgbim=np.require(image, dtype=np.uint8, requirements=["C", "W"]),
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)
