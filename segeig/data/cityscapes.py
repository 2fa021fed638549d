"""Cityscapes (fine annotations), 27 or 19 classes.

* ``num_classes=27`` (default; STEGO "stego" protocol): labelIds 7..33 -> 0..26
  (``labelId - 7``); void ids 0..6 and the license plate (-1, stored as 255)
  -> 255.
* ``num_classes=19`` ("full" protocol): the official trainIds, read from
  ``*_gtFine_labelTrainIds.png`` when present, otherwise computed from
  ``*_gtFine_labelIds.png`` with the official labelId -> trainId table.
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
    CITYSCAPES_19_CLASSES,
    CITYSCAPES_19_PALETTE,
    CITYSCAPES_27_CLASSES,
    CITYSCAPES_27_PALETTE,
    CITYSCAPES_FIRST_NONVOID,
    CITYSCAPES_ID_TO_TRAINID,
)
from segeig.labelmaps import read_label

LAYOUT = """\
  ROOT/                                  (or ROOT/cityscapes/)
    leftImg8bit/{train,val,test}/<city>/<stem>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<stem>_gtFine_labelIds.png
    gtFine/{train,val,test}/<city>/<stem>_gtFine_labelTrainIds.png   (optional)"""

_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val",
           "test": "test"}
_IMG_SUFFIX = "_leftImg8bit.png"
_IDS_SUFFIX = "_gtFine_labelIds.png"
_TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"

_LUT_27 = label_lut({i: i - CITYSCAPES_FIRST_NONVOID
                     for i in range(CITYSCAPES_FIRST_NONVOID, CITYSCAPES_FIRST_NONVOID + 27)})
_LUT_IDS_TO_19 = label_lut(CITYSCAPES_ID_TO_TRAINID)
_LUT_TRAINIDS = label_lut(list(range(19)))  # sanitise: anything outside 0..18 -> 255


def resolve_root(root: Path) -> Path:
    """Return the folder holding ``leftImg8bit/`` (``root`` or ``root/cityscapes``)."""
    for cand in (root, root / "cityscapes"):
        if (cand / "leftImg8bit").is_dir():
            return cand
    raise DatasetLayoutError("cityscapes", root, "no 'leftImg8bit' directory", LAYOUT)


class Cityscapes(SegDataset):
    """Cityscapes with gtFine labels (see module docstring for the two protocols).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: "train" (2975), "val" (500) or "test" (1525; its labels are void).
        with_labels: read labels (False for training: never touches them).
        num_classes: 27 (default) or 19.
        transform: optional ``Sample -> Any``.

    Sample names look like ``"val/frankfurt/frankfurt_000000_000294"``.
    """

    name = "cityscapes"
    #: Splits checked by verify_layout; "test" (void labels) is accepted too.
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
        num_classes = 27 if num_classes is None else num_classes
        if num_classes not in (19, 27):
            raise ValueError(f"cityscapes num_classes must be 19 or 27, got {num_classes}")
        self._n = num_classes
        base = resolve_root(Path(root))
        sub = split_alias(split, _SPLITS, self.name)
        img_dir = base / "leftImg8bit" / sub
        if not img_dir.is_dir():
            raise DatasetLayoutError(self.name, base, f"missing directory 'leftImg8bit/{sub}'",
                                     LAYOUT, describe_dir(base / "leftImg8bit"))
        images = sorted(img_dir.rglob("*" + _IMG_SUFFIX),
                        key=lambda p: p.relative_to(img_dir).as_posix())
        if not images:
            raise DatasetLayoutError(self.name, base,
                                     f"no '*{_IMG_SUFFIX}' files under 'leftImg8bit/{sub}'",
                                     LAYOUT, describe_dir(img_dir))
        stems = [p.relative_to(img_dir).as_posix()[: -len(_IMG_SUFFIX)] for p in images]
        items = [Item(f"{sub}/{s}", p) for s, p in zip(stems, images, strict=True)]
        if with_labels:
            gt_dir = base / "gtFine" / sub
            if not gt_dir.is_dir():
                raise DatasetLayoutError(self.name, base, f"missing directory 'gtFine/{sub}'",
                                         LAYOUT)
            items = check_labels_present(
                self.name, base,
                [Item(it.name, it.image, self._label_path(gt_dir, s))
                 for s, it in zip(stems, items, strict=True)],
                LAYOUT,
            )
        names, palette = (
            (CITYSCAPES_27_CLASSES, CITYSCAPES_27_PALETTE) if num_classes == 27
            else (CITYSCAPES_19_CLASSES, CITYSCAPES_19_PALETTE)
        )
        super().__init__(base, sub, items, with_labels=with_labels, class_names=names,
                         palette=palette, transform=transform, image_dir=img_dir)

    def _label_path(self, gt_dir: Path, stem: str) -> Path:
        if self._n == 19:
            train_ids = gt_dir / (stem + _TRAINIDS_SUFFIX)
            if train_ids.is_file():
                return train_ids
        return gt_dir / (stem + _IDS_SUFFIX)

    def read_target(self, item: Item) -> np.ndarray:
        if item.label is None:
            raise RuntimeError(f"cityscapes: no label path recorded for {item.name}")
        raw = read_label(item.label)
        if self._n == 27:
            return _LUT_27[raw]
        if item.label.name.endswith(_TRAINIDS_SUFFIX):
            return _LUT_TRAINIDS[raw]
        return _LUT_IDS_TO_19[raw]
