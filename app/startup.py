"""Which checkpoint the demo serves, fitting one on the bundled examples if needed.

Order of preference (first that exists wins):

1. the checkpoint given explicitly (``segeig demo --checkpoint CKPT``);
2. ``WEIGHTS_DIR/checkpoint.safetensors`` (a checkpoint you put there);
3. ``WEIGHTS_DIR/demo/<backbone>-<weights>/checkpoint.safetensors``, a
   checkpoint an earlier start fitted for the same backbone;
4. a checkpoint fitted now on the bundled example images with
   ``segeig.train.fit_or_reuse_checkpoint`` and written to the place of (3), so the
   next start is fast.

Nothing is written anywhere but (3). The fitted cache is keyed by backbone so
that, e.g., a smoke run with random backbone weights never shadows a real one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

from segeig.backbone import BackboneWeightsError
from segeig.checkpoint import CHECKPOINT_NAME, resolve_checkpoint_path
from segeig.config import BackboneConfig
from segeig.data import list_images
from segeig.train import fit_or_reuse_checkpoint

logger = logging.getLogger(__name__)

#: ``progress(step, total, info)`` as taken by ``segeig.train.fit_images``.
Progress = Callable[[int, int, dict], None]

#: Bundled example images: ``examples/`` beside the ``app`` package in a source
#: checkout (an installed package has none; see :func:`find_examples_dir`).
DEFAULT_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def find_examples_dir() -> Path:
    """The bundled examples: beside the ``app`` package, else ``./examples``.

    The second place serves installs that keep the repository's folders in
    the working directory but the package in site-packages (the Docker image).
    Returns the first candidate when neither exists.
    """
    for candidate in (DEFAULT_EXAMPLES, Path.cwd() / "examples"):
        if candidate.is_dir():
            return candidate
    return DEFAULT_EXAMPLES


def backbone_slug(backbone: BackboneConfig) -> str:
    """A directory name identifying a backbone and its weight source."""
    weights = backbone.weights
    if weights not in ("hub", "random", "embedded"):
        digest = hashlib.sha256(str(Path(weights).resolve()).encode()).hexdigest()[:10]
        weights = f"file-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{backbone.name}-{weights}")


def fitted_checkpoint_path(weights_dir: str | Path, backbone: BackboneConfig) -> Path:
    """Where a start-up fit for ``backbone`` is cached."""
    return Path(weights_dir) / "demo" / backbone_slug(backbone) / CHECKPOINT_NAME


def example_images(examples_dir: str | Path | None) -> list[Path]:
    """The bundled example images (sorted), or ``[]`` when the folder is absent."""
    if examples_dir is None or not Path(examples_dir).is_dir():
        return []
    return sorted(list_images(examples_dir))


def find_or_fit_checkpoint(
    checkpoint: str | Path | None,
    weights_dir: str | Path,
    backbone: BackboneConfig,
    examples_dir: str | Path | None = DEFAULT_EXAMPLES,
    device: str = "auto",
    progress: Progress | None = None,
) -> tuple[Path, str]:
    """Locate the checkpoint to serve, fitting one when there is none.

    Args:
        checkpoint: explicit checkpoint file or directory, or None.
        weights_dir: the ``weights/`` folder searched (and written, see module doc).
        backbone: backbone to fit with when no checkpoint exists.
        examples_dir: images to fit on.
        device: device for fitting.
        progress: forwarded to the fit (``progress(step, total, info)``).

    Returns:
        ``(checkpoint path, how)`` with ``how`` one of ``"given"``,
        ``"weights"``, ``"cached fit"``, ``"fitted"``.

    Raises:
        CheckpointError: an explicit checkpoint does not exist.
        FileNotFoundError: nothing to load and no example images to fit on.
        BackboneWeightsError: fitting could not obtain the backbone weights.
    """
    if checkpoint is not None:
        return resolve_checkpoint_path(checkpoint), "given"
    placed = Path(weights_dir) / CHECKPOINT_NAME
    if placed.is_file():
        return placed, "weights"
    cached = fitted_checkpoint_path(weights_dir, backbone)
    images = example_images(examples_dir)
    if not images and not cached.is_file():
        raise FileNotFoundError(
            f"no checkpoint to serve: none given, none at {placed}, and no example images "
            f"in {examples_dir} to fit one on. Pass --checkpoint CKPT (from `segeig train`)."
        )
    # Fit-or-reuse is decided where `segeig segment` decides it.
    path, fitted = fit_or_reuse_checkpoint(cached.parent, images, backbone=backbone,
                                           device=device, progress=progress)
    return path, "fitted" if fitted else "cached fit"


def weights_error_text(backbone_name: str, weights: str | None = "hub") -> str:
    """Markdown for the page served when the backbone weights cannot be obtained.

    Args:
        backbone_name: the timm model name.
        weights: the requested source (``hub``/None or a local file); only
            its kind is shown, never the path.

    Deliberately generic (no exception text): the details, which may name
    server paths, go to the server log.
    """
    if weights in (None, "hub"):
        cause = ("segeig downloads backbone weights from the Hugging Face hub on first use, "
                 "and that failed (no network, or the hub refused).")
    else:
        cause = ("The backbone weights file given with `--backbone-weights` could not be used "
                 "(missing, unreadable, or made for another architecture).")
    return (
        f"## The demo could not start: backbone weights for `{backbone_name}` are unavailable\n\n"
        f"{cause} The server log has the details.\n\n"
        "**Offline options** (restart the demo with one of them):\n\n"
        "* `segeig demo --backbone-weights PATH`: a backbone checkpoint file on this machine "
        "(`.safetensors`, or a tensors-only `.pth`, e.g. DINO's "
        "`dino_deitsmall16_pretrain.pth`).\n"
        "* Fill the Hugging Face cache on a connected machine (run the demo once there) and "
        "copy it here (`HF_HOME`, default `~/.cache/huggingface`); then set "
        "`HF_HUB_OFFLINE=1`.\n"
        "* `segeig demo --checkpoint CKPT` with a checkpoint whose backbone weights are "
        "embedded in it.\n"
        "* `segeig demo --backbone-weights random`: a smoke test only, segments are "
        "meaningless.\n"
    )


def is_weights_error(err: BaseException) -> bool:
    """True when ``err`` (or its cause chain) is a :class:`BackboneWeightsError`."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, BackboneWeightsError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False
