"""Command-line pieces shared by several subcommands."""

from __future__ import annotations

import argparse
import os

from segeig.config import DEFAULT_BACKBONE


def parse_arch(values: list[str] | None) -> dict | None:
    """``["depth=4", "embed_dim=48"]`` → ``{"depth": 4, "embed_dim": 48}``."""
    if not values:
        return None
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--backbone-arch expects KEY=VALUE, got {item!r}")
        for cast in (int, float):
            try:
                out[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


#: ``--crf-backend`` choices, spelled out here because ``--help`` must not
#: import segeig.crf (numpy, torch); tests check they equal segeig.crf.BACKENDS.
CRF_BACKENDS = ("auto", "torch", "densecrf")


def add_crf_backend_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--crf-backend auto|torch|densecrf`` for ``segment``, ``evaluate`` and ``demo``."""
    parser.add_argument("--crf-backend", choices=CRF_BACKENDS, default="auto",
                        help="dense CRF implementation: torch (CPU or GPU), densecrf "
                             "(pydensecrf, CPU only) or auto (default: the fastest one "
                             "available for the device)")


def add_backbone_arguments(parser: argparse.ArgumentParser, title: str = "backbone",
                           weights_help: str | None = None) -> None:
    """Backbone flags shared by ``train``, ``fit``, ``segment`` and ``demo``."""
    group = parser.add_argument_group(title)
    group.add_argument("--backbone", metavar="NAME",
                       help=f"timm model name (default {DEFAULT_BACKBONE})")
    group.add_argument("--backbone-weights", metavar="hub|random|PATH",
                       help=weights_help or "where the backbone weights come from: hub "
                            "(default; downloads once), a local file, or random (meaningless "
                            "segments, for smoke runs only)")
    group.add_argument("--backbone-arch", metavar="KEY=VALUE", action="append",
                       help="timm architecture override, repeatable (e.g. depth=4)")
    group.add_argument("--kernel-features", choices=("final", "keys"),
                       help="features of the graph kernel (default final)")


def backbone_config(args: argparse.Namespace):
    """A BackboneConfig from the backbone flags (unset flags keep the defaults)."""
    from dataclasses import replace

    from segeig.config import BackboneConfig

    changes = {key[len("backbone_"):]: value
               for key, value in backbone_overrides(args).items() if value is not None}
    return replace(BackboneConfig(), **changes)


def backbone_overrides(args: argparse.Namespace) -> dict:
    return {"backbone_name": args.backbone, "backbone_weights": args.backbone_weights,
            "backbone_arch_overrides": parse_arch(args.backbone_arch),
            "backbone_kernel_features": args.kernel_features}


def add_resolution_argument(parser: argparse.ArgumentParser) -> None:
    """``--resolution N``: override the checkpoint's working resolution."""
    parser.add_argument(
        "--resolution", type=int, default=None, metavar="PX",
        help="working resolution (short side in pixels) images are processed at; default: "
             "the one the checkpoint was trained at (see `segeig info`); 0: each image at "
             "its own size")


def check_resolution(value: int | None) -> None:
    """Reject a negative ``--resolution`` before any work."""
    if value is not None and not 0 <= value <= 16384:
        raise ValueError(f"--resolution must be between 0 and 16384 pixels, got {value}")


def add_cache_arguments(parser: argparse._ActionsContainer) -> None:
    """``--no-feature-cache`` and ``--feature-cache DIR`` (TrainConfig's
    ``feature_cache`` and ``feature_cache_dir``; ``None`` when not given)."""
    parser.add_argument("--no-feature-cache", dest="feature_cache", action="store_const",
                        const=False,
                        help="run the backbone on every training crop instead of caching its "
                             "features once per image and view")
    parser.add_argument("--feature-cache", dest="feature_cache_dir", metavar="DIR",
                        help="where to keep the feature cache (default: inside the output "
                             "directory)")


def check_out_dir(path: str, allow_file_suffix: str | None = None) -> None:
    """Refuse an ``--out`` that names an existing file, before any work.

    Args:
        path: the ``--out`` value.
        allow_file_suffix: a suffix with which ``--out`` names a file to write
            (``.safetensors`` for ``fit`` and ``label``), not a directory.
    """
    if allow_file_suffix and path.endswith(allow_file_suffix):
        return
    if os.path.lexists(path) and not os.path.isdir(path):
        hint = f", or a {allow_file_suffix} path" if allow_file_suffix else ""
        raise ValueError(f"--out {path} is a file; give a directory{hint} (the directory is "
                         "created when missing)")
