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
     "kernel": {...}, "objective": {...}, "training": {...}}

``resolution`` is the working resolution the head was trained at and must be
used at (:func:`checkpoint_resolution` derives it for checkpoints written
before it was recorded); ``centroid_metrics`` says how each centroid set is
scored (absent: cosine, as every checkpoint before it).

Loading rebuilds everything from the file alone; :func:`read_config` reads the
JSON without touching tensors (cheap, for ``segeig info``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from segeig import __version__
from segeig.atomic import write_safetensors
from segeig.backbone import Backbone, create_vit
from segeig.config import (
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
from segeig.model import CENTROID_METHODS, SegEigModel

logger = logging.getLogger(__name__)

FORMAT = "segeig"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"


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
    document = json.loads(metadata[FORMAT])
    version = document.get("format_version")
    if document.get("format") != FORMAT or not isinstance(version, int):
        raise CheckpointError(f"{path}: malformed segeig metadata")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, this segeig ({__version__}) reads up "
            f"to {FORMAT_VERSION}; upgrade segeig"
        )
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


def _read_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {
            key[len(prefix):]: handle.get_tensor(key)
            for key in handle.keys()  # noqa: SIM118 - safe_open is not a mapping
            if key.startswith(prefix)
        }


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    backbone_weights: str | None = None,
) -> tuple[SegEigModel, dict[str, Any]]:
    """Rebuild a :class:`SegEigModel` from a checkpoint file alone.

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
    """
    path = resolve_checkpoint_path(path)
    document = read_config(path)
    section = dict(document["backbone"])
    expected_dim = section.pop("embed_dim")
    origin = section.pop("weights_origin", section.get("weights"))
    for key in ("patch_size", "layers", "mean", "std"):
        section.pop(key, None)
    config = from_dict(BackboneConfig, section)
    if backbone_weights is not None:
        config = replace(config, weights=backbone_weights)
    if config.weights == "embedded":
        if origin == "random":
            logger.warning(
                "%s was trained on a RANDOMLY INITIALISED backbone (embedded in the file): "
                "for tests and smoke runs only", path,
            )
        vit = create_vit(config)
        missing = vit.load_state_dict(_read_tensors(path, "backbone."), strict=False)
        if missing.missing_keys:
            raise CheckpointError(f"{path}: embedded backbone lacks {missing.missing_keys[:5]}")
        backbone = Backbone(config, vit=vit)
    else:
        backbone = Backbone(config)
    if backbone.embed_dim != expected_dim:
        raise CheckpointError(
            f"{path} was trained on a backbone of width {expected_dim}, but {config.name} "
            f"with weights {config.weights!r} has width {backbone.embed_dim}"
        )
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
    return model.to(device).eval(), document
