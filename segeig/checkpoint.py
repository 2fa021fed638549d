"""Self-describing checkpoints: one ``.safetensors`` file, no pickle.

The tensors are the head's weights (``head.*``), any k-means centroids
(``centroids.<method>``) and, when the backbone has no other source (random
init), the backbone's weights (``backbone.*``). The safetensors metadata holds
one JSON document under the key ``"segeig"``:

.. code-block:: json

    {"format": "segeig", "format_version": 1, "segeig_version": "0.1.0",
     "backbone": {"name": ..., "weights": "hub|<path>|embedded", "arch_overrides": {},
                  "kernel_features": "final", "embed_dim": 384, "patch_size": 16,
                  "layers": [0, 6, 11], "mean": [...], "std": [...]},
     "head": {"kind": "mlp", "k": 256, ...} | null,
     "methods": ["eigen", "eigen+kmeans"],
     "resolution": {"short": 320, "max_long": 640},
     "centroid_metrics": {"eigen+kmeans": {"metric": "euclidean", "spread": 1.7}},
     "kernel": {...}, "objective": {...}, "training": {...},
     "classes": {...}}

``resolution`` is the working resolution the head was trained at and must be
used at (:func:`checkpoint_resolution` derives it for checkpoints written
before it was recorded); ``centroid_metrics`` says how each centroid set is
scored (absent: cosine, as every checkpoint before it).

Loading rebuilds everything from the file alone; :func:`read_config` reads the
JSON without touching tensors (cheap, for ``segeig info``). The optional
``classes`` section (:class:`ClassMap`, written by ``segeig label`` through
:func:`save_class_map`) names the clusters: per method, the class of every
cluster, with the class names and colours.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from segeig import __version__
from segeig.atomic import write_safetensors
from segeig.backbone import (
    Backbone,
    check_arch_overrides,
    check_backbone_name,
    create_vit,
)
from segeig.config import (
    CENTROID_METRICS,
    BackboneConfig,
    HeadConfig,
    KernelConfig,
    SpectralConfig,
    WorkingResolution,
    default_max_long,
    from_dict,
    to_dict,
)
from segeig.head import EigenHead
from segeig.labelmaps import MAX_SEGMENTS
from segeig.model import CENTROID_METHODS, METHODS, SegEigModel

logger = logging.getLogger(__name__)

FORMAT = "segeig"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
#: Suffixes of a local backbone weights file a checkpoint may record.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit its own description."""


#: Class index of clusters that map to no class (pixel value in class label maps).
UNASSIGNED = 255
#: Most classes a class map may name: class indices stay below :data:`UNASSIGNED`.
MAX_CLASSES = 255
#: Longest class name accepted.
MAX_NAME_CHARS = 100


def _int(value: Any) -> bool:
    # JSON booleans are ints to Python; a class index is never true/false.
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_json(value: Any, depth: int = 0) -> bool:
    """Small JSON of printable strings: what a class map's ``source`` may hold (it is
    printed by ``segeig info`` and reports, so no control characters)."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= 1000 and value.isprintable()
    if depth >= 3:
        return False
    if isinstance(value, list):
        return len(value) <= 100 and all(_plain_json(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return len(value) <= 100 and all(isinstance(k, str) and _plain_json(k, depth + 1)
                                         and _plain_json(v, depth + 1)
                                         for k, v in value.items())
    return False


@dataclass(eq=False)
class ClassMap:
    """Cluster → class maps of a labelled checkpoint (its JSON ``"classes"`` section).

    JSON form (:meth:`to_dict`, read back with :meth:`from_dict`)::

        {"names": ["sky", "road", ...],            C class names, in class-index order
         "palette": [[70, 130, 180], ...],          C colours, RGB 0..255
         "maps": {"eigen": [1, 255, 0, ...]},       per method, S entries: class or 255
         "source": {"kind": "dataset", ...}}        how the maps were made

    Attributes:
        names: the C class names, ``1 <= C <= 255``; class index i is ``names[i]``.
        palette: uint8 ``C×3`` RGB colour of each class.
        maps: method → uint8 ``(S,)`` class index of every cluster id, or
            :data:`UNASSIGNED` for clusters that map to no class. Several
            clusters may share a class.
        source: JSON-ready description of how the maps were fitted (dataset,
            split, matching, scores) or named (a names file).

    Raises:
        CheckpointError: on construction, when any part is malformed (types,
            lengths, ranges); the message says which.
    """

    names: list[str]
    palette: np.ndarray
    maps: dict[str, np.ndarray]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = self.names
        if not isinstance(names, Sequence) or isinstance(names, str) or not names:
            raise CheckpointError("class map: 'names' must be a non-empty list of strings")
        if len(names) > MAX_CLASSES:
            raise CheckpointError(f"class map: {len(names)} classes, at most {MAX_CLASSES}")
        for name in names:
            if (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS
                    or not name.isprintable()):
                raise CheckpointError(f"class map: class name {name!r} must be a printable, "
                                      f"non-blank string of at most {MAX_NAME_CHARS} characters")
        self.names = list(names)
        n = len(names)
        palette = np.asarray(self.palette)
        if (palette.shape != (n, 3) or not np.issubdtype(palette.dtype, np.integer)
                or palette.min() < 0 or palette.max() > 255):
            raise CheckpointError(f"class map: 'palette' must be {n} [r, g, b] integer triples "
                                  "in 0..255, one per class")
        self.palette = palette.astype(np.uint8)
        if not isinstance(self.maps, Mapping) or not self.maps:
            raise CheckpointError("class map: 'maps' must map at least one method to a list")
        maps = {}
        for method, table in self.maps.items():
            table = np.asarray(table)
            if (not isinstance(method, str) or table.ndim != 1 or not table.size
                    or not np.issubdtype(table.dtype, np.integer)):
                raise CheckpointError(f"class map of {method!r}: must be a non-empty list of "
                                      "integer class indices, one per cluster")
            bad = table[((table < 0) | (table >= n)) & (table != UNASSIGNED)]
            if bad.size:
                raise CheckpointError(f"class map of {method!r}: class index {int(bad[0])} is "
                                      f"outside 0..{n - 1} and is not {UNASSIGNED} (unassigned)")
            maps[method] = table.astype(np.uint8)
        self.maps = maps
        if not isinstance(self.source, Mapping) or not _plain_json(self.source):
            raise CheckpointError("class map: 'source' must be a JSON object of numbers and "
                                  "short printable strings")

    @classmethod
    def from_dict(cls, section: Any) -> ClassMap:
        """Parse and validate a ``"classes"`` section (untrusted JSON)."""
        if not isinstance(section, Mapping):
            raise CheckpointError("class map: the 'classes' section must be a JSON object")
        unknown = set(section) - {"names", "palette", "maps", "source"}
        if unknown:
            raise CheckpointError(f"class map: unknown keys {sorted(unknown)}")
        palette = section.get("palette")
        maps = section.get("maps")
        # Check element types here: numpy would turn floats or strings into arrays silently.
        if not (isinstance(palette, list)
                and all(isinstance(c, list) and all(_int(v) for v in c) for c in palette)):
            raise CheckpointError("class map: 'palette' must be a list of [r, g, b] integers")
        if not isinstance(maps, Mapping) or not all(
                isinstance(t, list) and all(_int(v) for v in t) for t in maps.values()):
            raise CheckpointError("class map: 'maps' must map methods to lists of integers")
        return cls(section.get("names"), np.array(palette, dtype=np.int64).reshape(-1, 3)
                   if palette else np.zeros((0, 3), np.int64),
                   {m: np.array(t, dtype=np.int64) for m, t in maps.items()},
                   section.get("source", {}))

    def to_dict(self) -> dict[str, Any]:
        """The JSON section (plain lists and ints)."""
        return {"names": list(self.names), "palette": self.palette.tolist(),
                "maps": {m: t.tolist() for m, t in self.maps.items()},
                "source": dict(self.source)}

    @property
    def methods(self) -> list[str]:
        """Methods that have a map, in stored order."""
        return list(self.maps)

    def check_segments(self, segments: Mapping[str, int]) -> None:
        """Every map belongs to a method of the model and covers its ``S`` clusters.

        Args:
            segments: method → number of clusters S, for the methods the model has.
        """
        for method, table in self.maps.items():
            if method not in segments:
                raise CheckpointError(f"class map for method {method!r}, which the checkpoint "
                                      f"does not have (it has {', '.join(segments)})")
            if len(table) != segments[method]:
                raise CheckpointError(f"class map of {method!r} has {len(table)} entries but "
                                      f"the method predicts {segments[method]} clusters")

    def lookup(self, method: str) -> np.ndarray:
        """uint8 ``(S,)`` class index per cluster of ``method`` (:data:`UNASSIGNED` = none).

        Raises:
            ValueError: ``method`` has no map; the message names those that have one.
        """
        if method not in self.maps:
            raise ValueError(f"method {method!r} has no class map in this checkpoint; "
                             f"methods with one: {', '.join(self.maps)} (label {method!r} "
                             "with `segeig label`, or ask for raw cluster ids)")
        return self.maps[method]

    def apply(self, clusters: np.ndarray, method: str) -> np.ndarray:
        """Cluster ids of ``method`` (any shape, values in ``[0, S)``) → uint8 class indices."""
        return self.lookup(method)[np.asarray(clusters)]

    def label_palette(self) -> np.ndarray:
        """uint8 ``256×3`` colours of a class label PNG: the class colours, black for the rest."""
        colours = np.zeros((256, 3), dtype=np.uint8)
        colours[: len(self.names)] = self.palette
        return colours


def class_map_of(document: Mapping[str, Any], segments: Mapping[str, int]) -> ClassMap | None:
    """The checkpoint's :class:`ClassMap` (validated against the model), or None without one.

    Args:
        document: the checkpoint's JSON description.
        segments: method → number of clusters S, for every method the model has.

    Raises:
        CheckpointError: a malformed section or one that does not fit the model.
    """
    section = document.get("classes")
    if section is None:
        return None
    class_map = ClassMap.from_dict(section)
    class_map.check_segments(segments)
    return class_map


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Accept a checkpoint file or a training directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no segeig checkpoint at {path}. Train one with `segeig train ... --out DIR` "
            f"(it writes DIR/{CHECKPOINT_NAME}) or pass the file itself."
        )
    return path


def save_checkpoint(
    path: str | os.PathLike,
    model: SegEigModel,
    extra: dict[str, Any] | None = None,
    embed_backbone: bool | None = None,
) -> Path:
    """Write ``model`` as a self-describing checkpoint, atomically.

    Args:
        path: destination file (``.safetensors``) or directory (then
            ``DIR/checkpoint.safetensors``).
        model: the model to save.
        extra: JSON-serialisable sections to store beside the model description
            (``kernel``, ``objective``, ``training`` configs, metrics, ...).
        embed_backbone: store the backbone weights in the file. Default: only
            when the backbone was randomly initialised — otherwise the result
            could not be rebuilt.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / CHECKPOINT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone
    if embed_backbone is None:
        embed_backbone = backbone.config.weights in ("random", "embedded")
    tensors: dict[str, torch.Tensor] = {}
    if model.head is not None:
        tensors.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    for method in CENTROID_METHODS:
        centroids = model.centroids(method)
        if centroids is not None:
            tensors[f"centroids.{method}"] = centroids
    if embed_backbone:
        tensors.update({f"backbone.{k}": v for k, v in backbone.vit.state_dict().items()})
    weights = "embedded" if embed_backbone else backbone.config.weights
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "segeig_version": __version__,
        "backbone": {
            **to_dict(replace(backbone.config, weights=weights)),
            "weights_origin": backbone.config.weights,
            "embed_dim": backbone.embed_dim,
            "patch_size": backbone.patch_size,
            "layers": list(backbone.layer_indices),
            "mean": list(backbone.mean),
            "std": list(backbone.std),
        },
        "head": None if model.head is None else to_dict(model.head.config),
        "methods": model.methods,
        **(extra or {}),
    }
    if model.centroid_metrics:
        document["centroid_metrics"] = {
            method: {"metric": metric, "spread": spread}
            for method, (metric, spread) in model.centroid_metrics.items()}
    if model.centroids("spectral") is not None:
        kernel_config, spectral_config = model.spectral
        document["spectral"] = {"kernel": to_dict(kernel_config), **to_dict(spectral_config)}
    write_safetensors(path, tensors, FORMAT, document)
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description of a checkpoint (no tensors are loaded)."""
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    if FORMAT not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not a segeig checkpoint (no '{FORMAT}' metadata)"
        )
    try:
        document = json.loads(metadata[FORMAT])
    except ValueError as err:
        raise CheckpointError(f"{path}: its segeig metadata is not valid JSON ({err})") from err
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: malformed segeig metadata (not a JSON object)")
    version = document.get("format_version")
    if document.get("format") != FORMAT or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: malformed segeig metadata")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, this segeig ({__version__}) reads up "
            f"to {FORMAT_VERSION}; upgrade segeig"
        )
    problem = document_problem(document)
    if problem:
        raise CheckpointError(f"{path}: {problem}; refusing to load it (a checkpoint's "
                              "description is checked like any untrusted input)")
    return document


def checkpoint_resolution(document: dict[str, Any]) -> WorkingResolution:
    """The working resolution a checkpoint's head was trained at.

    Recorded as ``resolution`` since segeig 0.2. Older checkpoints are read
    from their training config: images were pre-resized to a short side
    ``resize_short`` and augmented around it, so that is the working
    resolution (with the default long-side cap); without it (benchmark
    presets, or ``resize_short`` 0) images were used at their own size.

    Raises:
        CheckpointError: a recorded ``resolution`` that is not valid.
    """
    recorded = document.get("resolution")
    if recorded is not None:
        try:
            return from_dict(WorkingResolution, recorded)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"invalid working resolution {recorded!r}: {err}") from err
    training = document.get("training") or {}
    short = training.get("resolution", training.get("resize_short")) or 0
    if isinstance(short, bool) or not isinstance(short, int) or not 0 <= short <= 16384:
        return WorkingResolution()
    return WorkingResolution(short, default_max_long(short))


# -- the schema of the JSON description --------------------------------------------
# A checkpoint is a file people download from strangers: every value is checked
# for type and range before it reaches timm or torch, unknown keys are refused,
# and nothing in it may name a network location or a file to read.

def _finite_numbers(value: Any, where: str, count: int | None = None,
                    positive: bool = False, limit: int = 1 << 16) -> str | None:
    if not isinstance(value, list) or (count is not None and len(value) != count) \
            or len(value) > limit:
        size = f"{count} " if count is not None else ""
        return f"{where} must be a list of {size}numbers"
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (positive and v <= 0):
            return f"{where} must hold finite{' positive' if positive else ''} numbers, got {v!r}"
    return None


def _int_in(value: Any, where: str, low: int, high: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"{where} must be an integer in {low}..{high}, got {value!r}"
    return None


def _weights_problem(value: Any, where: str) -> str | None:
    if value in ("hub", "random", "embedded"):
        return None
    if not isinstance(value, str) or "\0" in value or len(value) > 4096:
        return f"{where} must be hub, random, embedded or a file path, got {value!r}"
    if Path(value).suffix.lower() not in WEIGHT_SUFFIXES:
        return (f"{where} names {value!r}, not a weights file "
                f"({', '.join(WEIGHT_SUFFIXES)})")
    return None


def _check_config(cls: type, value: Any, where: str) -> str | None:
    try:
        from_dict(cls, value)
    except (ValueError, TypeError) as err:
        return f"{where}: {err}"
    return None


#: Keys of the ``backbone`` section and their checks (the name is checked at load).
_BACKBONE_KEYS: dict[str, Any] = {
    "name": lambda v, w: None if isinstance(v, str) and 0 < len(v) <= 200
    else f"{w} must be a model name",
    "weights": _weights_problem,
    "weights_origin": _weights_problem,
    "arch_overrides": lambda v, w: _call_problem(check_arch_overrides, v, w),
    "kernel_features": lambda v, w: None if v in ("final", "keys")
    else f"{w} must be final or keys, got {v!r}",
    "embed_dim": lambda v, w: _int_in(v, w, 1, 8192),
    "patch_size": lambda v, w: _int_in(v, w, 1, 256),
    "layers": lambda v, w: None if isinstance(v, list) and len(v) == 3
    and all(_int_in(i, w, 0, 1000) is None for i in v) else f"{w} must be 3 block indices",
    "mean": lambda v, w: _finite_numbers(v, w, 3),
    "std": lambda v, w: _finite_numbers(v, w, 3, positive=True),
}


def _call_problem(check: Any, value: Any, where: str) -> str | None:
    try:
        check(value)
    except ValueError as err:
        return f"{where}: {err}"
    return None


def _backbone_problem(value: Any, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{where} must be a JSON object"
    for key in ("name", "weights", "embed_dim"):
        if key not in value:
            return f"{where} lacks '{key}'"
    for key, item in value.items():
        if key not in _BACKBONE_KEYS:
            return f"{where} has an unknown key {key!r}"
        problem = _BACKBONE_KEYS[key](item, f"{where}.{key}")
        if problem:
            return problem
    return None


def _head_problem(value: Any, where: str) -> str | None:
    if value is None:
        return None
    problem = _check_config(HeadConfig, value, where)
    if problem:
        return problem
    head = from_dict(HeadConfig, value)
    for name, low, high in (("k", 1, MAX_SEGMENTS), ("depth", 1, 24), ("num_heads", 1, 64),
                            ("mlp_hidden", 1, 1 << 16)):
        problem = _int_in(getattr(head, name), f"{where}.{name}", low, high)
        if problem:
            return problem
    if head.hidden_dim is not None:
        problem = _int_in(head.hidden_dim, f"{where}.hidden_dim", 1, 1 << 16)
        if problem:
            return problem
    if not 0 < head.tau_min <= head.tau_max:
        return f"{where}: need 0 < tau_min <= tau_max, got {head.tau_min}, {head.tau_max}"
    return None


def _spectral_problem(value: Any, where: str) -> str | None:
    if not isinstance(value, dict) or "kernel" not in value:
        return f"{where} must be a JSON object with a 'kernel'"
    rest = {k: v for k, v in value.items() if k != "kernel"}
    return (_check_config(KernelConfig, value["kernel"], f"{where}.kernel")
            or _check_config(SpectralConfig, rest, where))


def _methods_problem(value: Any, where: str) -> str | None:
    if not isinstance(value, list) or not value or any(m not in METHODS for m in value):
        return f"{where} must be a non-empty list of {list(METHODS)}, got {value!r}"
    return None


def _object(value: Any, where: str) -> str | None:
    """Sections segeig records but does not build from: any JSON object."""
    return None if isinstance(value, dict) else f"{where} must be a JSON object"


def _centroid_metrics_problem(value: Any, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{where} must be a JSON object"
    for method, item in value.items():
        if method not in CENTROID_METHODS or not isinstance(item, dict) \
                or set(item) != {"metric", "spread"}:
            return f"{where}.{method}: expected a centroid method with 'metric' and 'spread'"
        if item["metric"] not in CENTROID_METRICS:
            return f"{where}.{method}.metric must be one of {CENTROID_METRICS}"
        problem = _finite_numbers([item["spread"]], f"{where}.{method}.spread", positive=True)
        if problem:
            return problem
    return None


def _numbers_object(value: Any, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{where} must be a JSON object"
    for key, item in value.items():
        problem = _finite_numbers([item], f"{where}.{key}")
        if problem:
            return problem
    return None


#: Top-level sections of a checkpoint's JSON and the check of each; a section
#: not listed is refused. Adding a section is one line here.
SECTIONS: dict[str, Any] = {
    "format": lambda v, w: None,  # checked by read_config before the schema
    "format_version": lambda v, w: None,
    "segeig_version": lambda v, w: None if isinstance(v, str) else f"{w} must be a string",
    "backbone": _backbone_problem,
    "head": _head_problem,
    "methods": _methods_problem,
    "spectral": _spectral_problem,
    "kernel": lambda v, w: _check_config(KernelConfig, v, w),
    "objective": _numbers_object,
    "eigenvalues": lambda v, w: _finite_numbers(v, w),
    "training": _object,  # the run's settings and counts, for people to read
    "resolution": lambda v, w: _check_config(WorkingResolution, v, w),
    "centroid_metrics": _centroid_metrics_problem,
    "eigenvalues_training": lambda v, w: _finite_numbers(v, w),
    "classes": _object,  # cluster → class maps, names, palette
}
#: Sections every checkpoint has.
REQUIRED_SECTIONS = ("format", "format_version", "backbone", "methods")


def document_problem(document: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's JSON description, or None.

    Checks the types, ranges and allowed keys of every section
    (:data:`SECTIONS`); the backbone name and what the built model looks like
    are checked by :func:`load_model`.
    """
    for key in REQUIRED_SECTIONS:
        if key not in document:
            return f"the description lacks '{key}'"
    for key, value in document.items():
        if key not in SECTIONS:
            written = document.get("segeig_version", "an unknown version")
            return (f"unknown section {key!r} (written by segeig {written}; this is "
                    f"{__version__})")
        problem = SECTIONS[key](value, key)
        if problem:
            return problem
    return None


#: Prefixes of the tensors a checkpoint holds.
TENSOR_PREFIXES = ("head.", "centroids.", "backbone.")


def _read_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix*`` (prefix removed); refuses non-finite values."""
    out = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            if not key.startswith(TENSOR_PREFIXES):
                raise CheckpointError(f"{path}: unexpected tensor {key!r} (a segeig checkpoint "
                                      f"holds only {', '.join(p + '*' for p in TENSOR_PREFIXES)})")
            if key.startswith(prefix):
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values")
                out[key[len(prefix):]] = tensor
    return out


def _compare_backbone(path: Path, section: dict[str, Any], backbone: Backbone) -> None:
    """Refuse a backbone that is not the one the checkpoint describes."""
    built = {"embed_dim": backbone.embed_dim, "patch_size": backbone.patch_size,
             "layers": list(backbone.layer_indices), "mean": list(backbone.mean),
             "std": list(backbone.std)}
    for key, value in built.items():
        if key not in section:
            continue
        recorded = section[key]
        same = (all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
                    for a, b in zip(recorded, value, strict=True))
                if key in ("mean", "std") else recorded == value)
        if not same:
            raise CheckpointError(
                f"{path} describes a backbone with {key} {recorded}, but "
                f"{section['name']} as built has {value}: the file does not fit its own "
                "description (edited, or its architecture overrides are wrong)")


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    backbone_weights: str | None = None,
) -> tuple[SegEigModel, dict[str, Any]]:
    """Rebuild a :class:`SegEigModel` from a checkpoint file alone.

    The file is untrusted input: its description is checked against the
    schema (:func:`document_problem`), the backbone name must be a plain timm
    model name (``hf-hub:`` names only when ``backbone_weights="hub"``, i.e.
    the user asked for hub weights), the built backbone must match the
    recorded width, patch size, layers and normalisation, embedded weights
    must fit it exactly, and every tensor must be finite.

    Args:
        path: checkpoint file or directory containing ``checkpoint.safetensors``.
        device: where to put the model.
        backbone_weights: override where the backbone weights come from
            (``hub``, a local file, or ``random``); default: as recorded.

    Returns:
        ``(model in eval mode, the checkpoint's JSON description)``.

    Raises:
        CheckpointError: malformed file, or tensors that do not fit the
            description or the backbone (K, hidden width, feature dim).
        segeig.backbone.BackboneWeightsError: the backbone weights could not
            be obtained.
    """
    path = resolve_checkpoint_path(path)
    document = read_config(path)
    recorded = document["backbone"]
    section = dict(recorded)
    expected_dim = section.pop("embed_dim")
    origin = section.pop("weights_origin", section.get("weights"))
    for key in ("patch_size", "layers", "mean", "std"):
        section.pop(key, None)
    try:
        check_backbone_name(section["name"], allow_hub_repo=backbone_weights == "hub")
        config = from_dict(BackboneConfig, section)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    if backbone_weights is not None:
        config = replace(config, weights=backbone_weights)
    try:
        if config.weights == "embedded":
            if origin == "random":
                logger.warning(
                    "%s was trained on a RANDOMLY INITIALISED backbone (embedded in the "
                    "file): for tests and smoke runs only", path,
                )
            vit = create_vit(config)
            state = _read_tensors(path, "backbone.")
            try:
                result = vit.load_state_dict(state, strict=False)
            except RuntimeError as err:  # shapes that do not fit
                raise CheckpointError(f"{path}: embedded backbone does not fit {config.name}: "
                                      f"{err}") from err
            if result.missing_keys or result.unexpected_keys:
                raise CheckpointError(
                    f"{path}: embedded backbone does not fit {config.name} with its "
                    f"architecture overrides: missing {result.missing_keys[:5]}, "
                    f"unexpected {result.unexpected_keys[:5]}")
            backbone = Backbone(config, vit=vit)
        else:
            backbone = Backbone(config)
    except ValueError as err:  # overrides out of range, not a ViT, ...
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {err}") from err
    if backbone.embed_dim != expected_dim:
        raise CheckpointError(
            f"{path} was trained on a backbone of width {expected_dim}, but {config.name} "
            f"with weights {config.weights!r} has width {backbone.embed_dim}"
        )
    _compare_backbone(path, recorded, backbone)
    head = None
    if document.get("head") is not None:
        head_config = from_dict(HeadConfig, document["head"])
        head = EigenHead(backbone.feature_dim, head_config, embed_dim=backbone.embed_dim)
        state = _read_tensors(path, "head.")
        try:
            head.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(
                f"{path}: head weights do not match its config (K={head_config.k}, "
                f"kind={head_config.kind}, input {backbone.feature_dim}): {err}"
            ) from err
    spectral = None
    if document.get("spectral"):
        section = dict(document["spectral"])
        spectral = (from_dict(KernelConfig, section.pop("kernel")),
                    from_dict(SpectralConfig, section))
    model = SegEigModel(backbone, head, spectral=spectral)
    metrics = document.get("centroid_metrics") or {}
    for method, centroids in _read_tensors(path, "centroids.").items():
        how = metrics.get(method) or {}
        try:
            model.set_centroids(method, centroids, how.get("metric", "cosine"),
                                how.get("spread", 1.0))
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from err
    missing = [m for m in document["methods"] if m not in model.methods]
    if missing:
        raise CheckpointError(f"{path} lists methods {missing} but holds no weights for them")
    return model.to(device).eval(), document


def _segment_counts(document: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]
                    ) -> dict[str, int]:
    """method → clusters S, from a checkpoint's JSON and its tensors' shapes."""
    counts = {}
    for method in document.get("methods", []):
        if method == "eigen" and document.get("head"):
            counts[method] = int(document["head"]["k"])
        elif f"centroids.{method}" in shapes:
            counts[method] = int(shapes[f"centroids.{method}"][0])
    return counts


def segment_counts(path: str | os.PathLike) -> dict[str, int]:
    """method → number of clusters S of a checkpoint, read from the file (no model built)."""
    path = resolve_checkpoint_path(path)
    document = read_config(path)
    with safe_open(str(path), framework="pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape()
                  for key in handle.keys()  # noqa: SIM118 - safe_open is not a mapping
                  if key.startswith("centroids.")}
    return _segment_counts(document, shapes)


def class_map_destination(source: str | os.PathLike, out: str | os.PathLike,
                          overwrite: bool = False) -> Path:
    """Where :func:`save_class_map` writes, checked before any work is done.

    Raises:
        CheckpointError: the destination exists (it may be ``source`` itself)
            and ``overwrite`` is false.
    """
    src = resolve_checkpoint_path(source)
    dst = Path(out)
    if dst.suffix != ".safetensors":
        dst = dst / CHECKPOINT_NAME
    if dst.exists() and not overwrite:
        same = dst.resolve() == src.resolve()
        raise CheckpointError(
            f"{dst} {'is the input checkpoint' if same else 'already exists'}; choose another "
            "output directory or allow replacing it (segeig label --overwrite)")
    return dst


def save_class_map(
    source: str | os.PathLike,
    out: str | os.PathLike,
    class_map: ClassMap,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a copy of a checkpoint carrying ``class_map`` as its ``classes`` section.

    Tensors and every other section are copied unchanged (the model is not
    rebuilt, so no backbone weights are fetched); an existing ``classes``
    section is replaced. The file is written atomically.

    Args:
        source: checkpoint file or its directory.
        out: destination file (``.safetensors``) or directory (then
            ``DIR/checkpoint.safetensors``).
        class_map: the map; validated against the checkpoint's methods and
            cluster counts.
        overwrite: replace an existing destination — also the source itself
            (in place: everything is read before the new file replaces it).

    Returns:
        The path written.

    Raises:
        CheckpointError: unreadable source, destination exists without
            ``overwrite``, or a map that does not fit the checkpoint.
    """
    src = resolve_checkpoint_path(source)
    dst = class_map_destination(src, out, overwrite)
    document = read_config(src)
    tensors = _read_tensors(src, "")
    class_map.check_segments(_segment_counts(document, {k: t.shape for k, t in tensors.items()}))
    write_safetensors(dst, tensors, FORMAT, {**document, "classes": class_map.to_dict()})
    return dst
