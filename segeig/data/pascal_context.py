"""PASCAL-Context on VOC2010 (mmsegmentation-converted labels).

Raw label ids: 0 = background, 1..59 = the 59 frequent classes (produced by
``scripts/prepare_pascal_context.py`` or mmseg's converter). Two protocols:

* ``num_classes=59`` (default; STEGO/ReCo "stego" protocol): background -> 255
  (ignored), k -> k - 1.
* ``num_classes=60`` ("full" protocol): ids kept, background is class 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segeig.data.base import (
    DatasetLayoutError,
    Item,
    SegDataset,
    Transform,
    check_labels_present,
    describe_dir,
    label_lut,
    split_alias,
)
from segeig.data.classes import (
    PASCAL_CONTEXT_59_CLASSES,
    PASCAL_CONTEXT_59_PALETTE,
    PASCAL_CONTEXT_60_CLASSES,
    PASCAL_CONTEXT_60_PALETTE,
)
from segeig.data.files import read_list_file

LAYOUT = """\
  ROOT/VOCdevkit/VOC2010/           (ROOT may also be VOCdevkit/ or VOC2010/)
    JPEGImages/<id>.jpg
    SegmentationClassContext/<id>.png      (0 = background, 1..59 classes)
    ImageSets/SegmentationContext/train.txt, val.txt   (one <id> per line)"""

_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val"}

_LUTS = {
    59: label_lut({k: k - 1 for k in range(1, 60)}),  # 0 (background) and >59 -> 255
    60: label_lut(list(range(60))),  # >59 -> 255
}


def resolve_root(root: Path) -> Path:
    """Return the VOC2010 folder for ``root`` (its grandparent, parent or itself)."""
    for cand in (root / "VOCdevkit" / "VOC2010", root / "VOC2010", root):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DatasetLayoutError(
        "pascal_context", root, "no 'VOCdevkit/VOC2010/JPEGImages' directory", LAYOUT
    )


#: Largest split file read (PASCAL-Context's train.txt is ~50 kB).
MAX_SPLIT_FILE_BYTES = 64 << 20


def read_split_file(path: Path) -> list[str]:
    """Image ids listed in an ImageSets split file (blank lines ignored).

    Raises:
        ValueError: not a regular file, over :data:`MAX_SPLIT_FILE_BYTES`, or not UTF-8.
    """
    return read_list_file(path, MAX_SPLIT_FILE_BYTES, "split list")


class PascalContext(SegDataset):
    """PASCAL-Context, 59 or 60 classes (see module docstring).

    Args:
        root: folder holding ``VOCdevkit/``, or ``VOCdevkit/`` or ``VOC2010/``.
        split: "train" (4996 images) or "val" (5104 images).
        with_labels: read labels (False for training: never touches them).
        num_classes: 59 (background ignored; default) or 60 (background = 0).
        transform: optional ``Sample -> Any``.
    """

    name = "pascal_context"
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
        num_classes = 59 if num_classes is None else num_classes
        if num_classes not in _LUTS:
            raise ValueError(f"pascal_context num_classes must be 59 or 60, got {num_classes}")
        self._lut = _LUTS[num_classes]
        base = resolve_root(Path(root))
        sub = split_alias(split, _SPLITS, self.name)
        split_file = base / "ImageSets" / "SegmentationContext" / f"{sub}.txt"
        if not split_file.is_file():
            raise DatasetLayoutError(
                self.name, base, f"missing split file 'ImageSets/SegmentationContext/{sub}.txt'",
                LAYOUT, describe_dir(split_file.parent),
            )
        ids = read_split_file(split_file)
        if not ids:
            raise DatasetLayoutError(self.name, base, f"split file '{split_file}' is empty", LAYOUT)
        items = [Item(i, base / "JPEGImages" / f"{i}.jpg") for i in ids]
        missing = [it for it in items if not it.image.is_file()]
        if missing:
            shown = ", ".join(it.name for it in missing[:10])
            raise DatasetLayoutError(
                self.name, base,
                f"{len(missing)} of {len(items)} images listed in {sub}.txt are missing "
                f"from JPEGImages/ (e.g. {shown})", LAYOUT,
            )
        if with_labels:
            lbl_dir = base / "SegmentationClassContext"
            if not lbl_dir.is_dir():
                raise DatasetLayoutError(
                    self.name, base,
                    "missing directory 'SegmentationClassContext' (create it with "
                    "scripts/prepare_pascal_context.py)", LAYOUT,
                )
            items = check_labels_present(
                self.name, base, [Item(it.name, it.image, lbl_dir / f"{it.name}.png")
                                  for it in items], LAYOUT,
            )
        names, palette = (
            (PASCAL_CONTEXT_59_CLASSES, PASCAL_CONTEXT_59_PALETTE) if num_classes == 59
            else (PASCAL_CONTEXT_60_CLASSES, PASCAL_CONTEXT_60_PALETTE)
        )
        super().__init__(base, sub, items, with_labels=with_labels, class_names=names,
                         palette=palette, transform=transform)

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        return self._lut[raw]
