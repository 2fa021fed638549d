"""The JSON description of a checkpoint: what each section holds, checked like untrusted input.

A checkpoint's safetensors metadata holds one JSON document under the key
``"segeig"`` (see :mod:`segeig.checkpoint.store` for the file):

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
scored (absent: cosine, as every checkpoint before it). The optional
``classes`` section is a :class:`~segeig.checkpoint.classmap.ClassMap`.

:func:`document_problem` checks a whole description against :data:`SECTIONS`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from segeig import __version__
from segeig.backbone import check_arch_overrides
from segeig.checkpoint.errors import CheckpointError
from segeig.config import (
    CENTROID_METRICS,
    HeadConfig,
    KernelConfig,
    SpectralConfig,
    WorkingResolution,
    default_max_long,
    from_dict,
)
from segeig.labelmaps import MAX_SEGMENTS
from segeig.model import CENTROID_METHODS, METHODS

#: Suffixes of a local backbone weights file a checkpoint may record.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


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
    are checked by :func:`segeig.checkpoint.load.load_model`.
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


# -- what older descriptions mean -------------------------------------------------

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
