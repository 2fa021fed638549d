"""The dataset registry: build any supported layout by name."""

from __future__ import annotations

from pathlib import Path

from segeig.data.ade20k import ADE20K
from segeig.data.base import SegDataset, Transform
from segeig.data.cityscapes import Cityscapes, Cityscapes27
from segeig.data.cocostuff import CocoStuff27
from segeig.data.custom import CustomDataset
from segeig.data.folder import ImageFolder
from segeig.data.pascal_context import PascalContext
from segeig.data.potsdam import Potsdam3

#: Registry: dataset name -> class. Every class takes
#: ``(root, split, *, with_labels, num_classes, transform)``.
DATASETS: dict[str, type[SegDataset]] = {
    "ade20k": ADE20K,
    "pascal_context": PascalContext,
    "cityscapes": Cityscapes,
    "cocostuff27": CocoStuff27,
    "cityscapes27": Cityscapes27,
    "potsdam3": Potsdam3,
    "custom": CustomDataset,
    "folder": ImageFolder,
}


def _lookup(name: str) -> type[SegDataset]:
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[key]


def build_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    *,
    with_labels: bool = True,
    num_classes: int | None = None,
    transform: Transform | None = None,
) -> SegDataset:
    """Build a dataset by registry name.

    Args:
        name: one of :data:`DATASETS` ("ade20k", "pascal_context", "cityscapes",
            "cocostuff27", "cityscapes27", "potsdam3", "custom", "folder"); "-" is
            accepted for "_".
        root: dataset root (see each class for the accepted layouts).
        split: "train"/"val" (ADE20K, Cityscapes and COCO-Stuff also accept their
            on-disk names; Cityscapes also "test"; Potsdam also "labelled_train"
            and "all"); ignored for "folder".
        with_labels: read labels. **Training must pass False** so labels are
            never even opened. Always False for "folder" (coerced).
        num_classes: protocol choice, see the module docstring; None = default.
        transform: optional callable ``Sample -> Any`` applied in ``__getitem__``.

    Raises:
        ValueError: unknown name or invalid num_classes.
        DatasetLayoutError: ``root`` does not have the expected layout.
    """
    cls = _lookup(name)
    if cls is ImageFolder:
        with_labels = False
    return cls(root, split, with_labels=with_labels, num_classes=num_classes,
               transform=transform)


def verify_layout(name: str, root: str | Path, *, with_labels: bool = True) -> dict[str, int]:
    """Check a dataset's layout for all of its standard splits.

    Returns:
        ``{split: number_of_samples}`` for each split in ``DATASETS[name].splits``
        (Cityscapes: train and val; folder: "all"). Splits in the class's
        ``label_free_splits`` (Potsdam's train) are checked without labels.

    Raises:
        DatasetLayoutError: a split is missing, empty, or (with ``with_labels``)
            some image has no annotation file; the message says what is expected
            and what was found.
    """
    cls = _lookup(name)
    with_labels = with_labels and cls is not ImageFolder
    return {s: len(cls(root, s, with_labels=with_labels and s not in cls.label_free_splits))
            for s in cls.splits}
