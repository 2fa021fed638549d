"""Frozen ViT backbone: timm model → three patch-token maps.

The head's input is the concatenation of the outputs of block 0, block
``depth // 2`` and the final (normed) output, each as a ``B×D×h×w`` map with the
class and register tokens removed (docs/method.md, "Features"). The kernel uses
the final map (or, optionally, the last block's attention keys).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import get_pretrained_cfg
from torch import nn

from segeig.config import BackboneConfig
from segeig.safeio import UserFileError, open_regular

logger = logging.getLogger(__name__)

#: Backbones known to work; any timm ViT with ``forward_intermediates`` does.
KNOWN_BACKBONES = (
    "vit_small_patch16_224.dino",
    "vit_small_patch8_224.dino",
    "vit_base_patch16_224.dino",
    "vit_base_patch8_224.dino",
    "vit_small_patch14_dinov2.lvd142m",
    "vit_small_patch14_reg4_dinov2.lvd142m",
    "vit_base_patch14_dinov2.lvd142m",
    "vit_base_patch14_reg4_dinov2.lvd142m",
    "vit_small_patch16_384.augreg_in21k_ft_in1k",
)


#: Architecture overrides (``BackboneConfig.arch_overrides``) passed on to
#: ``timm.create_model``, with their types and ranges: enough to build the tiny
#: ViTs of tests and smoke runs, bounded so a checkpoint cannot ask for a
#: network of 100000 blocks. Everything else is refused, notably the keywords
#: that load files or change preprocessing (``checkpoint_path``,
#: ``pretrained_cfg_overlay``, ``pretrained_cfg``).
ARCH_OVERRIDES: dict[str, tuple[type, float, float]] = {
    "depth": (int, 1, 40),
    "embed_dim": (int, 8, 1536),
    "num_heads": (int, 1, 32),
    "img_size": (int, 16, 2048),
    "patch_size": (int, 2, 32),
    "mlp_ratio": (float, 0.25, 8.0),
    "reg_tokens": (int, 0, 16),
    "qkv_bias": (bool, 0, 1),
    "class_token": (bool, 0, 1),
}

#: A timm model name with an optional pretrained tag (``vit_small_patch16_224.dino``).
_TIMM_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)?")


class BackboneWeightsError(RuntimeError):
    """The backbone's weights could not be obtained (no network, bad file)."""


def check_arch_overrides(overrides: Mapping[str, Any]) -> None:
    """Refuse architecture overrides outside :data:`ARCH_OVERRIDES`.

    Raises:
        ValueError: an unknown key, a value of the wrong type or out of range,
            or an ``embed_dim`` that ``num_heads`` does not divide.
    """
    if not isinstance(overrides, Mapping):
        raise ValueError(f"arch_overrides must be an object, got {overrides!r}")
    for key, value in overrides.items():
        if key not in ARCH_OVERRIDES:
            raise ValueError(f"architecture override {key!r} is not allowed; segeig accepts "
                             f"{', '.join(sorted(ARCH_OVERRIDES))}")
        kind, low, high = ARCH_OVERRIDES[key]
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"architecture override {key} must be true or false, "
                                 f"got {value!r}")
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or (kind is int and not isinstance(value, int)):
            raise ValueError(f"architecture override {key} must be a"
                             f"{'n integer' if kind is int else ' number'}, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"architecture override {key}={value} is outside {low:g}..{high:g}")
    dim, heads = overrides.get("embed_dim"), overrides.get("num_heads")
    if dim is not None and heads is not None and dim % heads:
        raise ValueError(f"architecture override embed_dim={dim} is not divisible by "
                         f"num_heads={heads}")


def check_backbone_name(name: Any, allow_hub_repo: bool = False) -> None:
    """Refuse backbone names that are not plain timm model names.

    A plain name (``arch`` or ``arch.tag``) must be registered in timm, with
    its tag when one is given: its weights can only come from where timm
    registers them. Names that point elsewhere (``hf-hub:org/repo`` downloads
    from any repository, ``local-dir:/path`` reads any folder) are refused,
    except ``hf-hub:`` when ``allow_hub_repo`` (the user asked for hub
    weights on the command line).

    Raises:
        ValueError: what is wrong with the name.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    if allow_hub_repo and re.fullmatch(r"hf-hub:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", name):
        return
    if not _TIMM_NAME.fullmatch(name):
        raise ValueError(
            f"backbone name {name!r} is not a timm model name (arch or arch.tag); names that "
            "fetch from a hub repository or read a local folder are not accepted from a "
            "checkpoint" + ("" if allow_hub_repo else
                            " (hf-hub: names only with --backbone-weights hub)"))
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise ValueError(f"backbone {name!r} is not a model timm knows")
    if tag:
        try:
            get_pretrained_cfg(name, allow_unregistered=False)
        except RuntimeError as err:
            raise ValueError(f"backbone {name!r}: {err}") from None


@dataclass
class BackboneFeatures:
    """Patch features of one batch.

    Attributes:
        layers: three maps (block 0, block depth//2, final normed), each
            ``B×D×h×w`` float32.
        kernel: features for the graph kernel, ``B×Dk×h×w`` float32 (final
            normed tokens, or last-block attention keys).
    """

    layers: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    kernel: torch.Tensor

    @property
    def stacked(self) -> torch.Tensor:
        """``B×3D×h×w`` concatenation of the three maps: the head's input."""
        return torch.cat(self.layers, dim=1)


def _unwrap_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Find the backbone weights inside the wrappers training codes use."""
    for key in ("teacher", "student", "state_dict", "model", "module"):
        inner = checkpoint.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
            # DINO saves the teacher as the model to use; prefer it first.
            return _unwrap_state_dict(inner)
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "backbone.", "encoder."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_safetensors(path: Path, opened: os.stat_result) -> dict[str, torch.Tensor]:
    """Tensors of ``path`` (memory-mapped by safetensors, which opens it by name), after
    checking that the name still is the regular file checked through ``opened``."""
    from safetensors.torch import load_file

    now = os.stat(path)
    if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino) or not stat.S_ISREG(
            now.st_mode):
        raise BackboneWeightsError(f"backbone weights file {path} was replaced while being "
                                   "opened; run again")
    return load_file(str(path))


def load_local_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into a timm ViT, never unpickling arbitrary objects.

    Accepts safetensors, or ``.pth/.pt/.bin`` files holding tensors only
    (``torch.load(weights_only=True)``), bare or wrapped in ``state_dict``,
    ``model`` or DINO's ``teacher``. Original-format checkpoints (DINO, DINOv2)
    are converted by timm's own ``checkpoint_filter_fn`` for the architecture.

    Raises:
        BackboneWeightsError: missing file, not a regular file (a directory, FIFO or
            device, refused before a byte is read), unreadable file, or weights that do
            not fit the architecture (the message lists the first offending keys).
    """
    path = Path(path)
    # Opened without blocking and refused unless a regular file: a FIFO would make
    # torch/safetensors wait forever for a writer, a device would be read endlessly.
    try:
        fd, opened = open_regular(path, "backbone weights file")
    except UserFileError as err:
        if err.errno == errno.ENOENT:
            raise BackboneWeightsError(
                f"backbone weights file not found: {path}. Pass an existing file to "
                "--backbone-weights, 'hub' to download, or 'random' for a smoke run."
            ) from None
        raise BackboneWeightsError(
            f"{err}. Pass a weights file (safetensors or a torch tensor checkpoint) to "
            "--backbone-weights, 'hub' to download, or 'random' for a smoke run."
        ) from None
    try:
        with os.fdopen(fd, "rb") as handle:
            if path.suffix == ".safetensors":
                raw = _load_safetensors(path, opened)
            else:  # read from the checked descriptor, not the name again
                raw = torch.load(handle, map_location="cpu", weights_only=True)
    except BackboneWeightsError:
        raise
    except Exception as err:  # noqa: BLE001 - report any decoder failure the same way
        raise BackboneWeightsError(
            f"could not read backbone weights {path}: {err}. Only tensor checkpoints "
            "are accepted (safetensors, or torch files loadable with weights_only=True)."
        ) from err
    if not isinstance(raw, dict):
        raise BackboneWeightsError(f"{path} does not hold a state dict (found {type(raw)})")
    state = _unwrap_state_dict(raw)
    module = __import__(type(model).__module__, fromlist=["checkpoint_filter_fn"])
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    result = model.load_state_dict(state, strict=False)
    # The classifier is unused (num_classes=0), so its keys may be missing or extra.
    missing = [k for k in result.missing_keys if not k.startswith(("head", "fc_norm"))]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(("head", "fc_norm"))]
    if missing or unexpected:
        raise BackboneWeightsError(
            f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}. Check that --backbone names the "
            "architecture these weights were trained for."
        )


def create_vit(config: BackboneConfig) -> nn.Module:
    """Build the timm ViT named by ``config`` with the requested weights.

    ``dynamic_img_size=True`` makes timm interpolate position embeddings for
    any input grid, so images of any size work.
    """
    check_arch_overrides(config.arch_overrides)
    kwargs = dict(num_classes=0, dynamic_img_size=True, **config.arch_overrides)
    if config.weights == "embedded":
        # The caller loads weights stored in a segeig checkpoint right after.
        return timm.create_model(config.name, pretrained=False, **kwargs)
    if config.weights == "random":
        logger.warning(
            "BACKBONE %s HAS RANDOM WEIGHTS: segments will be meaningless. "
            "Use only for tests and smoke runs.",
            config.name,
        )
        return timm.create_model(config.name, pretrained=False, **kwargs)
    if config.weights == "hub":
        try:
            return timm.create_model(config.name, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - network/cache errors come in many types
            raise BackboneWeightsError(
                f"could not obtain pretrained weights for {config.name} from the "
                f"Hugging Face hub ({type(err).__name__}: {err}). Offline options: "
                "--backbone-weights PATH (a local checkpoint file), or "
                "--backbone-weights random (meaningless segments, smoke runs only)."
            ) from err
    model = timm.create_model(config.name, pretrained=False, **kwargs)
    load_local_weights(model, config.weights)
    return model


class Backbone(nn.Module):
    """Frozen timm ViT returning the three patch-token maps the head reads.

    The wrapped network has no gradients and stays in eval mode even when a
    parent module is put in train mode (dropout/drop-path must never run).

    Args:
        config: which model and weights.
        vit: an already-built timm ViT (skips :func:`create_vit`; used when
            loading checkpoints whose backbone weights come separately).
    """

    def __init__(self, config: BackboneConfig, vit: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.vit = vit if vit is not None else create_vit(config)
        if not hasattr(self.vit, "forward_intermediates"):
            raise ValueError(f"{config.name} is not a timm ViT with forward_intermediates")
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.depth = len(self.vit.blocks)
        self.layer_indices = (0, self.depth // 2, self.depth - 1)
        self.patch_size = int(self.vit.patch_embed.patch_size[0])
        self.embed_dim = int(self.vit.embed_dim)
        cfg = self.vit.pretrained_cfg or {}
        self.mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        if config.kernel_features == "keys" and self.depth < 2:
            raise ValueError("kernel_features='keys' needs a ViT with at least 2 blocks")

    def train(self, mode: bool = True) -> Backbone:  # noqa: D102 - see class docstring
        super().train(mode)
        self.vit.eval()
        return self

    @property
    def feature_dim(self) -> int:
        """Channels of the head input, 3·D."""
        return 3 * self.embed_dim

    def _last_block_keys(self, spatial: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Attention keys of the last block from its input tokens.

        Computed directly rather than with a forward hook, so concurrent
        forwards (the web demo's threads) share no state.

        Args:
            spatial: ``B×D×h×w`` output of block ``depth − 2``.
            prefix: ``B×P×D`` class/register tokens of the same block.

        Returns:
            ``B×D×h×w`` keys of the patch tokens.
        """
        b, d, h, w = spatial.shape
        tokens = torch.cat([prefix, spatial.flatten(2).transpose(1, 2)], dim=1)
        block = self.vit.blocks[-1]
        # qkv output is B×T×3D laid out as [q | k | v].
        keys = block.attn.qkv(block.norm1(tokens))[..., d : 2 * d]
        k_norm = getattr(block.attn, "k_norm", None)
        if k_norm is not None and not isinstance(k_norm, nn.Identity):
            heads = block.attn.num_heads
            keys = k_norm(keys.reshape(b, -1, heads, d // heads)).reshape(b, -1, d)
        keys = keys[:, prefix.shape[1]:]
        return keys.float().transpose(1, 2).reshape(b, d, h, w)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an input of ``height×width`` pixels (after padding)."""
        return math.ceil(height / self.patch_size), math.ceil(width / self.patch_size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` float in [0, 1] → normalised with the model's own mean/std."""
        return (images - self._mean) / self._std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        """Extract patch features.

        Args:
            images: ``B×3×H×W`` float RGB in [0, 1], any H, W ≥ 1. Inputs are
                zero-padded (after normalisation) at the bottom/right to a
                multiple of the patch size; the maps then cover
                ``ceil(H/p)×ceil(W/p)`` patches.

        Returns:
            :class:`BackboneFeatures` with float32 maps of ``B×D×h×w``.
        """
        x = self.normalize(images)
        h, w = self.grid_size(x.shape[-2], x.shape[-1])
        pad_h, pad_w = h * self.patch_size - x.shape[-2], w * self.patch_size - x.shape[-1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        keys = self.config.kernel_features == "keys"
        indices = sorted(set(self.layer_indices) | ({self.depth - 2} if keys else set()))
        maps = self.vit.forward_intermediates(
            x, indices=indices, norm=False, output_fmt="NCHW", intermediates_only=True,
            return_prefix_tokens=keys,
        )
        by_index = dict(zip(indices, maps, strict=True))
        first, middle, last = (by_index[i] for i in self.layer_indices)
        if keys:
            kernel = self._last_block_keys(*by_index[self.depth - 2])
            first, middle, last = first[0], middle[0], last[0]
        first, middle, last = first.float(), middle.float(), last.float()
        # The final output is the normed one; timm's norm is a LayerNorm over channels.
        last = self.vit.norm(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).float()
        if not keys:
            kernel = last
        return BackboneFeatures(layers=(first, middle, last.contiguous()), kernel=kernel)
