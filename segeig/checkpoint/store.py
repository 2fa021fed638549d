"""Checkpoint files: one ``.safetensors`` file, no pickle, described by its own JSON.

The tensors are the head's weights (``head.*``), any k-means centroids
(``centroids.<method>``) and, when the backbone has no other source (random
init), the backbone's weights (``backbone.*``). The safetensors metadata holds
one JSON document under the key ``"segeig"``, whose sections and checks are
:mod:`segeig.checkpoint.schema`.

:func:`save_checkpoint` writes a model; :func:`read_config` reads the JSON
without touching tensors (cheap, for ``segeig info``);
:func:`segeig.checkpoint.load.load_model` rebuilds the model from the file alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from segeig import __version__
from segeig.atomic import write_safetensors
from segeig.checkpoint.errors import CheckpointError
from segeig.checkpoint.schema import document_problem
from segeig.config import to_dict
from segeig.model import CENTROID_METHODS, SegEigModel
from segeig.safeio import UserFileError, open_regular, parse_json

FORMAT = "segeig"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
#: Prefixes of the tensors a checkpoint holds.
TENSOR_PREFIXES = ("head.", "centroids.", "backbone.")
#: Longest JSON description read (a class map for 4096 clusters takes ~30 kB).
MAX_DESCRIPTION_CHARS = 16 << 20


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Accept a checkpoint file or a training directory holding one.

    Raises:
        CheckpointError: nothing there, or something that is not a regular file
            (a FIFO or a device is refused without blocking or reading it).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(
            f"no segeig checkpoint at {path}. Train one with `segeig train ... --out DIR` "
            f"(it writes DIR/{CHECKPOINT_NAME}) or pass the file itself."
        )
    try:
        fd, _ = open_regular(path, "checkpoint")
    except UserFileError as err:
        raise CheckpointError(str(err)) from None
    os.close(fd)
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
    if embed_backbone is None:
        embed_backbone = model.backbone.config.weights in ("random", "embedded")
    write_safetensors(path, _model_tensors(model, embed_backbone), FORMAT,
                      _model_document(model, embed_backbone, extra))
    return path


def _model_tensors(model: SegEigModel, embed_backbone: bool) -> dict[str, torch.Tensor]:
    """``head.*`` weights, ``centroids.<method>`` (``S×C`` each), ``backbone.*`` if embedded."""
    tensors: dict[str, torch.Tensor] = {}
    if model.head is not None:
        tensors.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    for method in CENTROID_METHODS:
        centroids = model.centroids(method)
        if centroids is not None:
            tensors[f"centroids.{method}"] = centroids
    if embed_backbone:
        tensors.update({f"backbone.{k}": v for k, v in model.backbone.vit.state_dict().items()})
    return tensors


def _model_document(model: SegEigModel, embed_backbone: bool,
                    extra: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON description of ``model``; the section order is the file's, keep it."""
    backbone = model.backbone
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
    return document


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
    text = metadata[FORMAT]
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise CheckpointError(f"{path}: its segeig metadata is {len(text)} characters long, more "
                              f"than the {MAX_DESCRIPTION_CHARS} a checkpoint's description "
                              "may be")
    try:
        document = parse_json(text, f"{path}: its segeig metadata")
    except UserFileError as err:  # not JSON, duplicate keys, nested too deeply
        raise CheckpointError(str(err)) from None
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


def read_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
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


def segment_counts_from_shapes(document: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]
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
    return segment_counts_from_shapes(document, shapes)
