"""Unlabelled images: any directory tree ("fit segeig on my photos").

Collections gathered by people contain the odd broken file. A training run
must not die on image 41,327 of 50,000, so a sample that fails to decode is
logged once (warning naming the file) and replaced by the next readable index.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from segeig.data.base import DatasetLayoutError, Item, Sample, SegDataset, Transform, describe_dir
from segeig.data.files import list_images
from segeig.imageio import ImageReadError, read_image

logger = logging.getLogger(__name__)

LAYOUT = """\
  ROOT/                       (any tree; hidden files and folders are skipped)
    <anything>.jpg|.jpeg|.png|.webp|.bmp|.tif|.tiff
    <subfolder>/<anything>.jpg ..."""


class ImageFolder(SegDataset):
    """All images under ``root`` (recursive), sorted by relative path; no labels.

    Args:
        root: a directory (or a single image file).
        split: ignored; the whole tree is one split (kept for a uniform signature).
        with_labels: must be False.
        num_classes: must be None.
        transform: optional ``Sample -> Any``.

    Sample names are relative paths without extension (``"trip/IMG_0001"``); when
    two files differ only by extension the extension is kept to keep names unique.
    ``dataset[i]`` never raises :class:`ImageReadError`: unreadable files are
    skipped (see module docstring); ``load(i)`` still raises.
    """

    name = "folder"
    splits = ("all",)

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        with_labels: bool = False,
        num_classes: int | None = None,
        transform: Transform | None = None,
    ):
        if with_labels:
            raise ValueError("folder datasets have no labels; use the 'custom' dataset layout "
                             "for labelled images")
        if num_classes is not None:
            raise ValueError("folder datasets have no classes; num_classes must be None")
        base = Path(root)
        if not base.exists():
            raise DatasetLayoutError(self.name, base, "the folder does not exist", LAYOUT)
        images = list_images(base)
        if not images:
            raise DatasetLayoutError(self.name, base, "no image files found", LAYOUT,
                                     describe_dir(base))
        top = base if base.is_dir() else base.parent
        stems = [p.relative_to(top).with_suffix("").as_posix() for p in images]
        counts = Counter(stems)
        names = [p.relative_to(top).as_posix() if counts[s] > 1 else s
                 for s, p in zip(stems, images, strict=True)]
        self._bad: set[int] = set()
        super().__init__(base, "all", [Item(n, p) for n, p in zip(names, images, strict=True)],
                         with_labels=False, transform=transform)

    def load(self, index: int) -> Sample:
        item = self.items[index]
        return Sample(image=read_image(item.image), label=None, name=item.name, path=item.image)

    def __getitem__(self, index: int) -> Sample | Any:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                sample = self.load(i)
            except ImageReadError as e:
                # Remembered per process (each DataLoader worker warns once per file).
                self._bad.add(i)
                logger.warning("skipping unreadable image %s: %s", self.items[i].image, e.reason)
                continue
            return self.transform(sample) if self.transform is not None else sample
        raise RuntimeError(f"folder dataset '{self.root}': none of its {n} images is readable")
