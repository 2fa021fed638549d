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
     "kernel": {...}, "objective": {...}, "training": {...}}

Loading rebuilds everything from the file alone; :func:`read_config` reads the
JSON without touching tensors (cheap, for ``segeig info``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

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
    BackboneConfig,
    HeadConfig,
    KernelConfig,
    SpectralConfig,
    from_dict,
    to_dict,
)
from segeig.head import EigenHead
from segeig.imageio import MAX_SEGMENTS
from segeig.model import CENTROID_METHODS, METHODS, SegEigModel

logger = logging.getLogger(__name__)

FORMAT = "segeig"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
#: Suffixes of a local backbone weights file a checkpoint may record.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit its own description."""


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
    "resolution": _object,  # working resolution
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
    for method, centroids in _read_tensors(path, "centroids.").items():
        try:
            model.set_centroids(method, centroids)
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from err
    missing = [m for m in document["methods"] if m not in model.methods]
    if missing:
        raise CheckpointError(f"{path} lists methods {missing} but holds no weights for them")
    return model.to(device).eval(), document
