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

# The fine -> coarse dict as printed in STEGO's, HP's, EAGLE's ... COCO dataset
# classes (``fine_to_coarse``), kept here as an independent copy to check every id.
STEGO_FINE_TO_COARSE = {
    0: 9, 1: 11, 2: 11, 3: 11, 4: 11, 5: 11, 6: 11, 7: 11, 8: 11, 9: 8, 10: 8, 11: 8, 12: 8,
    13: 8, 14: 8, 15: 7, 16: 7, 17: 7, 18: 7, 19: 7, 20: 7, 21: 7, 22: 7, 23: 7, 24: 7,
    25: 6, 26: 6, 27: 6, 28: 6, 29: 6, 30: 6, 31: 6, 32: 6, 33: 10, 34: 10, 35: 10, 36: 10,
    37: 10, 38: 10, 39: 10, 40: 10, 41: 10, 42: 10, 43: 5, 44: 5, 45: 5, 46: 5, 47: 5, 48: 5,
    49: 5, 50: 5, 51: 2, 52: 2, 53: 2, 54: 2, 55: 2, 56: 2, 57: 2, 58: 2, 59: 2, 60: 2,
    61: 3, 62: 3, 63: 3, 64: 3, 65: 3, 66: 3, 67: 3, 68: 3, 69: 3, 70: 3, 71: 0, 72: 0,
    73: 0, 74: 0, 75: 0, 76: 0, 77: 1, 78: 1, 79: 1, 80: 1, 81: 1, 82: 1, 83: 4, 84: 4,
    85: 4, 86: 4, 87: 4, 88: 4, 89: 4, 90: 4, 91: 17, 92: 17, 93: 22, 94: 20, 95: 20, 96: 22,
    97: 15, 98: 25, 99: 16, 100: 13, 101: 12, 102: 12, 103: 17, 104: 17, 105: 23, 106: 15,
    107: 15, 108: 17, 109: 15, 110: 21, 111: 15, 112: 25, 113: 13, 114: 13, 115: 13, 116: 13,
    117: 13, 118: 22, 119: 26, 120: 14, 121: 14, 122: 15, 123: 22, 124: 21, 125: 21, 126: 24,
    127: 20, 128: 22, 129: 15, 130: 17, 131: 16, 132: 15, 133: 22, 134: 24, 135: 21, 136: 17,
    137: 25, 138: 16, 139: 21, 140: 17, 141: 22, 142: 16, 143: 21, 144: 21, 145: 25, 146: 21,
    147: 26, 148: 21, 149: 24, 150: 20, 151: 17, 152: 14, 153: 21, 154: 26, 155: 15, 156: 23,
    157: 20, 158: 21, 159: 24, 160: 15, 161: 24, 162: 22, 163: 25, 164: 15, 165: 20, 166: 17,
    167: 17, 168: 22, 169: 14, 170: 18, 171: 18, 172: 18, 173: 18, 174: 18, 175: 18, 176: 18,
    177: 26, 178: 26, 179: 19, 180: 19, 181: 24}


def _expected(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, 255, np.uint8)
    for fine, coarse in table.items():
        out[raw == fine] = coarse
    return out


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
            np.testing.assert_array_equal(sample.label, _expected(raw, STEGO_FINE_TO_COARSE))
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
    table = {i: i - 7 for i in range(7, 34)}
    for split in ("train", "val"):
        ds = build_dataset("cityscapes27", fx.root, split)
        assert ds.num_classes == 27 and ds.class_names[0] == "road"
        assert ds.class_names[-1] == "bicycle" and ds.class_names[11] == "polegroup"
        assert [ds.key(i) for i in range(len(ds))] == fx.splits[split]
        plain = build_dataset("cityscapes", fx.root, split)  # the one 27-class map
        for i in range(len(ds)):
            raw = np.asarray(Image.open(ds.items[i].label))
            assert set(np.unique(raw).tolist()) >= set(range(34)) | {255}
            np.testing.assert_array_equal(ds[i].label, _expected(raw, table))
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
    table = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}
    for i in range(len(val)):
        sample = val[i]
        stored = loadmat(fx.root / "imgs" / f"{val.key(i)}.mat")["img"]
        np.testing.assert_array_equal(sample.image, stored[:, :, :3])  # IR dropped
        gt = loadmat(fx.root / "gt" / f"{val.key(i)}.mat")["gt"]
        assert set(np.unique(gt).tolist()) == {0, 1, 2, 3, 4, 5, 255}
        np.testing.assert_array_equal(sample.label, _expected(gt, table))
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
