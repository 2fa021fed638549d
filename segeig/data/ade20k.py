"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes.

Raw annotation ids: 0 = "other/unlabelled", 1..150 = classes. segeig maps them
to 0 -> 255 (ignore) and k -> k - 1, the usual "reduce zero label" convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segeig.data.base import (
    DatasetLayoutError,
    SegDataset,
    Transform,
    images_and_annotations,
    label_lut,
    split_alias,
)
from segeig.data.classes import ADE20K_CLASSES, ADE20K_PALETTE

LAYOUT = """\
  ROOT/ADEChallengeData2016/        (ROOT may also be this folder itself)
    images/training/ADE_train_*.jpg
    images/validation/ADE_val_*.jpg
    annotations/training/ADE_train_*.png
    annotations/validation/ADE_val_*.png"""

_SPLITS = {"train": "training", "training": "training", "val": "validation",
           "validation": "validation"}

# 0 -> 255, 1..150 -> 0..149; anything else (not in the release) -> 255.
_LUT = label_lut({k: k - 1 for k in range(1, len(ADE20K_CLASSES) + 1)})


def resolve_root(root: Path) -> Path:
    """Return the ADEChallengeData2016 folder for ``root`` (it or its parent)."""
    for cand in (root / "ADEChallengeData2016", root):
        if (cand / "images").is_dir():
            return cand
    raise DatasetLayoutError(
        "ade20k", root, "no 'ADEChallengeData2016/images' (or 'images') directory", LAYOUT
    )


class ADE20K(SegDataset):
    """ADE20K SceneParsing, 150 classes (labels 0..149, 255 ignore).

    Args:
        root: folder holding ``ADEChallengeData2016/`` or that folder itself.
        split: "train"/"training" or "val"/"validation".
        with_labels: read annotations (False for training: never touches them).
        num_classes: must be 150 or None.
        transform: optional ``Sample -> Any``.
    """

    name = "ade20k"
    splits = ("train", "val")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        with_labels: bool = True,
        num_classes: int | None = None,
        transform: Transform | None = None,
    ):
        if num_classes not in (None, len(ADE20K_CLASSES)):
            raise ValueError(f"ade20k has {len(ADE20K_CLASSES)} classes, got {num_classes}")
        base = resolve_root(Path(root))
        sub = split_alias(split, _SPLITS, self.name)
        items = images_and_annotations(self.name, base, sub, LAYOUT, with_labels)
        super().__init__(base, sub, items, with_labels=with_labels,
                         class_names=ADE20K_CLASSES, palette=ADE20K_PALETTE, transform=transform,
                         image_dir=base / "images" / sub)

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        return _LUT[raw]

