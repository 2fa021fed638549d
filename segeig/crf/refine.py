"""CRF refinement at the working size: label subset, backend choice, marginals, labels.

Cost and memory grow linearly with the number of labels K and the number of
pixels, yet only a few labels are plausible anywhere in one image and the CRF
gains nothing from more pixels than the model resolved. So :func:`crf_labels`

1. keeps the ``max_labels`` most relevant labels
   (:func:`segeig.resample.topk_probs`),
2. runs the CRF on an image of at most :data:`CRF_SIDE` pixels on its short
   side (callers shrink larger images with :func:`crf_working_size` and
   :func:`shrink_image`), with the bilateral kernel's spatial std scaled to
   that size (:meth:`CRFParams.bilateral_sxy_at`),
3. resamples the marginals bilinearly to the output size and takes the argmax
   (:func:`segeig.resample.resampled_argmax`), mapping plane indices back to
   the original label ids.

:func:`prepare_crf` builds its inputs straight from patch-grid scores
(:func:`segeig.resample.pixel_probs`) at the working size.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from segeig.crf.densecrf import check_crf_inputs, dense_crf, require_pydensecrf
from segeig.crf.meanfield import mean_field
from segeig.crf.params import BACKENDS, CRFParams
from segeig.resample import pixel_probs, resampled_argmax, topk_probs

logger = logging.getLogger(__name__)

__all__ = ["CRF_SIDE", "crf_from_scores", "crf_labels", "crf_marginals", "crf_working_size",
           "prepare_crf", "resolve_backend", "shrink_image"]

#: Default short side (pixels) the CRF runs at; larger images are shrunk to it.
#: 320: the kernel's reference size (REFERENCE_SIDE) and the paper's stego
#: protocol. On CPU a 448 px CRF made predict 2.66x as slow as without CRF,
#: a 320 px one 1.79x, for 0.1-0.3 mIoU (measured, docs/benchmarks.md).
CRF_SIDE = 320


def resolve_backend(backend: str = "auto", device: object = None) -> str:
    """The backend that will run: ``"torch"`` or ``"densecrf"``.

    ``auto`` picks ``torch``: on an accelerator it is the only one that runs
    there, and on CPU it runs as fast as pydensecrf per core (measured,
    docs/benchmarks.md), is always installed, and gives the same labels as on
    the accelerator.

    Args:
        backend: one of :data:`segeig.crf.BACKENDS`.
        device: where the torch backend would run (a ``torch.device`` or its
            string, e.g. ``"cuda:0"``); None means CPU.

    Raises:
        ValueError: unknown backend.
        ImportError: ``densecrf`` asked for but pydensecrf is not installed
            (pydensecrf runs on the CPU whatever ``device`` says).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown CRF backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "densecrf":
        require_pydensecrf()
    return "torch" if backend == "auto" else backend


def crf_working_size(size: tuple[int, int], side: int | None = CRF_SIDE) -> tuple[int, int]:
    """``(h, w)`` the CRF runs at for an image of ``size``: short side at most ``side``.

    Aspect ratio is kept (sides rounded, at least 1); ``side=None`` keeps ``size``.
    """
    height, width = int(size[0]), int(size[1])
    if side is None or min(height, width) <= side:
        return height, width
    scale = side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``H×W×3`` image area-averaged to ``size`` (returned as is when equal)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    import cv2

    return cv2.resize(np.ascontiguousarray(image), (size[1], size[0]),
                      interpolation=cv2.INTER_AREA)


def _pixel_major(
    image: np.ndarray, probs: np.ndarray, params: CRFParams | None, backend: str, device: object
) -> torch.Tensor:
    """Marginals as float32 ``H×W×M`` (labels last), on the torch backend's device."""
    params = params or CRFParams()
    image, probs = np.asarray(image), np.asarray(probs)
    check_crf_inputs(image, probs)
    sxy = params.bilateral_sxy_at(min(image.shape[:2]))
    if resolve_backend(backend, device) == "densecrf":
        q = dense_crf(image, probs, params, bilateral_sxy=sxy)
        return torch.from_numpy(np.ascontiguousarray(q.transpose(1, 2, 0)))
    return mean_field(image, probs, params, device or "cpu", bilateral_sxy=sxy)


def crf_marginals(
    image: np.ndarray,
    probs: np.ndarray,
    params: CRFParams | None = None,
    backend: str = "auto",
    device: object = None,
) -> np.ndarray:
    """Dense CRF marginals at the image's own size.

    The bilateral kernel's spatial std is ``params.bilateral_sxy_at(min(H, W))``:
    resize image and probabilities together (e.g. to :func:`crf_working_size`)
    and the kernel follows, so the result does not depend on the input size.

    Args:
        image: uint8 ``H×W×3`` RGB.
        probs: float ``M×H×W`` softmax probabilities (M ≥ 1).
        params: CRF hyper-parameters; ``CRFParams()`` if None.
        backend: ``auto``, ``torch`` or ``densecrf`` (:func:`resolve_backend`).
        device: torch device for the torch backend (default CPU).

    Returns:
        float32 ``M×H×W`` marginals in ``[0, 1]`` summing to 1 over M.
    """
    q = _pixel_major(image, probs, params, backend, device)
    return np.ascontiguousarray(q.cpu().numpy().transpose(2, 0, 1))


def crf_labels(
    image: np.ndarray,
    probs: np.ndarray,
    params: CRFParams | None = None,
    max_labels: int | None = 32,
    backend: str = "auto",
    device: object = None,
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """CRF-refined hard labels.

    Args:
        image: uint8 ``(H, W, 3)`` RGB, at the size the CRF runs at.
        probs: float ``(K, H, W)`` softmax probabilities.
        params: CRF hyper-parameters; ``CRFParams()`` if None.
        max_labels: run the CRF on at most this many labels (see
            :func:`~segeig.resample.topk_probs`); None uses all K (slow and memory hungry for
            K in the hundreds).
        backend, device: see :func:`crf_marginals`.
        out_size: ``(H_out, W_out)`` of the labels; the marginals are resampled
            bilinearly (half-pixel centres) before the argmax. Default ``(H, W)``.

    Returns:
        int64 ``out_size`` label ids in ``[0, K)`` (original ids even when
        ``max_labels`` reduced the label set).
    """
    probs = np.asarray(probs)
    class_ids: np.ndarray | None = None
    if max_labels is not None and probs.ndim == 3 and probs.shape[0] > max_labels:
        probs, class_ids = topk_probs(probs, max_labels)
    q = _pixel_major(image, probs, params, backend, device)
    if out_size is None or tuple(out_size) == tuple(q.shape[:2]):
        labels = q.argmax(-1)
    else:
        labels = resampled_argmax(q, tuple(out_size))
    labels = labels.cpu().numpy()
    return class_ids[labels] if class_ids is not None else labels


def prepare_crf(
    image: np.ndarray,
    scores: torch.Tensor,
    patch: int,
    in_size: tuple[int, int] | None = None,
    side: int | None = CRF_SIDE,
    max_labels: int = 32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CRF inputs at the working size, straight from patch-grid scores.

    The probabilities are sampled at the working size directly
    (:func:`segeig.resample.pixel_probs`), never at the full size, so a 12 MP
    photo costs what its working-size copy costs.

    Args:
        image: uint8 ``H×W×3`` RGB at the size labels are wanted at.
        scores: ``S×h×w`` float patch scores of that image.
        patch: patch size of the grid.
        in_size: ``(H_in, W_in)`` of the network input the grid belongs to;
            default ``(H, W)``.
        side: working short side (:func:`crf_working_size`); None: full size.
        max_labels: most segments kept (:func:`~segeig.resample.topk_probs` on the grid).

    Returns:
        ``(small_image, probs, ids)``: uint8 ``h×w×3``, float32 ``M×h×w``
        summing to 1 over M, int64 ``(M,)`` segment id of each plane.
    """
    size = tuple(image.shape[:2])
    work = crf_working_size(size, side)
    probs, ids = pixel_probs(scores, patch, tuple(in_size or size), work, max_labels)
    return shrink_image(image, work), probs, ids


def crf_from_scores(
    image: np.ndarray,
    scores: torch.Tensor,
    patch: int,
    params: CRFParams | None = None,
    backend: str = "auto",
    device: object = None,
    side: int | None = CRF_SIDE,
    max_labels: int = 32,
    in_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """CRF-refined segment ids of ``image`` from its patch scores, via the working size.

    ``in_size``: ``(H_in, W_in)`` of the network input the scores' grid belongs
    to (default: the image's size), e.g. the image at the model's working
    resolution.

    :func:`prepare_crf`, then :func:`crf_labels` with the marginals resampled
    bilinearly to the image's size.

    Returns:
        int64 ``H×W`` segment ids in ``[0, S)``.
    """
    small, probs, ids = prepare_crf(image, scores, patch, in_size=in_size, side=side,
                                    max_labels=max_labels)
    labels = crf_labels(small, probs, params, max_labels=None, backend=backend, device=device,
                        out_size=image.shape[:2])
    return ids[labels]
