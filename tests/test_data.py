"""Tests for segeig.data: readers in the real layouts, label conventions,
unsupervised (label-free) loading, layout errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segeig.data.base as data_base
import segeig.data.cityscapes as data_cityscapes
import segeig.data.custom as data_custom
from segeig.data import DatasetLayoutError, Sample
from segeig.data.classes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_19_CLASSES,
    CITYSCAPES_19_PALETTE,
    CITYSCAPES_27_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    PASCAL_CONTEXT_59_CLASSES,
)
from segeig.data.registry import DATASETS, build_dataset, verify_layout

H, W = 4, 8


def _img(path: Path, h: int = H, w: int = W, exif_orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(len(str(path))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    Image.fromarray(a).save(path, **kw)


def _lbl(path: Path, values: list[int]) -> None:
    """Label PNG whose first row holds ``values`` (rest = values[0])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((H, W), values[0], np.uint8)
    a[0, : len(values)] = values
    Image.fromarray(a).save(path)


def _row(sample: Sample, n: int) -> list[int]:
    assert sample.label is not None and sample.label.dtype == np.uint8
    assert sample.label.shape == sample.image.shape[:2]
    return sample.label[0, :n].tolist()


def _forbid_label_reads(monkeypatch):
    def boom(path):
        raise AssertionError(f"label file opened with with_labels=False: {path}")

    for module in (data_base, data_cityscapes, data_custom):
        monkeypatch.setattr(module, "read_label", boom)


# ---------------------------------------------------------------- ADE20K
@pytest.fixture
def ade_root(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for sub, pre in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in (1, 2):
            _img(base / "images" / sub / f"{pre}_{i:08d}.jpg")
            _lbl(base / "annotations" / sub / f"{pre}_{i:08d}.png", [0, 1, 150, 37])
    return tmp_path


def test_ade20k_labels_and_names(ade_root):
    ds = build_dataset("ade20k", ade_root, "val")
    assert len(ds) == 2 and ds.num_classes == 150 and ds.class_names[0] == "wall"
    s = ds[0]
    assert s.name == "validation/ADE_val_00000001" and s.image.shape == (H, W, 3)
    assert _row(s, 4) == [255, 0, 149, 36]
    # ROOT may be ADEChallengeData2016 itself; "training" is accepted for "train".
    assert len(build_dataset("ade20k", ade_root / "ADEChallengeData2016", "training")) == 2


def test_ade20k_without_labels_never_touches_annotations(ade_root, monkeypatch):
    shutil.rmtree(ade_root / "ADEChallengeData2016" / "annotations")
    _forbid_label_reads(monkeypatch)
    ds = build_dataset("ade20k", ade_root, "train", with_labels=False)
    s = ds[1]
    assert s.label is None and s.image.dtype == np.uint8 and not ds.with_labels


def test_ade20k_layout_errors(tmp_path, ade_root):
    (tmp_path / "empty" / "foo").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as ei:
        build_dataset("ade20k", tmp_path / "empty")
    msg = str(ei.value)
    assert "Expected layout" in msg and "ADEChallengeData2016" in msg and "foo/" in msg
    shutil.rmtree(ade_root / "ADEChallengeData2016" / "images" / "validation")
    with pytest.raises(DatasetLayoutError, match="images/validation") as ei:
        build_dataset("ade20k", ade_root, "val")
    assert "training/" in str(ei.value)  # what was found instead
    (ade_root / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(DatasetLayoutError, match="1 of 2 images have no annotation") as ei:
        build_dataset("ade20k", ade_root, "train")
    assert "training/ADE_train_00000002" in str(ei.value)
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("ade20k", ade_root, "test")


# ------------------------------------------------------- PASCAL-Context
@pytest.fixture
def pc_root(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    for split, names in ids.items():
        for n in names:
            _img(voc / "JPEGImages" / f"{n}.jpg")
            _lbl(voc / "SegmentationClassContext" / f"{n}.png", [0, 1, 59, 30])
        lst = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("\n".join(names) + "\n\n")
    return tmp_path


def test_pascal_context_59_vs_60(pc_root):
    ds59 = build_dataset("pascal_context", pc_root, "val")
    assert ds59.num_classes == 59 and ds59.class_names[0] == "aeroplane"
    assert _row(ds59[0], 4) == [255, 0, 58, 29] and ds59[0].name == "2008_000007"
    ds60 = build_dataset("pascal_context", pc_root, "val", num_classes=60)
    assert ds60.num_classes == 60 and ds60.class_names[0] == "background"
    assert _row(ds60[0], 4) == [0, 1, 59, 30]
    assert len(ds60.palette) == 60 and len(ds59.palette) == 59
    with pytest.raises(ValueError, match="59 or 60"):
        build_dataset("pascal_context", pc_root, "val", num_classes=21)


@pytest.mark.parametrize("sub", [".", "VOCdevkit", "VOCdevkit/VOC2010"])
def test_pascal_context_root_variants(pc_root, sub):
    assert len(build_dataset("pascal_context", pc_root / sub, "train")) == 2


def test_pascal_context_unlabelled_and_errors(pc_root, monkeypatch):
    voc = pc_root / "VOCdevkit" / "VOC2010"
    shutil.rmtree(voc / "SegmentationClassContext")
    _forbid_label_reads(monkeypatch)
    ds = build_dataset("pascal_context", pc_root, "train", with_labels=False)
    assert [ds[i].label for i in range(len(ds))] == [None, None]
    with pytest.raises(DatasetLayoutError, match="SegmentationClassContext"):
        build_dataset("pascal_context", pc_root, "train")
    (voc / "ImageSets/SegmentationContext/val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="val.txt") as ei:
        build_dataset("pascal_context", pc_root, "val", with_labels=False)
    assert "train.txt" in str(ei.value)  # found


# ----------------------------------------------------------- Cityscapes
CITY_IDS = [0, 6, 7, 8, 9, 33, 26, 255]  # 255 = license plate (-1) as stored


@pytest.fixture
def city_root(tmp_path):
    for split, city in (("train", "aachen"), ("val", "frankfurt"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        _img(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        gt = tmp_path / "gtFine" / split / city
        _lbl(gt / f"{stem}_gtFine_labelIds.png", CITY_IDS)
        # Deliberately not the conversion of labelIds, to see which file is read.
        _lbl(gt / f"{stem}_gtFine_labelTrainIds.png", [5, 5, 5, 5, 5, 5, 5, 5])
        (gt / f"{stem}_gtFine_color.png").write_bytes(b"unused")
    return tmp_path


def test_cityscapes_27_is_labelids_minus_7(city_root):
    ds = build_dataset("cityscapes", city_root, "val")
    assert ds.num_classes == 27 and len(ds) == 2
    assert ds[0].name == "val/frankfurt/frankfurt_000000_000019"
    assert _row(ds[0], 8) == [255, 255, 0, 1, 2, 26, 19, 255]


def test_cityscapes_19_prefers_trainids_then_labelids(city_root):
    ds = build_dataset("cityscapes", city_root, "val", num_classes=19)
    assert ds.num_classes == 19 and _row(ds[0], 8) == [5] * 8
    for p in city_root.rglob("*_labelTrainIds.png"):
        p.unlink()
    ds = build_dataset("cityscapes", city_root, "val", num_classes=19)
    assert _row(ds[1], 8) == [255, 255, 0, 1, 255, 18, 13, 255]


def test_cityscapes_unlabelled_and_errors(city_root, monkeypatch):
    shutil.rmtree(city_root / "gtFine")
    _forbid_label_reads(monkeypatch)
    assert build_dataset("cityscapes", city_root, "train", with_labels=False)[0].label is None
    with pytest.raises(DatasetLayoutError, match="gtFine/train"):
        build_dataset("cityscapes", city_root, "train")
    with pytest.raises(DatasetLayoutError, match="leftImg8bit/test") as ei:
        build_dataset("cityscapes", city_root, "test", with_labels=False)
    assert "train/" in str(ei.value) and "val/" in str(ei.value)
    with pytest.raises(ValueError, match="19 or 27"):
        build_dataset("cityscapes", city_root, "val", num_classes=30)


def test_class_tables():
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES)) == len(ADE20K_PALETTE)
    assert len(PASCAL_CONTEXT_59_CLASSES) == 59 == len(set(PASCAL_CONTEXT_59_CLASSES))
    assert len(CITYSCAPES_27_CLASSES) == 27 and len(CITYSCAPES_19_CLASSES) == 19
    assert CITYSCAPES_19_CLASSES[6] == "traffic light" and CITYSCAPES_27_CLASSES[2] == "parking"
    assert [t for t in CITYSCAPES_ID_TO_TRAINID.values() if t != 255] == list(range(19))
    assert tuple(CITYSCAPES_19_PALETTE[0]) == (128, 64, 128)  # road
    assert tuple(CITYSCAPES_19_PALETTE[18]) == (119, 11, 32)  # bicycle
    assert len({tuple(c) for c in ADE20K_PALETTE}) == 150


# --------------------------------------------------------------- custom
@pytest.fixture
def custom_root(tmp_path):
    for split, names in (("train", ["a", "sub/b"]), ("val", ["c"])):
        for n in names:
            _img(tmp_path / "images" / split / f"{n}.{'png' if n == 'a' else 'jpg'}")
            _lbl(tmp_path / "annotations" / split / f"{n}.png", [0, 2, 255])
    _lbl(tmp_path / "annotations" / "train" / "a.png", [0, 4, 255, 1])
    (tmp_path / "classes.txt").write_text("sky\ntree\n\nroad\nhouse\ncar\n")
    return tmp_path


def test_custom_classes_file_and_ignore(custom_root):
    ds = build_dataset("custom", custom_root, "train")
    assert ds.class_names == ["sky", "tree", "road", "house", "car"] and ds.num_classes == 5
    assert [s.name for s in ds] == ["train/a", "train/sub/b"]
    assert _row(ds[0], 4) == [0, 4, 255, 1]
    assert ds.palette.shape == (5, 3)
    with pytest.raises(ValueError, match="classes.txt"):
        build_dataset("custom", custom_root, "train", num_classes=7)


def test_custom_num_classes_scan_and_explicit(custom_root):
    (custom_root / "classes.txt").unlink()
    ds = build_dataset("custom", custom_root, "train")
    assert ds.class_names is None and ds.num_classes == 5  # max id 4 + 1
    assert build_dataset("custom", custom_root, "train", num_classes=9).num_classes == 9
    small = build_dataset("custom", custom_root, "train", num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3"):
        small[0]
    assert build_dataset("custom", custom_root, "val", with_labels=False).num_classes is None


def test_custom_missing_annotations_listed(custom_root, monkeypatch):
    (custom_root / "annotations" / "train" / "sub" / "b.png").unlink()
    with pytest.raises(DatasetLayoutError, match="train/sub/b"):
        build_dataset("custom", custom_root, "train")
    shutil.rmtree(custom_root / "annotations")
    _forbid_label_reads(monkeypatch)
    assert len(build_dataset("custom", custom_root, "train", with_labels=False)) == 2
    with pytest.raises(DatasetLayoutError, match="images/test") as ei:
        build_dataset("custom", custom_root, "test")
    assert "train/" in str(ei.value)


def test_exif_rotated_photo_with_label_on_stored_grid(tmp_path):
    # Annotation tools draw on the stored pixel grid; if the photo carries an
    # EXIF rotation the reader must fall back to that grid instead of failing.
    _img(tmp_path / "images" / "val" / "r.jpg", exif_orientation=6)
    _lbl(tmp_path / "annotations" / "val" / "r.png", [1, 0])
    s = build_dataset("custom", tmp_path, "val")[0]
    assert s.image.shape == (H, W, 3) and s.label.shape == (H, W)


# --------------------------------------------------------------- folder
def test_folder_skips_corrupt_file_with_warning(tmp_path, caplog):
    _img(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    _img(tmp_path / "trip" / "c.png")
    _img(tmp_path / ".thumbs" / "d.jpg")
    ds = build_dataset("folder", tmp_path)  # with_labels coerced to False
    assert len(ds) == 3 and ds.num_classes is None and not ds.with_labels
    with caplog.at_level(logging.WARNING, logger="segeig.data.folder"):
        s = ds[1]
    assert s.name == "trip/c" and s.label is None
    assert any("b.jpg" in r.getMessage() for r in caplog.records)
    assert [ds[i].name for i in range(3)] == ["a", "trip/c", "trip/c"]


def test_folder_all_corrupt_and_empty(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(RuntimeError, match="none of its 1 images"):
        build_dataset("folder", tmp_path)[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no image files"):
        build_dataset("folder", tmp_path / "empty")


def test_folder_keeps_extension_when_stems_clash(tmp_path):
    _img(tmp_path / "x.jpg")
    _img(tmp_path / "x.png")
    assert [it.name for it in build_dataset("folder", tmp_path).items] == ["x.jpg", "x.png"]


# ------------------------------------------------------------ registry
def test_build_dataset_unknown_name_lists_valid(tmp_path):
    with pytest.raises(ValueError) as ei:
        build_dataset("coco", tmp_path)
    for name in DATASETS:
        assert name in str(ei.value)


def test_transform_and_verify_layout(pc_root):
    ds = build_dataset("pascal-context", pc_root, "train", with_labels=False,
                       transform=lambda s: {"name": s.name, "h": s.image.shape[0]})
    assert ds[0] == {"name": "2008_000002", "h": H}
    assert verify_layout("pascal_context", pc_root) == {"train": 2, "val": 1}


def test_layout_error_pickles(tmp_path):
    import pickle

    e = DatasetLayoutError("ade20k", tmp_path, "problem", "  ROOT/x")
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


# ------------------------------------------------------------ image keys
def test_key_is_the_path_under_the_split_image_folder(ade_root, pc_root, city_root,
                                                      custom_root):
    """``SegDataset.key``: what other tools name saved predictions by (KEY.png)."""
    city = build_dataset("cityscapes", city_root, "val")
    assert [city.key(i) for i in range(len(city))] == [
        "frankfurt/frankfurt_000000_000019_leftImg8bit",
        "lindau/lindau_000000_000019_leftImg8bit"]
    assert city.items[0].name == "val/frankfurt/frankfurt_000000_000019"  # names unchanged
    ade = build_dataset("ade20k", ade_root, "val")
    assert ade.key(0) == "ADE_val_00000001"
    assert build_dataset("pascal_context", pc_root, "val").key(0) == "2008_000007"
    custom = build_dataset("custom", custom_root, "train")
    assert sorted(custom.key(i) for i in range(len(custom))) == ["a", "sub/b"]
    folder = build_dataset("folder", custom_root / "images" / "train")
    assert sorted(folder.key(i) for i in range(len(folder))) == ["a", "sub/b"]
