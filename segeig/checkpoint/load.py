"""Rebuild a :class:`~segeig.model.SegEigModel` from a checkpoint file alone.

The file is untrusted input: :func:`load_model` builds nothing before its
description passed the schema (:mod:`segeig.checkpoint.schema`), and checks
every built part (backbone, head, centroids) against that description.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segeig.backbone import Backbone, check_backbone_name, create_vit
from segeig.checkpoint.classmap import class_map_of
from segeig.checkpoint.errors import CheckpointError
from segeig.checkpoint.schema import checkpoint_resolution
from segeig.checkpoint.store import (
    read_config,
    read_tensors,
    resolve_checkpoint_path,
    segment_counts,
)
from segeig.config import (
    BackboneConfig,
    HeadConfig,
    KernelConfig,
    PropagationConfig,
    SpectralConfig,
    from_dict,
)
from segeig.head import EigenHead
from segeig.model import SegEigModel

# The package's name, not this module's: log lines read "segeig.checkpoint: ..." as they
# always have, and that is the logger scripts/benchmark.py quietens.
logger = logging.getLogger("segeig.checkpoint")

#: Keys of the ``backbone`` section that record what the built backbone looks like
#: (checked after building it), as opposed to how to build it.
_BUILT_KEYS = ("embed_dim", "weights_origin", "patch_size", "layers", "mean", "std")


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    backbone_weights: str | None = None,
) -> tuple[SegEigModel, dict[str, Any]]:
    """Rebuild a :class:`SegEigModel` from a checkpoint file alone.

    The file is untrusted input: its description is checked against the
    schema (:func:`~segeig.checkpoint.schema.document_problem`), the backbone
    name must be a plain timm model name (``hf-hub:`` names only when
    ``backbone_weights="hub"``, i.e. the user asked for hub weights), the built
    backbone must match the recorded width, patch size, layers and
    normalisation, embedded weights must fit it exactly, and every tensor must
    be finite.

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
    # The class map is checked by Segmenter against the built model (class_map_of).
    document = check_checkpoint(path, backbone_weights, classes=False)
    backbone = _build_backbone(path, document["backbone"], backbone_weights)
    head = _build_head(path, document.get("head"), backbone)
    model = SegEigModel(backbone, head, spectral=_spectral_settings(document.get("spectral")),
                        propagation=_propagation_settings(document.get("kernel")))
    _load_centroids(path, document, model)
    missing = [m for m in document["methods"] if m not in model.methods]
    if missing:
        raise CheckpointError(f"{path} lists methods {missing} but holds no weights for them")
    return model.to(device).eval(), document


def check_checkpoint(path: str | os.PathLike, backbone_weights: str | None = None, *,
                     classes: bool = True) -> dict[str, Any]:
    """Every check :func:`load_model` (and :class:`segeig.Segmenter`) makes that needs
    no model built: what ``segeig info`` runs, so it refuses exactly what they refuse.

    The description's schema (:func:`~segeig.checkpoint.store.read_config`), the
    backbone name (``hf-hub:`` only with ``backbone_weights="hub"``), the head
    section, every listed method having its weights, the working resolution,
    and the ``classes`` section against the methods' cluster counts (read from
    the tensors' shapes; no tensor is loaded) as :class:`segeig.Segmenter` checks it.

    Args:
        path: checkpoint file or directory.
        backbone_weights: as :func:`load_model`'s.
        classes: also check the ``classes`` section (``load_model`` leaves that
            to :class:`segeig.Segmenter`, which checks it with the same function).

    Returns:
        The checkpoint's JSON description.

    Raises:
        CheckpointError: naming the file and the problem.
    """
    path = resolve_checkpoint_path(path)
    document = read_config(path)
    _backbone_config(path, document["backbone"], backbone_weights)
    try:
        if document.get("head") is not None:
            from_dict(HeadConfig, document["head"])
        checkpoint_resolution(document)
        counts = segment_counts(path)
        missing = [m for m in document["methods"] if m not in counts]
        if missing:
            raise CheckpointError(f"lists methods {missing} but holds no weights for them")
        if classes:
            class_map_of(document, counts)
    except (CheckpointError, ValueError, TypeError) as err:
        message = str(err)
        raise CheckpointError(message if message.startswith(str(path))
                              else f"{path}: {message}") from None
    return document


def _backbone_config(path: Path, recorded: dict[str, Any],
                     backbone_weights: str | None) -> BackboneConfig:
    """How to build the backbone: the recorded section (its name checked), weights overridden."""
    section = {key: value for key, value in recorded.items() if key not in _BUILT_KEYS}
    try:
        check_backbone_name(section["name"], allow_hub_repo=backbone_weights == "hub")
        config = from_dict(BackboneConfig, section)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    if backbone_weights is not None:
        config = replace(config, weights=backbone_weights)
    return config


def _build_backbone(path: Path, recorded: dict[str, Any],
                    backbone_weights: str | None) -> Backbone:
    """The backbone the ``backbone`` section describes, refused unless it looks as recorded."""
    config = _backbone_config(path, recorded, backbone_weights)
    try:
        if config.weights == "embedded":
            origin = recorded.get("weights_origin", recorded.get("weights"))
            backbone = Backbone(config, vit=_embedded_vit(path, config, origin))
        else:
            backbone = Backbone(config)
    except ValueError as err:  # overrides out of range, not a ViT, ...
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {err}") from err
    expected_dim = recorded["embed_dim"]
    if backbone.embed_dim != expected_dim:
        raise CheckpointError(
            f"{path} was trained on a backbone of width {expected_dim}, but {config.name} "
            f"with weights {config.weights!r} has width {backbone.embed_dim}"
        )
    _compare_backbone(path, recorded, backbone)
    return backbone


def _embedded_vit(path: Path, config: BackboneConfig, origin: str | None) -> nn.Module:
    """The timm ViT with the weights stored in the file (``backbone.*``), which fit it exactly."""
    if origin == "random":
        logger.warning(
            "%s was trained on a RANDOMLY INITIALISED backbone (embedded in the "
            "file): for tests and smoke runs only", path,
        )
    vit = create_vit(config)
    state = read_tensors(path, "backbone.")
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
    return vit


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


def _build_head(path: Path, section: dict[str, Any] | None,
                backbone: Backbone) -> EigenHead | None:
    """The head the ``head`` section describes, with its ``head.*`` weights; None without one."""
    if section is None:
        return None
    head_config = from_dict(HeadConfig, section)
    head = EigenHead(backbone.feature_dim, head_config, embed_dim=backbone.embed_dim)
    state = read_tensors(path, "head.")
    try:
        head.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: head weights do not match its config (K={head_config.k}, "
            f"kind={head_config.kind}, input {backbone.feature_dim}): {err}"
        ) from err
    return head


def _spectral_settings(section: dict[str, Any] | None
                       ) -> tuple[KernelConfig, SpectralConfig] | None:
    """The ``spectral`` method's kernel and clustering settings; None: the defaults."""
    if not section:
        return None
    rest = dict(section)
    return from_dict(KernelConfig, rest.pop("kernel")), from_dict(SpectralConfig, rest)


def _propagation_settings(kernel: dict[str, Any] | None) -> PropagationConfig:
    """Propagation over the colour/position graph of the checkpoint's training kernel."""
    if not kernel:
        return PropagationConfig()
    return PropagationConfig(pixel_passes=from_dict(KernelConfig, kernel).pixel_passes)


def _load_centroids(path: Path, document: dict[str, Any], model: SegEigModel) -> None:
    """Give ``model`` the ``centroids.<method>`` tensors, scored as ``centroid_metrics`` says."""
    metrics = document.get("centroid_metrics") or {}
    for method, centroids in read_tensors(path, "centroids.").items():
        how = metrics.get(method) or {}
        try:
            model.set_centroids(method, centroids, how.get("metric", "cosine"),
                                how.get("spread", 1.0))
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from err
