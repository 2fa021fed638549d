"""Configuration dataclasses, the constants the command line needs, and their
JSON form (:func:`to_dict` / :func:`from_dict`).

This module imports no torch: ``segeig --help`` reads its constants.

Every number that defines a model lives here, so that a checkpoint can store the
whole configuration as JSON and rebuild the model from the file alone. Defaults
are the reference paper's (Deng & Luo, ICCV 2023) unless a comment says why not.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

HeadKind = Literal["transformer", "mlp"]
KernelFeatures = Literal["final", "keys"]

T = TypeVar("T")

#: Default backbone: DINO ViT-S/16 through timm.
DEFAULT_BACKBONE = "vit_small_patch16_224.dino"

#: Label value meaning "not labelled": ignored by scores, drawn black in pictures.
IGNORE_INDEX = 255

#: Images with a side above this are processed in sliding windows by default.
DEFAULT_MAX_SIDE = 1024

#: Centroid distances: ``euclidean`` (the reference code's k-means) or ``cosine``
#: (spherical k-means on L2-normalised features).
CENTROID_METRICS = ("euclidean", "cosine")

#: Dataset layouts segeig reads (``segeig.data.DATASETS``); ``folder`` has no labels.
DATASET_NAMES = ("ade20k", "pascal_context", "cityscapes", "cocostuff27", "cityscapes27",
                 "potsdam3", "custom", "folder")
#: The labelled ones, which ``segeig evaluate`` scores.
LABELLED_DATASETS = ("pascal_context", "ade20k", "cityscapes", "cocostuff27", "cityscapes27",
                     "potsdam3", "custom")
#: Evaluation protocols (docs/evaluation.md, "Protocols"; ``segeig.evaluation.protocols``).
PROTOCOL_NAMES = ("stego", "full", "native")
#: Each labelled dataset's default protocol: the rows the papers report (Pascal
#: Context, Cityscapes and the unsupervised benchmarks under stego, ADE20K under
#: full); custom sets at their own resolution. ``segeig evaluate --help`` prints it.
DEFAULT_PROTOCOL = {"pascal_context": "stego", "cityscapes": "stego", "ade20k": "full",
                    "cocostuff27": "stego", "cityscapes27": "stego", "potsdam3": "stego",
                    "custom": "native"}


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


@dataclass(frozen=True)
class WorkingResolution:
    """The one scale a head is trained at and used at.

    Every image is resized so its short side is ``short`` pixels, unless that
    would make its long side exceed ``max_long`` (then the long side is
    ``max_long``); training draws its random rescale *around* this size,
    and the centroid passes, prediction, ``segment``, the demo and
    evaluation all run at it, returning results at the original size.

    Attributes:
        short: short side in pixels; 0 means "each image at its own size"
            (checkpoints trained without a working resolution).
        max_long: cap on the long side in pixels (0: no cap).
    """

    short: int = 0
    max_long: int = 0

    def __post_init__(self) -> None:
        for name in ("short", "max_long"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 16384:
                raise ValueError(f"working resolution {name} must be an int in [0, 16384], "
                                 f"got {value!r}")

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """``(H', W')`` an ``height×width`` image is processed at (aspect ratio kept)."""
        if self.short <= 0:
            return height, width
        scale = self.short / min(height, width)
        if self.max_long > 0:
            scale = min(scale, self.max_long / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def describe(self) -> str:
        """``"short side 320 px (long side ≤ 640 px)"`` or ``"each image at its own size"``."""
        if self.short <= 0:
            return "each image at its own size"
        cap = f" (long side ≤ {self.max_long} px)" if self.max_long else ""
        return f"short side {self.short} px{cap}"


def default_max_long(short: int) -> int:
    """Long-side cap that goes with a short side: twice it (Cityscapes' 2:1 frames
    fit whole; a panorama is shrunk until its long side fits, rather than
    processed at 10× the pixels the head was trained on)."""
    return 2 * short if short > 0 else 0


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


@dataclass(frozen=True)
class PropagationConfig:
    """How per-patch probabilities are propagated over each image's graph.

    Applies to the per-patch methods (``eigen``, ``eigen+kmeans``, ``kmeans``),
    not to ``spectral``, which already clusters each image's own graph.

    Attributes:
        steps: averaging steps (0 turns propagation off: the plain argmax).
        weight: w in (0, 1], the share of each step taken from the neighbours.
        pixel_passes: ``(k, w)`` kNN passes of the colour/position graph, as
            ``KernelConfig.pixel_passes`` (a checkpoint uses its training kernel's).
    """

    steps: int = 5
    weight: float = 0.5
    pixel_passes: tuple[tuple[int, float], ...] = KernelConfig.pixel_passes

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"propagation steps must be an int ≥ 0, got {self.steps!r}")
        if not 0 < self.weight <= 1:
            raise ValueError(f"propagation weight must be in (0, 1], got {self.weight!r}")


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
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists on dumping."""
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a config dataclass (nested ones too) from :func:`to_dict` output.

    Fields typed as a dataclass are rebuilt recursively, and fields typed as a
    tuple get their JSON lists back as tuples (``pixel_passes``, ``scale``), so
    ``from_dict(type(c), json.loads(json.dumps(to_dict(c)))) == c``.

    Raises:
        ValueError: unknown keys (named), so a checkpoint written by a newer
            segeig fails clearly instead of silently dropping settings; or a
            value of the wrong type (``"8"`` for an int, ``true`` for a float,
            NaN, a value outside a ``Literal``), named as ``Class.field``.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        where = f"{cls.__name__}.{name}"
        problem = _type_problem(hints[name], value, where)
        if problem:
            raise ValueError(problem)
        kwargs[name] = _from_json(hints[name], value)
    return cls(**kwargs)


def _type_problem(hint: Any, value: Any, where: str) -> str | None:
    """Why JSON ``value`` does not fit the field type ``hint``, or None when it does.

    A config may come from an untrusted file (a checkpoint from the internet):
    a wrong type must fail here, with the field's name, not deep inside torch.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if dataclasses.is_dataclass(hint):
        return None if isinstance(value, Mapping) else f"{where} must be a JSON object"
    if origin is Literal:
        return None if value in args else f"{where} must be one of {list(args)}, got {value!r}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [_type_problem(a, value, where) for a in options]
        return None if any(p is None for p in problems) else problems[0]
    if hint is bool:
        return None if isinstance(value, bool) else f"{where} must be true or false, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{where} must be an integer, got {value!r}"
    if hint is float:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value))
        return None if ok else f"{where} must be a finite number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"{where} must be a string, got {value!r}"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return f"{where} must be a list, got {value!r}"
        if len(args) == 2 and args[1] is Ellipsis:
            items = [(args[0], v) for v in value]
        elif len(args) == len(value):
            items = list(zip(args, value, strict=True))
        else:
            return f"{where} must be a list of {len(args)} items, got {value!r}"
        for i, (item_hint, item) in enumerate(items):
            problem = _type_problem(item_hint, item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if origin is dict or hint is dict:
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        return None if ok else f"{where} must be a JSON object, got {value!r}"
    return None


def _from_json(hint: Any, value: Any) -> Any:
    """``value`` as parsed from JSON, turned back into the field type ``hint``."""
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value)
    if typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_from_json(args[0], v) for v in value)
        if args and len(args) == len(value):  # tuple[X, Y]
            return tuple(_from_json(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
