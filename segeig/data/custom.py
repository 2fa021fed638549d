"""Any labelled dataset in segeig's simple layout.

Labels are uint8 PNGs holding class ids directly (0..C-1, 255 = ignore); they
are used as stored. The number of classes comes from, in order: the explicit
``num_classes`` argument, ``ROOT/classes.txt`` (one name per line, blank
lines ignored), or a one-time scan of the split's labels (max id other than
255, plus one; computed on first access of ``num_classes`` and cached). With
``with_labels=False`` there is no scan and ``num_classes`` may be None.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segeig.config import IGNORE_INDEX
from segeig.data.base import (
    DatasetLayoutError,
    Item,
    SegDataset,
    Transform,
    images_and_annotations,
)
from segeig.data.classes import voc_colormap
from segeig.data.files import read_list_file
from segeig.labelmaps import read_label

logger = logging.getLogger(__name__)

LAYOUT = """\
  ROOT/
    images/{train,val}/<name>.jpg|.png|...      (subfolders allowed)
    annotations/{train,val}/<name>.png          (uint8 class id per pixel, 255 = ignore)
    classes.txt                                 (optional: one class name per line)"""

# Tolerate the other common spelling of a split folder.
_ALT = {"train": "training", "training": "train", "val": "validation", "validation": "val"}


#: Largest classes.txt read (255 names of 100 characters fit many times over).
MAX_CLASSES_FILE_BYTES = 1 << 20


def read_classes_file(path: Path) -> list[str]:
    """Class names from a classes.txt (one per line, stripped, blank lines ignored).

    Raises:
        ValueError: not a regular file, over :data:`MAX_CLASSES_FILE_BYTES`, or not UTF-8.
    """
    return read_list_file(path, MAX_CLASSES_FILE_BYTES, "class list")


class CustomDataset(SegDataset):
    """A labelled dataset in the custom layout (see module docstring).

    Args:
        root: dataset root holding ``images/`` (and ``annotations/``).
        split: name of a folder under ``images/`` (e.g. "train", "val").
        with_labels: read annotations (False for training: never touches them).
        num_classes: explicit class count; overrides the scan and must agree
            with classes.txt when both are given.
        transform: optional ``Sample -> Any``.
    """

    name = "custom"
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
        base = Path(root)
        if not (base / "images").is_dir():
            raise DatasetLayoutError(self.name, base, "missing directory 'images'", LAYOUT)
        sub = split
        if not (base / "images" / sub).is_dir() and (base / "images" / _ALT.get(sub, sub)).is_dir():
            sub = _ALT[sub]
        items = images_and_annotations(self.name, base, sub, LAYOUT, with_labels,
                                       unique_names=True)
        names = None
        classes_file = base / "classes.txt"
        if classes_file.is_file():
            names = read_classes_file(classes_file)
            if num_classes is not None and num_classes != len(names):
                raise ValueError(
                    f"custom: num_classes={num_classes} but '{classes_file}' lists "
                    f"{len(names)} classes; fix one of them"
                )
        self._num_classes: int | None = len(names) if names is not None else num_classes
        self._palette: np.ndarray | None = None
        super().__init__(base, sub, items, with_labels=with_labels, class_names=names,
                         transform=transform, image_dir=base / "images" / sub)

    @property
    def num_classes(self) -> int | None:
        """Class count; may trigger the one-time label scan (see module docstring)."""
        if self._num_classes is None and self.with_labels:
            self._num_classes = self._scan_num_classes()
        return self._num_classes

    @property
    def palette(self) -> np.ndarray | None:  # type: ignore[override]
        """[num_classes, 3] uint8 RGB (VOC colour map without black), or None if unknown."""
        if self._palette is None and self.num_classes is not None:
            self._palette = voc_colormap(self.num_classes + 1)[1:]
        return self._palette

    @palette.setter
    def palette(self, value: np.ndarray | None) -> None:
        self._palette = value

    def _scan_num_classes(self) -> int:
        logger.info("custom: scanning %d labels of split %r to count classes "
                    "(add classes.txt to skip this)", len(self.items), self.split)
        top = -1
        for it in self.items:
            raw = read_label(it.label)  # type: ignore[arg-type]
            valid = raw[raw != IGNORE_INDEX]
            if valid.size:
                top = max(top, int(valid.max()))
        if top < 0:
            raise ValueError(f"custom: every label pixel of split {self.split!r} under "
                             f"'{self.root}' is 255 (ignore); cannot infer num_classes")
        return top + 1

    def read_target(self, item: Item) -> np.ndarray:
        if item.label is None:
            raise RuntimeError(f"custom: no label path recorded for {item.name}")
        raw = read_label(item.label)
        n = self.num_classes
        if n is not None:
            bad = (raw >= n) & (raw != IGNORE_INDEX)
            if bad.any():
                raise ValueError(
                    f"custom: label '{item.label}' contains class ids "
                    f"{sorted(set(np.unique(raw[bad]).tolist()))[:10]} >= num_classes={n}; "
                    "ids must be 0..num_classes-1 or 255 (ignore)"
                )
        return raw
