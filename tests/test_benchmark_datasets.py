"""cocostuff27, cityscapes27 and potsdam3: layouts, splits, class maps, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from segeig.data import (
    CocoStuff27,
    DatasetLayoutError,
    ListFileError,
    build_dataset,
    verify_layout,
)
from segeig.data.lists import read_id_list, read_mat_array
from segeig.evaluation.protocols import resolve_protocol
from segeig.train.config import default_config
from tests.dataset_fixtures import (
    write_cityscapes_root,
    write_cocostuff_root,
    write_potsdam_root,
)
from tests.stego_reference import (
    CITYSCAPES_TO_27,
    POTSDAM_TO_3,
    STEGO_FINE_TO_COARSE,
    map_ids,
)

# ---------------------------------------------------------------- COCO-Stuff-27

def test_cocostuff_maps_every_fine_id_and_reads_only_listed_images(tmp_path):
    fx = write_cocostuff_root(tmp_path)
    seen = set()
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        ds = build_dataset("cocostuff27", fx.root, split)
        assert isinstance(ds, CocoStuff27) and ds.num_classes == 27
        assert [ds.key(i) for i in range(len(ds))] == fx.splits[folder]  # list order
        assert ds[0].name == f"{folder}/{fx.splits[folder][0]}"
        for i in range(len(ds)):  # the decoys are garbage: reading one would fail
            sample = ds[i]
            raw = np.asarray(Image.open(fx.root / "annotations" / folder
                                        / f"{ds.key(i)}.png"))
            seen |= set(np.unique(raw).tolist())
            assert sample.image.shape == (48, 64, 3) and sample.label.dtype == np.uint8
            np.testing.assert_array_equal(sample.label, map_ids(raw, STEGO_FINE_TO_COARSE))
    assert set(range(182)) | {200, 255} <= seen  # every fine id went through the map


def test_cocostuff_class_names_and_stuff_ids():
    from segeig.data.classes import COCOSTUFF_27_CLASSES, COCOSTUFF_FINE_TO_27

    assert COCOSTUFF_27_CLASSES[:12] == (
        "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory",
        "animal", "outdoor", "person", "sports", "vehicle")
    assert COCOSTUFF_27_CLASSES[12:] == (
        "ceiling", "floor", "food", "furniture", "rawmaterial", "textile", "wall", "window",
        "building", "ground", "plant", "sky", "solid", "structural", "water")
    stuff = [f for f, c in enumerate(COCOSTUFF_FINE_TO_27) if c >= 12]
    assert stuff == list(range(91, 182))  # IIC's "stuff": fine ids 91..181
    # A few names one can check by eye (0-based stuffthingmaps ids).
    named = {0: "person", 2: "vehicle", 101: "ceiling", 123: "plant", 147: "water",
             156: "sky", 170: "wall", 180: "window"}
    assert {f: COCOSTUFF_27_CLASSES[COCOSTUFF_FINE_TO_27[f]] for f in named} == named


def test_cocostuff_training_view_needs_no_annotations(tmp_path):
    fx = write_cocostuff_root(tmp_path)
    for path in (fx.root / "annotations").rglob("*.png"):
        path.unlink()
    ds = build_dataset("cocostuff27", fx.root, "train", with_labels=False)
    assert len(ds) == 3 and ds[0].label is None


def test_cocostuff_missing_list_says_where_lists_come_from(tmp_path):
    fx = write_cocostuff_root(tmp_path)
    (fx.root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").unlink()
    with pytest.raises(DatasetLayoutError) as info:
        build_dataset("cocostuff27", fx.root, "val")
    text = str(info.value)
    assert "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt" in text
    assert "IIC" in text and "prepare_cocostuff27.py" in text and "--regenerate-lists" in text
    assert "75%" in text and "360" in text


def test_cocostuff_bad_list_and_missing_image(tmp_path):
    fx = write_cocostuff_root(tmp_path)
    listing = fx.root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    listing.write_text("000000000139\n../../etc/passwd\n")
    with pytest.raises(ListFileError, match=r"line 2: '\.\./\.\./etc/passwd'"):
        build_dataset("cocostuff27", fx.root, "val")
    listing.write_text("000000123456\n")
    with pytest.raises(DatasetLayoutError, match="000000123456.jpg"):
        build_dataset("cocostuff27", fx.root, "val")


def test_list_reads_are_bounded(tmp_path):
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(ListFileError, match="not a regular file"):
        read_id_list(tmp_path / "dir.txt")
    big = tmp_path / "big.txt"
    big.write_text("1\n" * 100)
    with pytest.raises(ListFileError, match="more than the 50"):
        read_id_list(big, max_bytes=50)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"12\n\xff\xfe\n")
    with pytest.raises(ListFileError, match="not UTF-8"):
        read_id_list(binary)
    ok = tmp_path / "ok.txt"
    ok.write_text("\ufeff 7 \r\n\n3\n7\n")
    assert read_id_list(ok) == ["7", "3"]


# ---------------------------------------------------------------- Cityscapes-27

def test_cityscapes27_maps_every_label_id_and_keys(tmp_path):
    fx = write_cityscapes_root(tmp_path)
    table = CITYSCAPES_TO_27
    for split in ("train", "val"):
        ds = build_dataset("cityscapes27", fx.root, split)
        assert ds.num_classes == 27 and ds.class_names[0] == "road"
        assert ds.class_names[-1] == "bicycle" and ds.class_names[11] == "polegroup"
        assert [ds.key(i) for i in range(len(ds))] == fx.splits[split]
        plain = build_dataset("cityscapes", fx.root, split)  # the one 27-class map
        for i in range(len(ds)):
            raw = np.asarray(Image.open(ds.items[i].label))
            assert set(np.unique(raw).tolist()) >= set(range(34)) | {255}
            np.testing.assert_array_equal(ds[i].label, map_ids(raw, table))
            np.testing.assert_array_equal(ds[i].label, plain[i].label)
    assert build_dataset("cityscapes27", fx.root, "val").key(0) == \
        "frankfurt/frankfurt_000000_000294_leftImg8bit"
    with pytest.raises(ValueError, match="27 classes"):
        build_dataset("cityscapes27", fx.root, "val", num_classes=19)
    assert verify_layout("cityscapes27", fx.root) == {"train": 3, "val": 2}


# ---------------------------------------------------------------- Potsdam-3

def test_potsdam_splits_rgb_and_three_classes(tmp_path):
    fx = write_potsdam_root(tmp_path)
    val = build_dataset("potsdam3", fx.root, "val")
    assert val.num_classes == 3 and [val.key(i) for i in range(len(val))] == fx.splits["val"]
    table = POTSDAM_TO_3
    for i in range(len(val)):
        sample = val[i]
        stored = loadmat(fx.root / "imgs" / f"{val.key(i)}.mat")["img"]
        np.testing.assert_array_equal(sample.image, stored[:, :, :3])  # IR dropped
        gt = loadmat(fx.root / "gt" / f"{val.key(i)}.mat")["gt"]
        assert set(np.unique(gt).tolist()) == {0, 1, 2, 3, 4, 5, 255}
        np.testing.assert_array_equal(sample.label, map_ids(gt, table))
        assert sample.name == val.key(i)
    for split in ("train", "labelled_train", "all"):
        ds = build_dataset("potsdam3", fx.root, split, with_labels=False)
        assert [ds.key(i) for i in range(len(ds))] == fx.splits[split]
        assert all(ds[i].image.shape == (64, 64, 3) for i in range(len(ds)))
    assert len(build_dataset("potsdam3", fx.root, "test")) == 3  # alias of val
    assert verify_layout("potsdam3", fx.root) == {"train": 5, "val": 3}


def test_potsdam_train_split_has_no_labels(tmp_path):
    fx = write_potsdam_root(tmp_path)
    with pytest.raises(ValueError, match="unlabelled_train"):
        build_dataset("potsdam3", fx.root, "train")
    labelled = build_dataset("potsdam3", fx.root, "labelled_train")
    assert labelled[0].label is not None


def test_potsdam_bad_mat_files_are_clear_errors(tmp_path):
    fx = write_potsdam_root(tmp_path)
    val = build_dataset("potsdam3", fx.root, "val")
    tile = fx.root / "imgs" / f"{val.key(0)}.mat"
    tile.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ListFileError, match=re.escape(str(tile))):
        val[0]
    savemat(tile, {"image": np.zeros((64, 64, 4), np.uint8)})
    with pytest.raises(ListFileError, match="no variable 'img'"):
        val[0]
    savemat(tile, {"img": np.zeros((64, 64), np.uint8)})
    with pytest.raises(ListFileError, match="shape"):
        val[0]
    savemat(tile, {"img": np.zeros((64, 64, 4), np.float32)})
    with pytest.raises(ListFileError, match="float32; expected uint8"):
        val[0]
    savemat(tile, {"img": np.zeros((32, 64, 4), np.uint8)})
    with pytest.raises(ListFileError, match="32x64|64x32"):
        val[0]  # image and label sizes differ
    savemat(tile, {"img": np.array([["a"]], dtype=object)})
    with pytest.raises(ListFileError, match="not a numeric array"):
        read_mat_array(tile, "img")
    gt = fx.root / "gt" / f"{val.key(1)}.mat"
    savemat(gt, {"gt": np.array([[0, 4, 9], [-1, 300, 3]] * 2, np.int32)})
    savemat(fx.root / "imgs" / f"{val.key(1)}.mat", {"img": np.zeros((4, 3, 4), np.uint8)})
    assert val[1].label.tolist() == [[0, 0, 255], [255, 255, 2]] * 2


def test_potsdam_missing_list(tmp_path):
    fx = write_potsdam_root(tmp_path)
    (fx.root / "labelled_test.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="labelled_test.txt.*IIC"):
        build_dataset("potsdam3", fx.root, "val")


# ---------------------------------------------------------------- protocols and presets

@pytest.mark.parametrize(("dataset", "classes"),
                         [("cocostuff27", 27), ("cityscapes27", 27), ("potsdam3", 3)])
def test_protocol_rows_and_presets(dataset, classes):
    protocol = resolve_protocol(None, dataset)
    assert (protocol.name, protocol.num_classes, protocol.short_side, protocol.crop) == (
        "stego", classes, 320, 320)
    assert resolve_protocol("native", dataset).num_classes == classes
    with pytest.raises(ValueError, match="not defined"):
        resolve_protocol("full", dataset)
    config = default_config(dataset, "/data")
    assert config.kmeans_k == classes and config.resolution == 320 and config.crop == 320
    assert config.head.k > classes


def test_key_is_the_path_under_the_split_image_folder(tmp_path):
    for split in ("train", "val"):
        for rel in ("a/b/photo_1.jpg", "top.png"):
            path = tmp_path / "images" / split / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
            label = tmp_path / "annotations" / split / rel
            label.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(label.with_suffix(".png"))
    ds = build_dataset("custom", tmp_path, "val", num_classes=1)
    assert [ds.key(i) for i in range(len(ds))] == ["a/b/photo_1", "top"]
    assert ds[0].name == "val/a/b/photo_1"  # names keep the split; keys do not
    folder = build_dataset("folder", tmp_path / "images")
    assert folder.key(0) == folder[0].name == "train/a/b/photo_1"
