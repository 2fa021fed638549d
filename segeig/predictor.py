"""Inference API: ``segeig.load(path) → Segmenter``; numpy in, numpy out.

A :class:`Segmenter` brings each image to the checkpoint's working resolution
(the scale its head was trained at; :class:`segeig.config.WorkingResolution`),
scores patches with one forward pass, samples the scores bilinearly at every
pixel of the original image and takes the argmax. Large images are processed
in sliding windows whose scores are averaged on the patch grid, and the
full-resolution argmax (:func:`segeig.resample.pixel_argmax`) only resamples
the segments that can win each cell, in bands, so time and memory stay
bounded by the window size and the number of competing segments.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from segeig.checkpoint import ClassMap, checkpoint_resolution, class_map_of, load_model
from segeig.config import DEFAULT_MAX_SIDE, WorkingResolution
from segeig.crf import CRF_SIDE, crf_from_scores, resolve_backend
from segeig.model import ModelOutput, SegEigModel, resolve_device
from segeig.resample import pixel_argmax, pixel_probs, pixel_scores
from segeig.transforms import to_tensor, to_working_resolution

logger = logging.getLogger(__name__)


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)`` with windows of ``window`` (last one flush)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


class Segmenter:
    """Segment images with a trained segeig model.

    Args:
        model: the model (moved to ``device``).
        config: the checkpoint's JSON description.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        amp: run the backbone in bfloat16 autocast on CUDA.
        resolution: the working resolution; default: the checkpoint's
            (:func:`segeig.checkpoint.checkpoint_resolution`).
        crf_backend: dense CRF backend for ``crf=True``: ``auto`` (resolves
            to ``torch``, which runs on ``device``), ``torch``, or ``densecrf``
            (pydensecrf, CPU only, the optional ``segeig[densecrf]`` extra).
            Also an attribute, as is ``crf_side``: the short side the CRF
            runs at — the working resolution's, else
            :data:`segeig.crf.CRF_SIDE` (None: full size).

    Typical use::

        seg = segeig.load("runs/ade/checkpoint.safetensors")
        labels = seg.predict(image)            # H×W int32
        probs = seg.predict_proba(image)        # S×H×W float32, sums to 1
        classes = seg.predict(image, classes=True)  # labelled checkpoints: class indices

    Raises:
        CheckpointError: the config's ``classes`` section is malformed or does
            not fit the model.
    """

    def __init__(
        self,
        model: SegEigModel,
        config: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        amp: bool = True,
        resolution: WorkingResolution | None = None,
        crf_backend: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = config or {}
        self.amp = amp and self.device.type == "cuda"
        resolve_backend(crf_backend, self.device)  # refuse a backend that cannot run, now
        self.crf_backend = crf_backend
        self.resolution = resolution or checkpoint_resolution(self.config)
        # The CRF runs at the working resolution too (its kernels are scaled
        # to the size they run at); without one, at its reference size.
        self.crf_side: int | None = self.resolution.short or CRF_SIDE
        self.class_map: ClassMap | None = class_map_of(
            self.config, {m: model.num_segments(m) for m in model.methods})

    # -- description -----------------------------------------------------
    @property
    def methods(self) -> list[str]:
        """Methods this checkpoint supports (``eigen``, ``eigen+kmeans``, ``kmeans``)."""
        return self.model.methods

    @property
    def patch_size(self) -> int:
        return self.model.backbone.patch_size

    def num_segments(self, method: str | None = None) -> int:
        """Number of segment ids S the method predicts."""
        return self.model.num_segments(method or self.model.default_method)

    @property
    def num_eigenfunctions(self) -> int | None:
        """K, the eigenfunctions the head outputs; None without a head (k-means baseline)."""
        return None if self.model.head is None else self.model.head.k

    @property
    def class_names(self) -> list[str] | None:
        """Class names of a labelled checkpoint (class index i is ``class_names[i]``), else None."""
        return None if self.class_map is None else list(self.class_map.names)

    @property
    def class_palette(self) -> np.ndarray | None:
        """uint8 ``C×3`` RGB class colours of a labelled checkpoint, else None."""
        return None if self.class_map is None else self.class_map.palette.copy()

    def to_classes(self, labels: np.ndarray, method: str | None = None) -> np.ndarray:
        """Cluster ids of ``method`` → uint8 class indices (255 = unassigned), same shape.

        Raises:
            ValueError: the checkpoint has no class map, or none for ``method``.
        """
        if self.class_map is None:
            raise ValueError("this checkpoint has no class map; label it first with "
                             "`segeig label` (segeig.evaluation.fit_class_map)")
        return self.class_map.apply(labels, method or self.model.default_method)

    @property
    def eigenvalues(self) -> list[float] | None:
        """Each output's eigenvalue, measured after training (descending, in output
        order), or None for checkpoints that did not measure them."""
        # Before segeig 0.2 (no recorded "resolution") "eigenvalues" held
        # training's running estimates, in training order: not a measurement.
        if "resolution" not in self.config:
            return None
        return self.config.get("eigenvalues")

    # -- working resolution ----------------------------------------------
    def working_resolution(self, resolution: int | None = None) -> WorkingResolution:
        """The checkpoint's working resolution, or an override.

        Args:
            resolution: ``None``: the checkpoint's; ``0``: each image at its
                own size; ``N``: short side N, long side capped in the
                checkpoint's proportion (twice N by default).
        """
        if resolution is None:
            return self.resolution
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 0:
            raise ValueError(f"resolution must be an int ≥ 0, got {resolution!r}")
        if resolution == 0:
            return WorkingResolution()
        own = self.resolution
        ratio = own.max_long / own.short if own.short and own.max_long else 2.0
        return WorkingResolution(resolution, round(resolution * ratio))

    def working_image(self, image: np.ndarray, resolution: int | None = None) -> np.ndarray:
        """``image`` (``H×W×3`` uint8) at the working resolution (itself if already there)."""
        return to_working_resolution(_check_image(image), self.working_resolution(resolution))

    # -- numpy API: H×W×3 uint8 in, numpy out ----------------------------
    def predict(self, image: np.ndarray, method: str | None = None, crf: bool = False,
                resolution: int | None = None, classes: bool = False,
                **window: Any) -> np.ndarray:
        """Segment one image.

        Args:
            image: ``H×W×3`` uint8 RGB (any size ≥ 1×1).
            method: ``eigen`` (default), ``eigen+kmeans`` or ``kmeans``.
            crf: refine with a dense CRF (:meth:`labels_from_scores`), on the
                backend chosen at construction (``crf_backend``).
            resolution: override the working resolution (see
                :meth:`working_resolution`; ``0``: the image's own size).
            classes: return class indices through the checkpoint's class map
                (:meth:`to_classes`) instead of cluster ids.
            **window: ``window``, ``stride``, ``max_side`` of :meth:`patch_scores`
                (in pixels of the image at the working resolution).

        Returns:
            ``H×W`` int32 segment ids in ``[0, S)`` at the input's size; with
            ``classes``, class indices into :attr:`class_names`, 255 where a
            cluster has no class.
        """
        image = _check_image(image)
        if classes:  # fail before the forward pass when there is no map
            self.to_classes(np.zeros(0, np.int64), method)
        small, scores = self._working_scores(image, method, resolution, window)
        labels = self.labels_from_scores(image, scores, crf, in_size=small.shape[:2])
        return self.to_classes(labels, method).astype(np.int32) if classes else labels

    def predict_proba(self, image: np.ndarray, method: str | None = None,
                      resolution: int | None = None, **window: Any) -> np.ndarray:
        """``S×H×W`` float32 probabilities (softmax of the scores; sums to 1 per pixel)."""
        small, scores = self._working_scores(image, method, resolution, window)
        full = pixel_scores(scores, self.patch_size, small.shape[:2], image.shape[:2])
        return torch.softmax(full, dim=0).cpu().numpy()

    def eigenfunctions(self, image: np.ndarray, resolution: int | None = None) -> np.ndarray:
        """Raw eigenfunction values (head logits) on the patch grid, ``K×h×w`` float32.

        The image is brought to the working resolution first. Channel i is
        output i of the head; checkpoints trained by segeig ≥ 0.2 store the
        outputs in decreasing order of their eigenvalue as measured after
        training (:attr:`eigenvalues`); older ones keep training order.
        """
        if self.num_eigenfunctions is None:
            raise ValueError("this checkpoint has no eigenfunction head (kmeans baseline)")
        return self.patch_maps(self.working_image(image, resolution), "eigen")[1]

    def crf_inputs(self, image: np.ndarray, method: str | None = None,
                   max_labels: int = 32, resolution: int | None = None,
                   **window: Any) -> tuple[np.ndarray, np.ndarray]:
        """Full-resolution probabilities of the most relevant segments, for a CRF.

        The M ≤ ``max_labels`` segments are chosen on the patch grid (those that
        win a patch first, then by peak probability), and only their scores are
        upsampled, so memory is M·H·W rather than S·H·W. Softmax over the kept
        scores equals the full softmax renormalised over them.

        Returns:
            ``(probs M×H×W float32 C-contiguous, segment ids M int64)``;
            ``ids[crf_labels(image, probs, max_labels=None)]`` gives segment ids.
        """
        small, scores = self._working_scores(image, method, resolution, window)
        return pixel_probs(scores, self.patch_size, small.shape[:2], image.shape[:2],
                           max_labels=max_labels)

    def patch_maps(self, image: np.ndarray, method: str | None = None
                   ) -> tuple[torch.Tensor, np.ndarray | None]:
        """One forward pass over the whole image: its patch scores and eigenfunctions.

        For callers that show more than labels (the web demo draws the
        eigenfunctions of the pass that segmented the image); turn the scores
        into labels with :meth:`labels_from_scores`. The image is used as
        given: bring it to the working resolution first (:meth:`working_image`).
        No sliding window.

        Returns:
            ``(scores, eigenfunctions)``: ``S×h×w`` float32 patch scores (on the
            device), and ``K×h×w`` float32 eigenfunction values (as
            :meth:`eigenfunctions`), or None when the method runs no head
            (``kmeans``).
        """
        out = self.forward(to_tensor(_check_image(image))[None], method)
        eigen = None if out.logits is None else out.logits[0].float().cpu().numpy()
        return out.scores[0], eigen

    def labels_from_scores(self, image: np.ndarray, scores: torch.Tensor,
                           crf: bool = False, in_size: tuple[int, int] | None = None
                           ) -> np.ndarray:
        """Pixel segment ids of ``image`` from its patch scores.

        Args:
            image: ``H×W×3`` uint8 RGB to label (the CRF reads its colours).
            scores: ``S×h×w`` float patch scores (:meth:`patch_scores`) of
                ``image`` resized to ``in_size``.
            crf: refine with a dense CRF over the 32 most relevant segments, run
                at ``crf_side`` (marginals resampled to the image's size).
            in_size: ``(H', W')`` of the network input the scores came from
                (default: the image's own size).

        Returns:
            ``H×W`` int32 segment ids in ``[0, S)``.
        """
        in_size = tuple(in_size or image.shape[:2])
        if crf:
            return crf_from_scores(image, scores, self.patch_size, backend=self.crf_backend,
                                   device=self.device, side=self.crf_side,
                                   in_size=in_size).astype(np.int32)
        labels = pixel_argmax(scores, self.patch_size, in_size, image.shape[:2])
        return labels.to(torch.int32).cpu().numpy()

    def _working_scores(self, image: np.ndarray, method: str | None, resolution: int | None,
                        window: dict[str, Any]) -> tuple[np.ndarray, torch.Tensor]:
        """The shared opening of the numpy API: ``image`` at the working
        resolution (``H'×W'×3`` uint8) and its ``S×h×w`` float32 patch scores."""
        small = self.working_image(image, resolution)
        return small, self.patch_scores(small, method, **window)

    # -- tensor API: patch-grid scores on the device --------------------
    @torch.no_grad()
    def forward(self, images: torch.Tensor, method: str | None = None) -> ModelOutput:
        """Patch-resolution outputs for a batch.

        Args:
            images: ``B×3×H×W`` float RGB in [0, 1] (any device).
            method: scoring method (default: the model's default).

        Returns:
            :class:`ModelOutput`; ``scores`` is ``B×S×ceil(H/p)×ceil(W/p)``.
        """
        images = images.to(self.device, torch.float32)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            out = self.model(images, method)
        out.scores = out.scores.float()
        return out

    @torch.no_grad()
    def patch_scores(
        self,
        image: np.ndarray,
        method: str | None = None,
        window: int | None = None,
        stride: int | None = None,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ) -> torch.Tensor:
        """Scores on the patch grid of one image, sliding-window when large.

        Args:
            image: ``H×W×3`` uint8 RGB.
            method: scoring method.
            window, stride: sliding-window size and step in pixels (rounded
                down to multiples of the patch size). Default: one pass unless
                a side exceeds ``max_side``, then ``window = max_side`` and
                ``stride = 2/3`` of it.
            max_side: see above; ``None`` never slides by default.

        Returns:
            ``S×ceil(H/p)×ceil(W/p)`` float32 scores on ``self.device``; where
            windows overlap the scores are averaged.
        """
        height, width = image.shape[:2]
        p = self.patch_size
        if window is None and max_side is not None and max(height, width) > max_side:
            window = max_side
        if window is None:
            return self.forward(to_tensor(image)[None], method).scores[0]
        window = max(p, window // p * p)
        stride = max(p, (stride or window * 2 // 3) // p * p)
        gh, gw = math.ceil(height / p), math.ceil(width / p)
        total: torch.Tensor | None = None
        count = torch.zeros(gh, gw, device=self.device)
        # Windows are laid out on the patch grid (start, size and stride in
        # patches) so window patches coincide with image patches and the last
        # window ends flush with the last, possibly partial, patch row/column.
        # Laying them out in pixels and snapping starts down would leave that
        # last row/column uncovered whenever H or W is not a multiple of p.
        win_g, stride_g = window // p, stride // p
        for i in _window_starts(gh, win_g, stride_g):
            for j in _window_starts(gw, win_g, stride_g):
                # Converted window by window: a float copy of a whole large image
                # would cost 12 bytes per pixel (1.4 GB at 121 MP).
                crop = to_tensor(image[i * p : (i + win_g) * p, j * p : (j + win_g) * p])
                scores = self.forward(crop[None], method).scores[0]
                if total is None:
                    total = torch.zeros(scores.shape[0], gh, gw, device=self.device)
                total[:, i : i + scores.shape[1], j : j + scores.shape[2]] += scores
                count[i : i + scores.shape[1], j : j + scores.shape[2]] += 1
        return total / count.clamp_min(1)



def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an H×W×3 uint8 RGB array, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8 (values 0..255), got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")
    return image


def load(
    path: str | os.PathLike,
    device: str | torch.device = "auto",
    backbone_weights: str | None = None,
    amp: bool = True,
    crf_backend: str = "auto",
    propagation_steps: int | None = None,
) -> Segmenter:
    """Load a segeig checkpoint for inference.

    Args:
        path: ``checkpoint.safetensors`` or the directory holding it.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        backbone_weights: override the backbone weight source recorded in the
            checkpoint (``hub``, a local file path, or ``random``).
        amp: bfloat16 autocast on CUDA.
        crf_backend: see :class:`Segmenter`.
        propagation_steps: steps of propagation of the per-patch methods'
            probabilities (``eigen``, ``eigen+kmeans``, ``kmeans``) over each
            image's colour/position graph (:func:`segeig.kernel.propagate`);
            ``0`` turns it off (the plain argmax); default: 5.

    Returns:
        A ready :class:`Segmenter`.
    """
    model, config = load_model(path, device="cpu", backbone_weights=backbone_weights)
    if propagation_steps is not None:
        model.propagation = replace(model.propagation, steps=propagation_steps)
    return Segmenter(model, config, device=device, amp=amp, crf_backend=crf_backend)
