"""Configuration dataclasses.

Every number that defines a model lives here, so that a checkpoint can store the
whole configuration as JSON and rebuild the model from the file alone. Defaults
are the reference paper's (Deng & Luo, ICCV 2023) unless a comment says why not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

HeadKind = Literal["transformer", "mlp"]
KernelFeatures = Literal["final", "keys"]

#: Default backbone: DINO ViT-S/16 through timm.
DEFAULT_BACKBONE = "vit_small_patch16_224.dino"


@dataclass
class BackboneConfig:
    """Which frozen ViT produces the patch features.

    Attributes:
        name: timm model name, optionally with a pretrained tag
            (``vit_small_patch16_224.dino``).
        weights: ``"hub"`` (timm's own loader, downloads on first use),
            ``"random"`` (tests and smoke runs only), a path to a local
            checkpoint file in any of timm's forms, or ``"embedded"`` (set by
            checkpoints that carry the backbone's weights themselves).
        arch_overrides: keyword arguments passed to ``timm.create_model`` to
            change the architecture (tests use tiny ViTs this way). Stored in
            checkpoints so the same network is rebuilt.
        kernel_features: ``"final"`` uses the final normed tokens for the graph
            kernel (the paper); ``"keys"`` uses the last block's attention keys
            (a DINO-specific alternative known to give crisper affinities).
    """

    name: str = DEFAULT_BACKBONE
    weights: str = "hub"
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    kernel_features: KernelFeatures = "final"


@dataclass
class HeadConfig:
    """The eigenfunction head ψ.

    Attributes:
        kind: ``"transformer"`` (paper: 2 pre-norm blocks at width 3·D) or
            ``"mlp"`` (light: LayerNorm → Linear → GELU → Linear → orthogonal
            Linear).
        k: number of eigenfunctions K (output channels).
        depth: transformer blocks (transformer head only).
        num_heads: attention heads (transformer head only).
        mlp_hidden: hidden width of the transformer blocks' MLP (576 in the paper).
        hidden_dim: width of the MLP head's hidden layers; ``None`` means the
            backbone embedding dim D.
        tau_max: Gumbel-softmax temperature at the start of training.
        tau_min: temperature at the end of training and at inference.
    """

    kind: HeadKind = "mlp"
    k: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_hidden: int = 576
    hidden_dim: int | None = None
    tau_max: float = 1.0
    tau_min: float = 0.3


@dataclass
class KernelConfig:
    """The graph kernel κ = Â + α·Ã over all patches of a mini-batch.

    Attributes:
        k_feat: neighbours kept per row of the cross-image feature graph.
        pixel_passes: ``(k, w)`` pairs for the per-image colour/position graph;
            each pass is a binary kNN over ``[r, g, b, w·x, w·y]``.
        alpha: weight of the pixel graph.
        chunk_size: rows of the similarity matrix computed at once; bounds the
            extra memory at ``chunk_size × N`` floats.
    """

    k_feat: int = 256
    pixel_passes: tuple[tuple[int, float], ...] = ((10, 2.0), (5, 0.1))
    alpha: float = 0.3
    chunk_size: int = 1024


@dataclass
class SpectralConfig:
    """Per-image spectral clustering settings.

    Attributes:
        n_eigenvectors: top eigenvectors of each image's kernel used as the
            embedding (the first, ∝ √degree, is kept: rows are normalised).
        segments_per_image: k-means clusters of the embedding rows per image.
        k_feat: feature-graph neighbours within one image (the training
            kernel's 256 is over a batch of 16 images).
        kmeans_iters: Lloyd iterations for the per-image clustering.
    """

    n_eigenvectors: int = 8
    segments_per_image: int = 8
    k_feat: int = 64
    kmeans_iters: int = 20


@dataclass
class ObjectiveConfig:
    """NeuralEF objective.

    Attributes:
        beta: weight of the orthogonality penalty at K = ``beta_ref_k``; the
            effective weight is ``beta * beta_ref_k / K`` (scaled ∝ 1/K).
        beta_ref_k: the K at which ``beta`` is the paper's value.
        t: squared scale of the normalised eigenfunction columns.
    """

    beta: float = 0.08
    beta_ref_k: int = 256
    t: float = 0.01

    def beta_for(self, k: int) -> float:
        """Effective orthogonality weight for ``k`` eigenfunctions."""
        return self.beta * self.beta_ref_k / k


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output.

    Unknown keys raise ``ValueError`` naming them, so a checkpoint written by a
    newer segeig fails clearly instead of silently dropping settings.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
    kwargs = dict(data)
    if cls is KernelConfig and "pixel_passes" in kwargs:
        kwargs["pixel_passes"] = tuple((int(k), float(w)) for k, w in kwargs["pixel_passes"])
    return cls(**kwargs)
