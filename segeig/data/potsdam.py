"""Potsdam-3 (``potsdam3``): IIC's 200×200 tiles of ISPRS Potsdam, 3 classes.

IIC's release stores every tile as MATLAB files: ``imgs/<id>.mat`` (variable
``img``, H×W×4 uint8 RGB+IR; segeig uses RGB) and, for the labelled tiles,
``gt/<id>.mat`` (variable ``gt``, integer ids 0 road, 1 building, 2 low
vegetation, 3 tree, 4 car, 5 clutter; 255 or anything else ignored). They are
read through :func:`segeig.data.lists.read_mat_array` (``scipy.io.loadmat``,
never pickle) and checked for shape and dtype.

Splits, from IIC's lists:

* ``train``: ``labelled_train.txt`` + ``unlabelled_train.txt`` (7,695 tiles):
  every tile outside the test list, IIC's training set. segeig never reads
  training labels, so the unlabelled tiles are as useful as the labelled ones.
  Its unlabelled tiles have no ``gt/`` file, so this split is label-free.
* ``labelled_train``: ``labelled_train.txt`` alone (4,545 tiles), the set
  STEGO's code trains on.
* ``val``: ``labelled_test.txt`` (855 tiles). It must be IIC's released list:
  IIC drew it at random without a seed, so a regenerated one differs.
* ``all``: ``all.txt`` (label-free).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from segeig.data.base import (
    DatasetLayoutError,
    Item,
    Sample,
    SegDataset,
    Transform,
    check_labels_present,
    describe_dir,
    label_lut,
)
from segeig.data.classes import POTSDAM_3_CLASSES, POTSDAM_3_PALETTE, POTSDAM_FINE_TO_3
from segeig.data.lists import ListFileError, read_id_list, read_mat_array

LAYOUT = """\
  ROOT/                                    (or ROOT/potsdam/)
    imgs/<id>.mat          (variable 'img': 200x200x4 uint8, RGB + IR)
    gt/<id>.mat            (variable 'gt': 200x200 ids 0..5, labelled tiles only)
    labelled_train.txt, unlabelled_train.txt, labelled_test.txt, all.txt"""

#: Split name -> the IIC list files it concatenates.
SPLIT_LISTS: dict[str, tuple[str, ...]] = {
    "train": ("labelled_train.txt", "unlabelled_train.txt"),
    "labelled_train": ("labelled_train.txt",),
    "val": ("labelled_test.txt",),
    "all": ("all.txt",),
}
_ALIASES = {"validation": "val", "test": "val"}

_LUT = label_lut(POTSDAM_FINE_TO_3)  # 0..5 -> 0..2; 255 and anything else -> 255


def resolve_root(root: Path) -> Path:
    """Return the folder holding ``imgs/`` (``root`` or ``root/potsdam``)."""
    for cand in (root, root / "potsdam"):
        if (cand / "imgs").is_dir():
            return cand
    raise DatasetLayoutError("potsdam3", root, "no 'imgs' directory", LAYOUT)


def read_tile_image(path: Path) -> np.ndarray:
    """The RGB channels of an ``imgs/<id>.mat`` tile: [H, W, 3] uint8.

    Raises:
        ListFileError: unreadable file, no ``img`` variable, not H×W×(3 or 4) uint8.
    """
    img = read_mat_array(path, "img")
    if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 1:
        raise ListFileError(f".mat file '{path}': 'img' has shape {img.shape}; expected "
                            "H x W x 4 (RGB + IR) or H x W x 3")
    if img.dtype != np.uint8:
        raise ListFileError(f".mat file '{path}': 'img' is {img.dtype}; expected uint8")
    return np.ascontiguousarray(img[:, :, :3])


def read_tile_label(path: Path) -> np.ndarray:
    """The Potsdam-3 label of a ``gt/<id>.mat`` tile: [H, W] uint8, 0..2, 255 ignore.

    Raises:
        ListFileError: unreadable file, no ``gt`` variable, not a 2-D integer array.
    """
    gt = read_mat_array(path, "gt")
    if gt.ndim == 3 and gt.shape[2] == 1:
        gt = gt[:, :, 0]
    if gt.ndim != 2 or min(gt.shape) < 1:
        raise ListFileError(f".mat file '{path}': 'gt' has shape {gt.shape}; expected H x W")
    if gt.dtype.kind not in "iub":
        raise ListFileError(f".mat file '{path}': 'gt' is {gt.dtype}; expected integer ids")
    # IIC stores int32; ids outside 0..255 cannot index the table, so they go to 255 first.
    ids = np.where((gt >= 0) & (gt <= 255), gt, 255).astype(np.uint8)
    return _LUT[ids]


class Potsdam3(SegDataset):
    """Potsdam-3 in IIC's layout (see module docstring for splits and files).

    Args:
        root: folder holding ``imgs/`` and the lists (or its parent, ``potsdam/``).
        split: "train", "labelled_train", "val" ("test") or "all".
        with_labels: read ``gt/`` (False for training). "train" and "all"
            include unlabelled tiles, so they refuse ``with_labels=True``.
        num_classes: 3 or None.
        transform: optional ``Sample -> Any``.

    Sample names and keys (:meth:`SegDataset.key`) are the list ids.
    """

    name = "potsdam3"
    splits = ("train", "val")
    #: Splits whose tiles are partly unlabelled: checked without labels.
    label_free_splits: ClassVar[frozenset[str]] = frozenset({"train", "all"})

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        with_labels: bool = True,
        num_classes: int | None = None,
        transform: Transform | None = None,
    ):
        if num_classes not in (None, len(POTSDAM_3_CLASSES)):
            raise ValueError(f"potsdam3 has 3 classes, got num_classes={num_classes}")
        key = _ALIASES.get(split.lower(), split.lower())
        if key not in SPLIT_LISTS:
            raise ValueError(f"unknown split {split!r} for potsdam3; valid: "
                             f"{sorted(SPLIT_LISTS)} (or 'test' for val)")
        if with_labels and key in self.label_free_splits:
            raise ValueError(
                f"potsdam3 split {key!r} includes unlabelled_train tiles, which have no "
                "labels; use 'labelled_train' or 'val' for labelled data")
        base = resolve_root(Path(root))
        ids: list[str] = []
        for list_name in SPLIT_LISTS[key]:
            path = base / list_name
            if not path.is_file():
                raise DatasetLayoutError(
                    self.name, base,
                    f"missing split list '{list_name}' (it comes with IIC's Potsdam release; "
                    "the test list must be IIC's own: it was drawn without a seed)",
                    LAYOUT)
            ids += read_id_list(path, what="split list")
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise DatasetLayoutError(self.name, base, f"the {key} split lists no tiles", LAYOUT)
        img_dir = base / "imgs"
        items = [Item(i, img_dir / f"{i}.mat") for i in ids]
        missing = [it for it in items if not it.image.is_file()]
        if missing:
            shown = ", ".join(it.image.name for it in missing[:10])
            raise DatasetLayoutError(
                self.name, base,
                f"{len(missing)} of {len(items)} listed tiles are missing from 'imgs/' "
                f"(e.g. {shown})", LAYOUT, describe_dir(img_dir))
        if with_labels:
            items = check_labels_present(
                self.name, base, [Item(it.name, it.image, base / "gt" / f"{it.name}.mat")
                                  for it in items], LAYOUT)
        super().__init__(base, key, items, with_labels=with_labels,
                         class_names=POTSDAM_3_CLASSES, palette=POTSDAM_3_PALETTE,
                         transform=transform, image_dir=img_dir)

    def read_target(self, item: Item) -> np.ndarray:
        if item.label is None:
            raise RuntimeError(f"potsdam3: no label path recorded for {item.name}")
        return read_tile_label(item.label)

    def load(self, index: int) -> Sample:
        """Read tile ``index`` (RGB of ``img``; ``gt`` mapped to 3 classes)."""
        item = self.items[index]
        image = read_tile_image(item.image)
        label = None
        if self.with_labels:
            label = self.read_target(item)
            if label.shape != image.shape[:2]:
                raise ListFileError(
                    f"potsdam3: tile '{item.image}' is {image.shape[1]}x{image.shape[0]} but "
                    f"its label '{item.label}' is {label.shape[1]}x{label.shape[0]}")
        return Sample(image=image, label=label, name=item.name, path=item.image)
