"""The segmentation model: frozen backbone + eigenfunction head + centroids.

One forward pass gives per-patch scores for a method:

* ``eigen`` — softmax(head logits / τ_min) over the K eigenfunctions,
  propagated over each image's colour/position graph
  (:func:`segeig.kernel.propagate`; ``propagation.steps = 0``: the plain logits
  / τ_min); argmax over K.
* ``eigen+kmeans`` — nearest k-means centroid of the head's hidden features
  (Euclidean, as the reference code, or cosine: the metric is stored with the
  centroids), its softmax propagated like ``eigen``'s.
* ``kmeans`` — the baseline: nearest k-means centroid of the raw final
  backbone features (no head needed), propagated likewise.
* ``spectral`` — the classic transductive baseline: exact per-image spectral
  clustering, segments labelled by their nearest global centroid
  (:mod:`segeig.spectral`; no head needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from segeig.backbone import Backbone, BackboneFeatures
from segeig.cluster import centroid_score_maps
from segeig.config import (
    CENTROID_METRICS,
    HeadConfig,
    KernelConfig,
    PropagationConfig,
    SpectralConfig,
)
from segeig.head import EigenHead
from segeig.kernel import pad_to_grid, propagate
from segeig.spectral import spectral_scores

Method = Literal["eigen", "eigen+kmeans", "kmeans", "spectral"]
METHODS: tuple[str, ...] = ("eigen", "eigen+kmeans", "kmeans", "spectral")
#: Methods that score patches against stored centroids.
CENTROID_METHODS: tuple[str, ...] = ("eigen+kmeans", "kmeans", "spectral")

#: Temperature turning centroid cosine similarities into probabilities (for the
#: CRF unary). Argmax predictions do not depend on it.
CENTROID_TEMPERATURE = 0.05

#: Smallest probability whose log a propagated score takes
#: (log 0 would be -inf and break the bilinear upsampling of scores).
PROBABILITY_FLOOR = 1e-30


@dataclass
class ModelOutput:
    """Patch-level outputs for one batch.

    Attributes:
        scores: ``B×S×h×w`` float32 scores; ``softmax(scores, dim=1)`` gives
            probabilities and ``argmax`` the segment ids (S = K for ``eigen``,
            number of centroids otherwise).
        logits: ``B×K×h×w`` raw head logits, or ``None`` without a head.
        features: the backbone features the scores came from.
    """

    scores: torch.Tensor
    logits: torch.Tensor | None
    features: BackboneFeatures


class SegEigModel(nn.Module):
    """Backbone + optional head + optional centroids.

    Args:
        backbone: frozen feature extractor.
        head: eigenfunction head, or ``None`` for the ``kmeans`` baseline.
        centroids: method name → ``S×C`` centroid tensor (``eigen+kmeans``
            in the head's hidden space, ``kmeans`` and ``spectral`` in the
            backbone's final space).
        spectral: kernel and clustering settings of the ``spectral`` method.
        propagation: how the per-patch methods propagate over each image's graph
            (default :class:`~segeig.config.PropagationConfig`).
    """

    def __init__(
        self,
        backbone: Backbone,
        head: EigenHead | None = None,
        centroids: dict[str, torch.Tensor] | None = None,
        spectral: tuple[KernelConfig, SpectralConfig] | None = None,
        propagation: PropagationConfig | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spectral = spectral or (KernelConfig(), SpectralConfig())
        self.propagation = propagation or PropagationConfig()
        #: method → (metric, spread) of its centroids (see :meth:`set_centroids`).
        self.centroid_metrics: dict[str, tuple[str, float]] = {}
        for name, value in (centroids or {}).items():
            self.set_centroids(name, value)

    @staticmethod
    def _buffer_name(method: str) -> str:
        return "centroids_" + method.replace("+", "_")

    def set_centroids(self, method: str, centroids: torch.Tensor, metric: str = "cosine",
                      spread: float = 1.0) -> None:
        """Store ``S×C`` centroids for ``eigen+kmeans``, ``kmeans`` or ``spectral``.

        Args:
            metric: ``cosine`` or ``euclidean`` (how they were fitted, hence
                how patches are scored against them).
            spread: mean squared distance of the fitted tokens to their
                centroid (euclidean scores are divided by it).
        """
        if metric not in CENTROID_METRICS:
            raise ValueError(f"centroid metric must be one of {CENTROID_METRICS}, not {metric!r}")
        if not (isinstance(spread, (int, float)) and math.isfinite(spread) and spread > 0):
            raise ValueError(f"centroid spread must be a positive number, got {spread!r}")
        if method not in CENTROID_METHODS:
            raise ValueError(f"centroids belong to one of {CENTROID_METHODS}, not {method!r}")
        if method == "eigen+kmeans" and self.head is None:
            raise ValueError("'eigen+kmeans' centroids need a head")
        expected = self.head.hidden_dim if method == "eigen+kmeans" else self.backbone.embed_dim
        if centroids.ndim != 2 or centroids.shape[1] != expected:
            raise ValueError(
                f"{method} centroids must be S×{expected}, got {tuple(centroids.shape)}"
            )
        ref = next(self.backbone.parameters())
        self.register_buffer(self._buffer_name(method), centroids.to(ref.device, torch.float32))
        self.centroid_metrics[method] = (metric, float(spread))

    def _centroid_scores(self, features: torch.Tensor, method: str) -> torch.Tensor:
        metric, spread = self.centroid_metrics.get(method, ("cosine", 1.0))
        scores = centroid_score_maps(features, self.centroids(method), metric, spread)
        # Euclidean scores carry their own temperature (segeig.cluster).
        return scores if metric == "euclidean" else scores / CENTROID_TEMPERATURE

    def centroids(self, method: str) -> torch.Tensor | None:
        """The stored centroids for ``method`` or ``None``."""
        return getattr(self, self._buffer_name(method), None)

    @property
    def methods(self) -> list[str]:
        """Methods this model can run."""
        found = ["eigen"] if self.head is not None else []
        return found + [m for m in CENTROID_METHODS if self.centroids(m) is not None]

    @property
    def default_method(self) -> str:
        """``eigen`` when a head exists, else the first centroid method stored."""
        return self.methods[0]

    def num_segments(self, method: str) -> int:
        """Number of score channels S for ``method``."""
        if method == "eigen":
            return self.head.k
        return self.centroids(method).shape[0]

    def forward(self, images: torch.Tensor, method: str | None = None) -> ModelOutput:
        """Score every patch.

        Args:
            images: ``B×3×H×W`` float RGB in [0, 1].
            method: one of :attr:`methods` (default :attr:`default_method`).

        Returns:
            :class:`ModelOutput` at patch resolution ``h×w = ceil(H/p)×ceil(W/p)``.
        """
        method = method or self.default_method
        if method not in self.methods:
            raise ValueError(f"method {method!r} is not available; this model has {self.methods}")
        features = self.backbone(images)
        if method == "kmeans":
            scores = self._centroid_scores(features.layers[2], method)
            return ModelOutput(self._propagated(scores, images), None, features)
        if method == "spectral":
            # Exact eigenvectors in float32 even under autocast (bf16 similarities
            # would reorder near-tied neighbours and eigenvectors).
            with torch.autocast(images.device.type, enabled=False):
                padded = pad_to_grid(images.float(), features.kernel.shape[-2:],
                                     self.backbone.patch_size, tuple(self.backbone.mean))
                scores = spectral_scores(features.kernel.float(), features.layers[2].float(),
                                         padded, self.centroids(method), *self.spectral)
            return ModelOutput(scores / CENTROID_TEMPERATURE, None, features)
        logits, hidden = self.head(features.stacked)
        if method == "eigen":
            scores = logits.float() / self.head.config.tau_min
        else:
            scores = self._centroid_scores(hidden, method)
        return ModelOutput(self._propagated(scores, images), logits, features)

    def _propagated(self, scores: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``B×S×h×w`` scores whose softmax was propagated over each image's graph."""
        if not self.propagation.steps:
            return scores
        probs = propagate(torch.softmax(scores.float(), dim=1), images, self.propagation,
                          self.backbone.patch_size, tuple(self.backbone.mean))
        # log keeps the contract softmax(scores) == probabilities.
        return probs.clamp_min(PROBABILITY_FLOOR).log()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; use 'cpu'")
    return device


def build_model(backbone: Backbone, head_config: HeadConfig | None) -> SegEigModel:
    """A model with a freshly initialised head sized for ``backbone``."""
    head = None
    if head_config is not None:
        head = EigenHead(backbone.feature_dim, head_config, embed_dim=backbone.embed_dim)
    return SegEigModel(backbone, head)
