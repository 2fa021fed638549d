"""Evaluation protocols as data: how images and labels are sized for each benchmark.

Three protocols (docs/evaluation.md, "Protocols"); always report which one a
number comes from.

* ``stego`` (STEGO/ReCo style): image, label and any saved prediction are
  resized so the short side is 320 with nearest neighbour and centre-cropped
  to 320×320, exactly as the reference code's torchvision
  ``Resize(320, NEAREST)`` + ``CenterCrop(320)`` on PIL images do (long side
  truncated, crop offset rounded; ``resample="nearest"``); one forward pass,
  scoring on the 320×320 crop.
* ``full`` (Segmenter/mmseg style): resize the short side to the dataset's
  size — the checkpoint's working resolution when it has one (the benchmark
  presets' working resolutions are exactly these sizes) — slide a window over
  it and average the scores of overlapping windows on the patch grid.
  Scoring happens at the **original label resolution**:
  the grid scores are sampled bilinearly at every original pixel (the mmseg
  convention of resizing logits back to the label size) — labels are never
  resized, so no label pixel is lost or invented by the protocol.
* ``native`` (default for ``custom``): each image predicted exactly as
  ``segeig segment`` would — brought to the checkpoint's working resolution
  (its own size for checkpoints without one), a sliding window (windows of
  1024 px, stride 2/3) only when a side still exceeds 1024 px — and scored
  at its original resolution.

Classes per protocol: ``stego`` uses Pascal Context 59 (background ignored)
and Cityscapes 27; ``full`` and ``native`` use Pascal Context 60 (background
kept), Cityscapes 19 trainIds; ADE20K is always 150 (its ``stego`` row is a
segeig choice: the paper evaluates ADE20K only with ``full``). ``custom`` takes
its classes from the dataset (classes.txt or a label scan). The unsupervised
benchmarks ``cocostuff27``, ``cityscapes27`` and ``potsdam3`` (27 / 27 / 3
classes) default to ``stego`` (Potsdam's 200 px tiles are upsampled to 320)
and also offer ``native``; they have no ``full`` row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segeig.config import (
    DEFAULT_MAX_SIDE,
    DEFAULT_PROTOCOL,
    LABELLED_DATASETS,
    PROTOCOL_NAMES,
    WorkingResolution,
)
from segeig.data import SegDataset
from segeig.data.base import Sample
from segeig.data.registry import build_dataset
from segeig.transforms import center_crop, resize_short_side, to_working_resolution

__all__ = [
    "PROTOCOLS",
    "Prepared",
    "Protocol",
    "load_eval_dataset",
    "prepare",
    "reference_size",
    "resolve_protocol",
    "size_label",
]


@dataclass(frozen=True)
class Protocol:
    """How one dataset is evaluated under one protocol.

    Attributes:
        name: ``"stego"``, ``"full"`` or ``"native"``.
        dataset: dataset registry name (``segeig.data.DATASETS``).
        num_classes: classes scored; ``None`` = whatever the dataset says (custom).
        short_side: resize the image so its short side is this many pixels;
            ``None`` keeps the native size.
        crop: centre-crop side after resizing (``None`` = whole image).
        window: sliding-window side in pixels on the resized image (``None`` =
            one pass unless a side exceeds ``max_side``).
        stride: sliding-window step in pixels.
        max_side: with ``window=None``, slide (windows of ``max_side``, stride
            2/3) only when a side exceeds it; ``None`` never slides.
        score_at_original: sample the scores at the original label resolution
            (``full``, ``native``) rather than scoring at the network input's
            resolution.
        working_resolution: images are resized to the checkpoint's working
            resolution when it has one (instead of ``short_side``).
        resample: ``"smooth"``: images shrink with area and grow with bilinear
            interpolation, labels use nearest neighbour (:mod:`segeig.transforms`);
            ``"nearest"``: image, label and prediction all nearest neighbour with the
            reference code's geometry (see :func:`reference_size`).
    """

    name: str
    dataset: str
    num_classes: int | None
    short_side: int | None = None
    crop: int | None = None
    window: int | None = None
    stride: int | None = None
    max_side: int | None = None
    score_at_original: bool = False
    working_resolution: bool = False
    resample: str = "smooth"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return asdict(self)

    def describe(self) -> str:
        """One line such as ``full: short side 520, window 480/320, PC-60``."""
        parts = []
        if self.working_resolution:
            fallback = f", else short side {self.short_side}" if self.short_side else ""
            parts.append(f"at the checkpoint's working resolution{fallback}")
        elif self.short_side:
            how = ", nearest neighbour" if self.resample == "nearest" else ""
            parts.append(f"short side {self.short_side}{how}")
        if self.crop:
            parts.append(f"centre crop {self.crop}")
        if self.window:
            parts.append(f"sliding window {self.window}, stride {self.stride}")
        elif self.max_side:
            parts.append(f"native size, sliding window above {self.max_side} px")
        parts.append("scored at original resolution" if self.score_at_original
                     else "scored at network input resolution")
        classes = f"{self.num_classes} classes" if self.num_classes else "dataset classes"
        return f"{self.name} ({self.dataset}): {', '.join(parts)}; {classes}"



#: The unsupervised-segmentation benchmarks (docs/evaluation.md, "Datasets"): their
#: classes under ``stego`` (their table protocol) and ``native``; no ``full`` row,
#: since no paper reports one for them.
_STEGO_BENCHMARKS = {"cocostuff27": 27, "cityscapes27": 27, "potsdam3": 3}

_FULL_CLASSES = {"pascal_context": 60, "ade20k": 150, "cityscapes": 19, "custom": None}


def _table() -> dict[tuple[str, str], Protocol]:
    table: dict[tuple[str, str], Protocol] = {}
    stego_classes = {"pascal_context": 59, "ade20k": 150, "cityscapes": 27, "custom": None}
    for dataset, classes in stego_classes.items():
        table["stego", dataset] = Protocol("stego", dataset, classes, short_side=320, crop=320,
                                           resample="nearest")
    # (short side, window, stride) of the full protocol (the table in docs/evaluation.md,
    # "Protocols"); custom gets ADE20K-like settings.
    full = {"pascal_context": (520, 480, 320), "ade20k": (512, 512, 512),
            "cityscapes": (1024, 768, 512), "custom": (512, 512, 341)}
    for dataset, (short, window, stride) in full.items():
        table["full", dataset] = Protocol("full", dataset, _FULL_CLASSES[dataset],
                                          short_side=short, window=window, stride=stride,
                                          score_at_original=True, working_resolution=True)
    for dataset, classes in _FULL_CLASSES.items():
        table["native", dataset] = Protocol("native", dataset, classes,
                                            max_side=DEFAULT_MAX_SIDE, score_at_original=True,
                                            working_resolution=True)
    for dataset, classes in _STEGO_BENCHMARKS.items():
        table["stego", dataset] = Protocol("stego", dataset, classes, short_side=320, crop=320,
                                           resample="nearest")
        table["native", dataset] = Protocol("native", dataset, classes,
                                            max_side=DEFAULT_MAX_SIDE, score_at_original=True,
                                            working_resolution=True)
    return table


#: ``(protocol name, dataset name) -> Protocol`` for every supported pair.
PROTOCOLS: dict[tuple[str, str], Protocol] = _table()


def resolve_protocol(name: str | None, dataset: str) -> Protocol:
    """The :class:`Protocol` for a protocol name (``None`` = the dataset's default).

    Raises:
        ValueError: unknown protocol or dataset name (the message lists valid ones).
    """
    key = dataset.lower().replace("-", "_")
    if key not in DEFAULT_PROTOCOL:
        raise ValueError(f"no evaluation protocol for dataset {dataset!r}; "
                         f"valid: {', '.join(LABELLED_DATASETS)}")
    name = name or DEFAULT_PROTOCOL[key]
    if name not in PROTOCOL_NAMES:
        raise ValueError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOL_NAMES)}")
    if (name, key) not in PROTOCOLS:
        valid = [p for p in PROTOCOL_NAMES if (p, key) in PROTOCOLS]
        raise ValueError(f"protocol {name!r} is not defined for {key}; valid: "
                         f"{', '.join(valid)}")
    return PROTOCOLS[name, key]


def load_eval_dataset(protocol: Protocol, root: str | Path, split: str = "val") -> SegDataset:
    """Build the labelled dataset a protocol scores (right class count and label ids).

    Raises:
        DatasetLayoutError: the root does not hold the dataset's layout.
    """
    return build_dataset(protocol.dataset, root, split, with_labels=True,
                         num_classes=protocol.num_classes)


@dataclass
class Prepared:
    """One sample sized for a protocol.

    Attributes:
        name: the sample's name.
        image: ``H_in×W_in×3`` uint8 RGB, what the network sees.
        eval_image: ``H×W×3`` uint8 RGB at the label's resolution (for the CRF
            and pictures); the same array as ``image`` unless ``score_at_original``.
        label: ``H×W`` uint8 class ids, 255 = ignore.
    """

    name: str
    image: np.ndarray
    eval_image: np.ndarray
    label: np.ndarray

    @property
    def in_size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    @property
    def out_size(self) -> tuple[int, int]:
        return self.label.shape[0], self.label.shape[1]


def reference_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(H, W)`` after torchvision's ``Resize(short)``: the short side becomes ``short``
    and the long side ``int(short * long / short_side)`` (truncated, not rounded)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def _resize(array: np.ndarray, protocol: Protocol, label: bool) -> np.ndarray:
    short = int(protocol.short_side or 0)
    if protocol.resample != "nearest":
        return resize_short_side(array, short, label=label)
    size = reference_size(array.shape[0], array.shape[1], short)
    if size == array.shape[:2]:
        return array
    # INTER_NEAREST_EXACT samples pixel centres like PIL's NEAREST (cv2's plain
    # INTER_NEAREST is shifted by half a pixel).
    return cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)


def _crop(array: np.ndarray, protocol: Protocol) -> np.ndarray:
    size = int(protocol.crop or 0)
    if protocol.resample != "nearest":
        return center_crop(array, size)
    # torchvision's CenterCrop: offsets int(round((side - size) / 2)).
    height, width = array.shape[:2]
    top = max(0, int(round((height - size) / 2.0)))
    left = max(0, int(round((width - size) / 2.0)))
    return array[top : top + size, left : left + size]


def size_label(label: np.ndarray, protocol: Protocol) -> np.ndarray:
    """A map of ids at the original image size (ground truth or a saved prediction),
    sized as the protocol scores it.

    Args:
        label: ``H×W`` integer ids (any integer dtype), the image's original size.
        protocol: the protocol.

    Returns:
        ``label`` itself when the protocol scores at the original resolution,
        else the resized (nearest neighbour, never blending ids) and cropped
        map, same dtype.
    """
    if protocol.score_at_original:
        return label
    if protocol.short_side is not None:
        label = _resize(label, protocol, label=True)
    if protocol.crop is not None:
        label = _crop(label, protocol)
    return label


def prepare(sample: Sample, protocol: Protocol,
            resolution: WorkingResolution | None = None) -> Prepared:
    """Size a dataset sample for a protocol (see module docstring).

    Args:
        sample: a labelled sample.
        protocol: how to size it.
        resolution: the checkpoint's working resolution (used by protocols
            with ``working_resolution``; ``None`` or short side 0: none).

    Raises:
        ValueError: the sample has no label (build the dataset with labels).
    """
    if sample.label is None:
        raise ValueError(f"sample {sample.name!r} has no label; evaluation needs a dataset "
                         "built with with_labels=True")
    image, label = sample.image, sample.label
    if protocol.working_resolution and resolution is not None and resolution.short > 0:
        return Prepared(sample.name, to_working_resolution(image, resolution), image, label)
    if protocol.score_at_original:
        # Labels are never resized: the network input is, the scores are sampled
        # back at every original pixel.
        net = _resize(image, protocol, label=False) if protocol.short_side else image
        return Prepared(sample.name, net, image, label)
    # Same geometry for image and label: the output size depends on the input
    # size alone, and nearest neighbour never blends ids.
    if protocol.short_side is not None:
        image = _resize(image, protocol, label=False)
    if protocol.crop is not None:
        image = _crop(image, protocol)
    return Prepared(sample.name, image, image, size_label(label, protocol))
