"""Tiny roots of the unsupervised-segmentation benchmarks in their exact on-disk layouts.

Each writer returns a :class:`FixtureRoot`: the root to pass as ``--root`` and,
per split, the listed image ids (in list order), so tests can check that a
dataset holds exactly those. Every root also holds files that are **not** in
any split and are not even valid images: a reader that opens one fails.

* :func:`write_cocostuff_root`: ``images/``, ``annotations/`` (fine ids 0..181,
  255) and the curated lists; the labels together cover every fine id.
* :func:`write_cityscapes_root`: ``leftImg8bit/`` and ``gtFine/*_labelIds.png``
  (labelIds 0..33 and 255).
* :func:`write_potsdam_root`: IIC's ``imgs/*.mat``, ``gt/*.mat`` (int32, as IIC
  saves it) and the four lists; unlabelled tiles have no ``gt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

#: Bytes that no image or .mat reader accepts: what unlisted decoys contain.
NOT_AN_IMAGE = b"this file must never be opened by a dataset reader\n"


@dataclass
class FixtureRoot:
    """A written fixture: ``root`` and the ids each split lists (in list order)."""

    root: Path
    splits: dict[str, list[str]] = field(default_factory=dict)
    #: Files in the root that belong to no split (and cannot be decoded).
    decoys: list[Path] = field(default_factory=list)


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # Blocky colours rather than noise, so a tiny model sees some structure.
    small = rng.integers(0, 256, (-(-h // 8), -(-w // 8), 3), dtype=np.uint8)  # ceil: any size
    return np.kron(small, np.ones((8, 8, 1), np.uint8))[:h, :w].copy()


def _label(rng: np.random.Generator, h: int, w: int, values: np.ndarray) -> np.ndarray:
    """[h, w] uint8 holding every one of ``values`` (in raster order), then random ones."""
    flat = rng.choice(values, size=h * w).astype(np.uint8)
    flat[: min(len(values), h * w)] = values[: h * w]
    return flat.reshape(h, w)


def _decoy(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(NOT_AN_IMAGE)
    return path


def write_cocostuff_root(tmp: Path, *, size: tuple[int, int] = (48, 64),
                         sizes: Sequence[tuple[int, int]] | None = None,
                         seed: int = 0) -> FixtureRoot:
    """COCO-Stuff-27: 3 listed train and 3 listed val images of ``size`` (H, W), or
    the k-th image of each split of ``sizes[k % len(sizes)]`` (COCO mixes landscape
    and portrait images of many sizes).

    The six labels together hold every fine id 0..181 and 255 (plus 200, an id
    outside the map) when each image has at least 184 pixels. Each split also has
    one unlisted image + annotation of garbage bytes.
    """
    root = Path(tmp) / "cocostuff"
    rng = np.random.default_rng(seed)
    sizes = list(sizes or [size])
    values = np.array([*range(182), 200, 255])
    fixture = FixtureRoot(root)
    lists = {"train2017": "Coco164kFull_Stuff_Coarse.txt",
             "val2017": "Coco164kFull_Stuff_Coarse_7.txt"}
    n = 0
    for split, list_name in lists.items():
        ids = []
        for k in range(3):
            h, w = sizes[k % len(sizes)]
            image_id = f"{139 + 1000 * n:012d}"
            n += 1
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(rng, h, w)).save(root / "images" / split / f"{image_id}.jpg",
                                                    quality=95)
            # Rotate the value list so the six labels between them cover every id.
            shift = (n - 1) * h * w
            label = _label(rng, h, w, np.roll(values, -shift))
            Image.fromarray(label).save(root / "annotations" / split / f"{image_id}.png")
            ids.append(image_id)
        # Lists in non-sorted order with blank lines and surrounding blanks, as hand-made
        # lists look; the reader keeps the list's order.
        listed = [ids[2], ids[0], ids[1]]
        (root / "curated" / split).mkdir(parents=True, exist_ok=True)
        (root / "curated" / split / list_name).write_text(
            f"{listed[0]}\n\n  {listed[1]}  \n{listed[2]}\n")
        fixture.splits[split] = listed
        fixture.decoys += [_decoy(root / "images" / split / "000000999999.jpg"),
                           _decoy(root / "annotations" / split / "000000999999.png")]
    return fixture


#: The Cityscapes labelIds a fixture's labels cover: void 0..6, classes 7..33, 255 (-1).
CITYSCAPES_VALUES = np.array([*range(34), 255])


def write_cityscapes_root(tmp: Path, *, size: tuple[int, int] = (32, 64),
                          sizes: Sequence[tuple[int, int]] | None = None,
                          seed: int = 0) -> FixtureRoot:
    """Cityscapes: 3 train images (2 cities) and 2 val images of ``size`` (H, W; the real
    ones are 1024×2048), or the k-th image of each split of ``sizes[k % len(sizes)]``;
    ``*_gtFine_labelIds.png`` holding every labelId 0..33 and 255.

    Decoys: a ``.png`` without the ``_leftImg8bit`` suffix and a ``*_leftImg8bit.jpg``.
    """
    root = Path(tmp) / "cityscapes"
    rng = np.random.default_rng(seed)
    sizes = list(sizes or [size])
    fixture = FixtureRoot(root)
    plan = {"train": [("aachen", 0), ("aachen", 1), ("bochum", 0)],
            "val": [("frankfurt", 294), ("lindau", 19)]}
    for split, frames in plan.items():
        keys = []
        for k, (city, frame) in enumerate(frames):
            h, w = sizes[k % len(sizes)]
            stem = f"{city}_000000_{frame:06d}"
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(rng, h, w)).save(img_dir / f"{stem}_leftImg8bit.png")
            label = _label(rng, h, w, np.roll(CITYSCAPES_VALUES, -len(keys)))
            Image.fromarray(label).save(gt_dir / f"{stem}_gtFine_labelIds.png")
            keys.append(f"{city}/{stem}_leftImg8bit")
        fixture.splits[split] = keys
        city = frames[0][0]
        fixture.decoys += [
            _decoy(root / "leftImg8bit" / split / city / f"{city}_notes.png"),
            _decoy(root / "leftImg8bit" / split / city / f"{city}_000000_999999_leftImg8bit.jpg"),
        ]
    return fixture


#: IIC's Potsdam gt ids: 0 road, 1 building, 2 low vegetation, 3 tree, 4 car, 5 clutter.
POTSDAM_VALUES = np.array([0, 1, 2, 3, 4, 5, 255])


def write_potsdam_root(tmp: Path, *, size: int = 64, seed: int = 0) -> FixtureRoot:
    """Potsdam-3 in IIC's layout with ``size``² tiles (the real ones are 200²).

    Lists: labelled_train (3 ids), unlabelled_train (2, no ``gt``), labelled_test
    (3), all.txt (all 8). ``img`` is uint8 H×W×4 (RGB + a distinct IR plane),
    ``gt`` int32 as IIC's script saves it. Decoy: ``imgs/999.mat`` (garbage) and
    a listed-nowhere ``gt/998.mat``.
    """
    root = Path(tmp) / "potsdam"
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True)
    (root / "gt").mkdir(parents=True)
    lists = {"labelled_train": ["12", "7", "305"], "unlabelled_train": ["41", "2"],
             "labelled_test": ["88", "3", "190"]}
    for name, ids in lists.items():
        for k, tile in enumerate(ids):
            rgb = _image(rng, size, size)
            ir = np.full((size, size, 1), 7, np.uint8)
            savemat(root / "imgs" / f"{tile}.mat", {"img": np.concatenate([rgb, ir], axis=2)})
            if name != "unlabelled_train":
                gt = _label(rng, size, size, np.roll(POTSDAM_VALUES, -k)).astype(np.int32)
                savemat(root / "gt" / f"{tile}.mat", {"gt": gt})
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    everything = [i for ids in lists.values() for i in ids]
    (root / "all.txt").write_text("".join(f"{i}\n" for i in everything))
    fixture = FixtureRoot(root, splits={
        "train": lists["labelled_train"] + lists["unlabelled_train"],
        "labelled_train": lists["labelled_train"],
        "val": lists["labelled_test"],
        "all": everything,
    })
    fixture.decoys += [_decoy(root / "imgs" / "999.mat"), _decoy(root / "gt" / "998.mat")]
    return fixture
