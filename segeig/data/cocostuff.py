"""COCO-Stuff-27 (``cocostuff27``): IIC's curated COCO-Stuff subset, 27 coarse classes.

Only images named in the curated lists belong to a split (the val list holds
2,175 ids); every other file under ``images/`` is never opened. Stored labels
are the official ``stuffthingmaps_trainval2017`` PNGs (uint8 fine ids 0..181,
0-based, 255 unlabelled), mapped to 27 coarse classes by the fixed table
:data:`segeig.data.classes.COCOSTUFF_FINE_TO_27`; 255 and any id outside the
table become 255 (ignored).
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
    COCOSTUFF_27_CLASSES,
    COCOSTUFF_27_PALETTE,
    COCOSTUFF_FINE_TO_27,
)
from segeig.data.lists import read_id_list

LAYOUT = """\
  ROOT/
    images/{train2017,val2017}/<id>.jpg
    annotations/{train2017,val2017}/<id>.png     (stuffthingmaps: fine ids 0..181, 255)
    curated/train2017/Coco164kFull_Stuff_Coarse.txt      (one <id> per line)
    curated/val2017/Coco164kFull_Stuff_Coarse_7.txt      (2,175 ids)"""

_SPLITS = {"train": "train2017", "train2017": "train2017", "training": "train2017",
           "val": "val2017", "val2017": "val2017", "validation": "val2017"}

#: The curated list of each split folder, relative to ``ROOT/curated/<split>/``.
CURATED_LISTS: dict[str, str] = {
    "train2017": "Coco164kFull_Stuff_Coarse.txt",
    "val2017": "Coco164kFull_Stuff_Coarse_7.txt",
}

#: Where the curated lists come from and how to rebuild them (missing-list errors).
CURATED_HINT = (
    "the curated lists are part of IIC's curated COCO-Stuff release (github.com/xu-ji/IIC, "
    "'datasets'; the same files ship in STEGO's and PiCIE's COCO-Stuff downloads): copy its "
    "'curated' folder into ROOT, or regenerate the lists deterministically from the "
    "annotations with 'python scripts/prepare_cocostuff27.py --root ROOT --regenerate-lists' "
    "(IIC's rule: keep an image when >= 75% of its pixels are stuff classes and both sides "
    "are >= 360 px)"
)

_LUT = label_lut(COCOSTUFF_FINE_TO_27)  # 182 entries; 182..255 -> 255


def curated_list_path(root: str | Path, split_dir: str) -> Path:
    """``ROOT/curated/<split_dir>/<list name>`` for ``split_dir`` in :data:`CURATED_LISTS`."""
    return Path(root) / "curated" / split_dir / CURATED_LISTS[split_dir]


class CocoStuff27(SegDataset):
    """COCO-Stuff-27 in the official layout plus IIC's curated lists (module docstring).

    Args:
        root: folder holding ``images/``, ``annotations/`` and ``curated/``.
        split: "train"/"train2017" or "val"/"val2017".
        with_labels: read labels (False for training: never touches them).
        num_classes: 27 or None.
        transform: optional ``Sample -> Any``.

    Sample names look like ``"val2017/000000000139"``; keys (:meth:`SegDataset.key`)
    like ``"000000000139"``.

    Raises:
        DatasetLayoutError: missing folder or curated list (the message says
            where the lists come from), a listed image or annotation missing.
        ListFileError: a malformed curated list.
    """

    name = "cocostuff27"
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
        if num_classes not in (None, len(COCOSTUFF_27_CLASSES)):
            raise ValueError(f"cocostuff27 has 27 classes, got num_classes={num_classes}")
        base = Path(root)
        sub = split_alias(split, _SPLITS, self.name)
        img_dir = base / "images" / sub
        if not img_dir.is_dir():
            raise DatasetLayoutError(self.name, base, f"missing directory 'images/{sub}'",
                                     LAYOUT, describe_dir(base / "images"))
        list_path = curated_list_path(base, sub)
        if not list_path.is_file():
            raise DatasetLayoutError(
                self.name, base,
                f"missing curated list 'curated/{sub}/{CURATED_LISTS[sub]}'; {CURATED_HINT}",
                LAYOUT, describe_dir(list_path.parent),
            )
        ids = read_id_list(list_path, what="curated list")
        if not ids:
            raise DatasetLayoutError(self.name, base, f"curated list '{list_path}' is empty",
                                     LAYOUT)
        items = [Item(f"{sub}/{i}", img_dir / f"{i}.jpg") for i in ids]
        missing = [it for it in items if not it.image.is_file()]
        if missing:
            shown = ", ".join(it.image.name for it in missing[:10])
            raise DatasetLayoutError(
                self.name, base,
                f"{len(missing)} of {len(items)} images listed in '{list_path.name}' are "
                f"missing from 'images/{sub}' (e.g. {shown}); unzip {sub}.zip there", LAYOUT,
            )
        if with_labels:
            ann_dir = base / "annotations" / sub
            if not ann_dir.is_dir():
                raise DatasetLayoutError(
                    self.name, base,
                    f"missing directory 'annotations/{sub}' (unzip "
                    "stuffthingmaps_trainval2017.zip into ROOT/annotations)", LAYOUT,
                    describe_dir(base / "annotations"))
            items = check_labels_present(
                self.name, base,
                [Item(it.name, it.image, ann_dir / f"{i}.png") for i, it in zip(ids, items,
                                                                                  strict=True)],
                LAYOUT,
            )
        super().__init__(base, sub, items, with_labels=with_labels,
                         class_names=COCOSTUFF_27_CLASSES, palette=COCOSTUFF_27_PALETTE,
                         transform=transform, image_dir=img_dir)

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        """Fine stuffthingmaps ids [H,W] uint8 -> coarse ids [H,W] uint8 (255 ignore)."""
        return _LUT[raw]
