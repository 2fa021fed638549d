"""Shared pieces of all segeig datasets: the Sample record, the SegDataset base
class, layout errors and label lookup tables."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from segeig.config import IGNORE_INDEX
from segeig.data.files import list_images
from segeig.imageio import read_image
from segeig.labelmaps import read_label

logger = logging.getLogger(__name__)


#: A dataset transform receives the full Sample and returns whatever the
#: consumer batches (typically a dict of tensors).
Transform = Callable[["Sample"], Any]


@dataclass
class Sample:
    """One dataset element, before any transform.

    Attributes:
        image: [H, W, 3] uint8 RGB, 0..255.
        label: [H, W] uint8 class ids in 0..num_classes-1, 255 = ignore; ``None``
            when the dataset was built with ``with_labels=False``.
        name: id relative to the dataset's image folder, without extension and
            with "/" separators (e.g. ``"validation/ADE_val_00000001"``,
            PASCAL-Context ``"2008_000002"``, Cityscapes
            ``"val/frankfurt/frankfurt_000000_000294"``); unique within a
            dataset and safe to use as an output file stem (a folder dataset
            keeps the extension of files whose stems clash).
        path: the image file.
    """

    image: np.ndarray
    label: np.ndarray | None
    name: str
    path: Path


@dataclass(frozen=True)
class Item:
    """Where one sample lives on disk (``label`` is None when labels are not used)."""

    name: str
    image: Path
    label: Path | None = None


def describe_dir(path: Path, limit: int = 12) -> str:
    """One-line summary of what is at ``path`` (for error messages)."""
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), None)
        where = f"; nearest existing parent is '{parent}'" if parent is not None else ""
        return f"'{path}' does not exist{where}"
    if not path.is_dir():
        return f"'{path}' is a file, not a directory"
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    if not entries:
        return f"'{path}' is an empty directory"
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f" (and {len(entries) - limit} more)" if len(entries) > limit else ""
    return f"'{path}' contains: {', '.join(shown)}{more}"


class DatasetLayoutError(ValueError):
    """A dataset root does not have the expected on-disk layout.

    The message states the problem, the expected layout as a short tree and
    what was actually found at the root.
    """

    def __init__(
        self, dataset: str, root: Path | str, problem: str, expected: str, found: str | None = None
    ):
        self.dataset = dataset
        self.root = Path(root)
        self.problem = problem
        self.expected = expected
        self.found = found if found is not None else describe_dir(self.root)
        super().__init__(
            f"{dataset} dataset at '{self.root}': {problem}\n"
            f"Expected layout:\n{expected.rstrip()}\n"
            f"Found: {self.found}"
        )

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.dataset, self.root, self.problem, self.expected, self.found))


def label_lut(
    mapping: Mapping[int, int] | Sequence[int], default: int = IGNORE_INDEX
) -> np.ndarray:
    """Build a 256-entry uint8 lookup table raw id -> training id.

    ``mapping`` is a dict ``{raw: new}`` or a sequence whose i-th entry is the
    new id of raw id i; unlisted raw ids map to ``default``. Apply with
    ``lut[raw_label]`` (fast, and keeps uint8).
    """
    lut = np.full(256, default, dtype=np.uint8)
    pairs = mapping.items() if isinstance(mapping, Mapping) else enumerate(mapping)
    for raw, new in pairs:
        if 0 <= raw < 256:
            lut[raw] = default if new < 0 else new
    return lut


def split_alias(split: str, aliases: Mapping[str, str], dataset: str) -> str:
    """Map user split names ('train', 'val', ...) to on-disk folder names."""
    key = split.lower()
    if key not in aliases:
        raise ValueError(
            f"unknown split {split!r} for {dataset}; valid: {sorted(set(aliases))}"
        )
    return aliases[key]


def stem_name(path: Path, base: Path) -> str:
    """``path`` relative to ``base``, POSIX separators, extension removed."""
    return path.relative_to(base).with_suffix("").as_posix()


def check_labels_present(
    dataset: str, root: Path, items: Iterable[Item], expected: str
) -> list[Item]:
    """Raise DatasetLayoutError listing (up to 10) items whose label file is missing.

    Missing annotations are an error rather than a skipped sample because an
    evaluation silently computed on a subset is worse than no number at all.
    """
    items = list(items)
    missing = [it for it in items if it.label is None or not it.label.is_file()]
    if missing:
        shown = "\n".join(f"  {it.name} -> {it.label}" for it in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DatasetLayoutError(
            dataset, root,
            f"{len(missing)} of {len(items)} images have no annotation file "
            "(build the dataset with with_labels=False to use the images alone)",
            expected,
            found=f"missing annotations:\n{shown}{more}",
        )
    return items


def images_and_annotations(
    dataset: str, base: Path, sub: str, expected: str, with_labels: bool,
    unique_names: bool = False,
) -> list[Item]:
    """Items of the ``images/<sub>`` + ``annotations/<sub>/<name>.png`` layout.

    Shared by ADE20K and the custom layout. Annotation folders are not even
    looked at when ``with_labels`` is False.

    Args:
        dataset: dataset name for error messages.
        base: the dataset root holding ``images/`` (and ``annotations/``).
        sub: split folder name.
        expected: the layout tree shown in errors.
        with_labels: attach (and require) annotation files.
        unique_names: refuse images whose names clash once the extension is
            dropped (their annotations would be the same file).

    Raises:
        DatasetLayoutError: missing folder, no images, clashing names or
            missing annotations.
    """
    img_dir = base / "images" / sub
    if not img_dir.is_dir():
        raise DatasetLayoutError(dataset, base, f"missing directory 'images/{sub}'",
                                 expected, describe_dir(base / "images"))
    images = list_images(img_dir)
    if not images:
        raise DatasetLayoutError(dataset, base, f"no images in 'images/{sub}'", expected,
                                 describe_dir(img_dir))
    items = [Item(f"{sub}/{stem_name(p, img_dir)}", p) for p in images]
    if unique_names:
        counts = Counter(it.name for it in items)
        dup = sorted(n for n, c in counts.items() if c > 1)
        if dup:
            raise DatasetLayoutError(
                dataset, base,
                f"several images share a name (e.g. {', '.join(dup[:5])}); each image needs "
                "a unique name because its annotation is <name>.png", expected,
            )
    if not with_labels:
        return items
    ann_dir = base / "annotations" / sub
    if not ann_dir.is_dir():
        raise DatasetLayoutError(dataset, base, f"missing directory 'annotations/{sub}'",
                                 expected)
    return check_labels_present(
        dataset, base,
        [Item(it.name, it.image, ann_dir / (stem_name(it.image, img_dir) + ".png"))
         for it in items],
        expected,
    )


class SegDataset(Dataset):
    """Base class of segeig datasets: a list of :class:`Item` plus label conventions.

    ``dataset[i]`` returns a :class:`Sample` (image [H,W,3] uint8 RGB, label
    [H,W] uint8 with 255 = ignore, or None), or ``transform(sample)`` when a
    transform is set. With ``with_labels=False`` label files are never listed,
    opened or required: training must build its datasets this way so that the
    method stays strictly unsupervised.

    Subclasses resolve their layout in ``__init__``, pass the items, class
    names and palette to this constructor, and override :meth:`convert_label`
    (or :meth:`read_target`) to map raw stored ids to training ids.
    """

    #: Registry name used by :func:`segeig.data.build_dataset`.
    name: ClassVar[str] = "base"
    #: Split names accepted by the constructor (before aliasing).
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        root: str | Path,
        split: str,
        items: Sequence[Item],
        *,
        with_labels: bool,
        class_names: Sequence[str] | None = None,
        palette: np.ndarray | None = None,
        transform: Transform | None = None,
        image_dir: Path | None = None,
    ):
        self.root = Path(root)
        #: The split's image folder (what :meth:`key` is relative to), or None.
        self.image_dir: Path | None = Path(image_dir) if image_dir is not None else None
        self.split = split
        self.items: list[Item] = list(items)
        self.with_labels = with_labels
        self.class_names: list[str] | None = list(class_names) if class_names else None
        #: [num_classes, 3] uint8 RGB colours, or None.
        self.palette: np.ndarray | None = palette
        self.transform = transform

    @property
    def num_classes(self) -> int | None:
        """Number of evaluated classes (ids 0..num_classes-1), or None if unknown."""
        return len(self.class_names) if self.class_names is not None else None

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', split={self.split!r}, "
            f"n={len(self)}, num_classes={self.num_classes}, with_labels={self.with_labels})"
        )

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        """Map a raw stored label [H,W] uint8 to training ids [H,W] uint8 (255 ignore)."""
        return raw

    def read_target(self, item: Item) -> np.ndarray:
        """Read and convert the label of ``item``: [H,W] uint8 training ids, 255 ignore.

        Override when the conversion depends on the file (default:
        ``convert_label(read_label(item.label))``).
        """
        if item.label is None:
            raise RuntimeError(f"{self.name}: no label path recorded for {item.name}")
        return self.convert_label(read_label(item.label))

    def key(self, index: int) -> str:
        """Public per-image key: the image's path relative to the split's image
        folder, without its extension, with "/" separators (COCO ``000000000139``,
        Cityscapes ``frankfurt/frankfurt_000000_000294_leftImg8bit``).

        Other tools name their saved predictions this way (``KEY.png``). A
        dataset that does not record its image folder falls back to the
        sample name.
        """
        item = self.items[index]
        if self.image_dir is None:
            return item.name
        return stem_name(item.image, self.image_dir)

    def load(self, index: int) -> Sample:
        """Read sample ``index`` from disk, without the transform."""
        item = self.items[index]
        image = read_image(item.image)
        label = None
        if self.with_labels:
            label = self.read_target(item)
            if label.shape != image.shape[:2]:
                image = self._match_orientation(item, image, label)
        return Sample(image=image, label=label, name=item.name, path=item.image)

    def file_identity(self, index: int) -> str:
        """Who image ``index`` is, as of now: ``"name|file size|mtime ns"`` (just the
        name when its file cannot be stat'ed).

        The feature cache keys each image's features by this string
        (:meth:`segeig.feature_cache.ImageSource.identity`): an edited or
        replaced file gets a new one, so its cached features are recomputed.
        """
        item = self.items[index]
        try:
            stat = os.stat(item.image)
            return f"{item.name}|{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:
            return item.name

    def _match_orientation(self, item: Item, image: np.ndarray, label: np.ndarray) -> np.ndarray:
        # A photo with an EXIF rotation tag whose annotation was drawn on the
        # stored (unrotated) pixel grid: the stored grid is the one that matches.
        raw = read_image(item.image, apply_exif=False)
        if raw.shape[:2] == label.shape:
            logger.debug("%s: using stored pixel grid (EXIF orientation ignored)", item.image)
            return raw
        raise ValueError(
            f"{self.name}: image '{item.image}' is {image.shape[1]}x{image.shape[0]} but its "
            f"label '{item.label}' is {label.shape[1]}x{label.shape[0]}; they must match"
        )

    def __getitem__(self, index: int) -> Sample | Any:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample
