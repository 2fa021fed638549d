"""Dataset preparation helpers used by ``scripts/prepare_*.py``.

* :func:`extract_archive` unpacks a .zip / .tar[.gz] safely (no member may
  land outside the destination).
* :func:`check_counts` compares a layout's sample counts with the official ones.
* :func:`convert_pascal_context` builds ``SegmentationClassContext`` PNGs and
  the split lists from VOC2010 + ``trainval_merged.json`` with the Detail API,
  reproducing the mmsegmentation conversion (59 classes, 0 = background).
* :func:`regenerate_curated_lists` rebuilds COCO-Stuff-27's curated lists
  from the stuffthingmaps annotations with IIC's rule (:func:`is_curated`).
"""

from __future__ import annotations

import logging
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segeig.atomic import write_text
from segeig.data.classes import COCOSTUFF_FINE_TO_27, COCOSTUFF_FIRST_STUFF
from segeig.data.cocostuff import CURATED_LISTS, curated_list_path
from segeig.data.lists import ID_PATTERN
from segeig.data.registry import verify_layout
from segeig.labelmaps import read_label

logger = logging.getLogger(__name__)

#: Official split sizes (images with annotations).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "ade20k": {"train": 20210, "val": 2000},
    "pascal_context": {"train": 4996, "val": 5104},
    "cityscapes": {"train": 2975, "val": 500},
    "cityscapes27": {"train": 2975, "val": 500},
    # IIC's curated val list; the train list's size depends on the release used.
    "cocostuff27": {"val": 2175},
    # labelled_train 4,545 + unlabelled_train 3,150; labelled_test 855.
    "potsdam3": {"train": 7695, "val": 855},
}

#: IIC's COCO-Stuff curation rule: the fraction of all pixels that must be stuff
#: and the smallest side, in pixels.
CURATED_MIN_STUFF = 0.75
CURATED_MIN_SIDE = 360

#: 256-entry table: True for the fine stuffthingmaps ids whose coarse class is a
#: stuff class (12..26), i.e. 91..181; read off the map, not hard-coded.
_IS_STUFF = np.zeros(256, dtype=bool)
_IS_STUFF[[i for i, c in enumerate(COCOSTUFF_FINE_TO_27) if c >= COCOSTUFF_FIRST_STUFF]] = True

#: The 60 ids in the 459-category Detail/PASCAL-Context label space that make
#: up the 59-class benchmark plus background (0), as used by mmsegmentation's
#: converter (tools/dataset_converters/pascal_context.py) and PyTorch-Encoding.
#: Sorted; the i-th entry becomes stored label i, so 0 = background and
#: 1..59 follow the alphabetical order of PASCAL_CONTEXT_59_CLASSES.
PASCAL_CONTEXT_DETAIL_IDS: tuple[int, ...] = tuple(sorted((
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33,
    162, 420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68,
    326, 72, 458, 34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368,
    113, 115,
)))

DETAIL_INSTALL_HINT = (
    "the 'detail' package (PASCAL in Detail API) is required to convert PASCAL-Context; "
    "install it from source: git clone https://github.com/zhanghang1989/detail-api && "
    "cd detail-api/PythonAPI && pip install cython && make && make install"
)


def _safe_target(dest: Path, member: str) -> Path:
    target = (dest / member).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise ValueError(f"archive member {member!r} would be written outside '{dest}'; "
                         "refusing to extract")
    return target


def extract_archive(archive: str | Path, dest: str | Path) -> None:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive into ``dest`` (created if needed).

    Raises:
        FileNotFoundError: ``archive`` missing.
        ValueError: unsupported format, or a member path escapes ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive '{archive}' does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _safe_target(dest, name)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                _safe_target(dest, m.name)
                if m.issym() or m.islnk():
                    raise ValueError(f"archive member {m.name!r} is a link; refusing to extract")
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tf.extractall(dest)
    else:
        raise ValueError(f"'{archive}' is neither a zip nor a tar archive")


def check_counts(name: str, root: str | Path) -> tuple[dict[str, int], list[str]]:
    """Verify a dataset layout and compare its counts with :data:`EXPECTED_COUNTS`.

    Returns:
        (counts per split, list of human-readable mismatch notes; empty if all match).

    Raises:
        DatasetLayoutError: the layout itself is wrong (see verify_layout).
    """
    counts = verify_layout(name, root)
    expected = EXPECTED_COUNTS.get(name, {})
    notes = [
        f"{name} {split}: found {counts.get(split)} samples, the official release has {n}"
        for split, n in expected.items() if counts.get(split) != n
    ]
    return counts, notes


def detail_to_context59(mask: np.ndarray) -> np.ndarray:
    """Map a Detail-API class mask (459-category ids) to stored PASCAL-Context-59 ids.

    Args:
        mask: [H, W] integer array of Detail category ids.

    Returns:
        [H, W] uint8: 0 = background, 1..59 = classes.

    Raises:
        ValueError: the mask holds an id outside :data:`PASCAL_CONTEXT_DETAIL_IDS`
            (mmseg asserts the same; it means an unexpected annotation file).
    """
    ids = np.asarray(PASCAL_CONTEXT_DETAIL_IDS)
    unknown = np.setdiff1d(np.unique(mask), ids)
    if unknown.size:
        raise ValueError(f"Detail mask contains ids {unknown[:10].tolist()} that are not among "
                         "the 60 PASCAL-Context ids; is trainval_merged.json the right file?")
    return np.searchsorted(ids, mask).astype(np.uint8)


def convert_pascal_context(
    voc2010: str | Path,
    json_path: str | Path,
    *,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> dict[str, int]:
    """Write ``SegmentationClassContext/*.png`` and ``ImageSets/SegmentationContext/
    {train,val}.txt`` under ``voc2010`` from ``trainval_merged.json``.

    Args:
        voc2010: the ``VOCdevkit/VOC2010`` folder (must contain ``JPEGImages/``).
        json_path: PASCAL-Context ``trainval_merged.json``.
        progress: optional wrapper for progress display (e.g. ``tqdm``).

    Returns:
        ``{"train": n, "val": n}``: images written per split.

    Raises:
        ImportError: the ``detail`` package is missing (message says how to install it).
        FileNotFoundError: ``JPEGImages`` or the json file is missing.
    """
    try:
        from detail import Detail  # lazy: only this conversion needs it
    except ImportError as e:
        raise ImportError(DETAIL_INSTALL_HINT) from e
    voc2010, json_path = Path(voc2010), Path(json_path)
    img_dir = voc2010 / "JPEGImages"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"'{img_dir}' does not exist; point at VOCdevkit/VOC2010")
    if not json_path.is_file():
        raise FileNotFoundError(f"'{json_path}' does not exist")
    out_dir = voc2010 / "SegmentationClassContext"
    list_dir = voc2010 / "ImageSets" / "SegmentationContext"
    out_dir.mkdir(parents=True, exist_ok=True)
    list_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "val"):
        detail = Detail(str(json_path), str(img_dir), split)
        records = detail.getImgs()
        names = []
        for rec in progress(records) if progress else records:
            stem = Path(rec["file_name"]).stem
            label = detail_to_context59(np.asarray(detail.getMask(rec)))
            Image.fromarray(label).save(out_dir / f"{stem}.png")
            names.append(stem)
        (list_dir / f"{split}.txt").write_text("".join(n + "\n" for n in sorted(names)))
        counts[split] = len(names)
        logger.info("pascal_context %s: wrote %d labels", split, len(names))
    return counts


def is_curated(fine: np.ndarray, *, min_stuff: float = CURATED_MIN_STUFF,
               min_side: int = CURATED_MIN_SIDE) -> bool:
    """IIC's curation rule for one stuffthingmaps annotation.

    Args:
        fine: [H, W] uint8 fine ids (0..181, 255 unlabelled).
        min_stuff: smallest fraction of **all** H·W pixels (unlabelled ones
            included, as IIC counts) whose fine id is a stuff class.
        min_side: both H and W must be at least this.
    """
    h, w = fine.shape[:2]
    if h < min_side or w < min_side:
        return False
    return int(_IS_STUFF[fine].sum()) >= h * w * min_stuff


def regenerate_curated_lists(
    root: str | Path,
    *,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> dict[str, int]:
    """Write COCO-Stuff-27's curated lists under ``ROOT/curated/`` from the annotations.

    Every ``annotations/<split>/<id>.png`` is tested with :func:`is_curated`;
    the kept ids, sorted, are written (atomically, one per line) to
    ``curated/train2017/Coco164kFull_Stuff_Coarse.txt`` and
    ``curated/val2017/Coco164kFull_Stuff_Coarse_7.txt``. Deterministic: the
    same annotations always give the same files.

    Args:
        root: the COCO-Stuff root (holding ``annotations/{train2017,val2017}``).
        progress: optional wrapper for progress display (e.g. ``tqdm``).

    Returns:
        ``{"train2017": kept, "val2017": kept}``.

    Raises:
        FileNotFoundError: an annotation folder is missing.
    """
    root = Path(root)
    counts: dict[str, int] = {}
    for split in CURATED_LISTS:
        ann_dir = root / "annotations" / split
        if not ann_dir.is_dir():
            raise FileNotFoundError(f"'{ann_dir}' does not exist; unzip "
                                    "stuffthingmaps_trainval2017.zip into ROOT/annotations")
        paths = sorted((p for p in ann_dir.iterdir()
                        if p.suffix == ".png" and ID_PATTERN.fullmatch(p.stem)),
                       key=lambda p: p.stem)
        kept = [p.stem for p in (progress(paths) if progress else paths)
                if is_curated(read_label(p))]
        write_text(curated_list_path(root, split), "".join(i + "\n" for i in kept))
        counts[split] = len(kept)
        logger.info("cocostuff27 %s: %d of %d images kept", split, len(kept), len(paths))
    return counts
