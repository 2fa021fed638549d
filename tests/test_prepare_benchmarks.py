"""scripts/prepare_{cocostuff27,cityscapes27,potsdam3}.py and COCO-Stuff list regeneration."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segeig.data import build_dataset
from segeig.data.prepare import is_curated, regenerate_curated_lists
from tests.dataset_fixtures import (
    write_cityscapes_root,
    write_cocostuff_root,
    write_potsdam_root,
)

REPO = Path(__file__).resolve().parents[1]
WRITERS = {"cocostuff27": write_cocostuff_root, "cityscapes27": write_cityscapes_root,
           "potsdam3": write_potsdam_root}
#: What each script's --help must name: where its archives come from.
SOURCES = {
    "cocostuff27": ("cocodataset.org", "stuffthingmaps_trainval2017.zip", "cocostuff",
                    "IIC", "--regenerate-lists"),
    "cityscapes27": ("cityscapes-dataset.com", "gtFine_trainvaltest.zip",
                     "leftImg8bit_trainvaltest.zip"),
    "potsdam3": ("IIC", "potsdam.zip", "labelled_test.txt", "without a seed"),
}


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_script_help_and_root_check(dataset, tmp_path, capsys):
    mod = _load_script(f"prepare_{dataset}")
    with pytest.raises(SystemExit) as info:
        mod.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for needle in SOURCES[dataset]:
        assert needle in text, needle
    fixture = WRITERS[dataset](tmp_path)
    assert mod.main(["--root", str(fixture.root)]) == 0
    captured = capsys.readouterr()
    counts = {split: len(ids) for split, ids in fixture.splits.items()}
    for split in ("train", "val"):
        n = counts.get(split) or counts[f"{split}2017"]
        assert f"{dataset} {split}: {n} " in captured.out
    assert "warning" in captured.err  # a fixture is not the official release
    assert mod.main(["--root", str(tmp_path / "nothing")]) == 1
    assert "Expected layout" in capsys.readouterr().err


def test_help_runs_as_a_script():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_potsdam3.py"),
                           "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and "imgs/<id>.mat" in done.stdout


def _annotation(h: int, w: int, stuff_rows: int, stuff: int = 123, rest: int = 0) -> np.ndarray:
    label = np.full((h, w), rest, np.uint8)
    label[:stuff_rows] = stuff
    return label


def _write_coco(root: Path, split: str, annotations: dict[str, np.ndarray]) -> None:
    for image_id, label in annotations.items():
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(root / "annotations" / split / f"{image_id}.png")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
            root / "images" / split / f"{image_id}.jpg")


def test_curation_rule():
    assert is_curated(_annotation(360, 360, 270))  # exactly 75 %
    assert not is_curated(_annotation(360, 400, 269))  # 74.7 %
    assert not is_curated(_annotation(359, 500, 359))  # all stuff, too small
    assert is_curated(_annotation(400, 360, 320, rest=255))  # 80 % stuff, rest unlabelled
    assert not is_curated(_annotation(400, 400, 280, rest=255))  # 70 %: 255 counts as not stuff
    assert is_curated(np.full((360, 360), 91, np.uint8))  # first stuff id
    assert is_curated(np.full((360, 360), 181, np.uint8))  # last stuff id
    assert not is_curated(np.full((360, 360), 90, np.uint8))  # last thing id
    assert not is_curated(np.full((360, 360), 182, np.uint8))  # outside the map


def test_regenerate_lists_is_deterministic_and_readable(tmp_path):
    root = tmp_path / "coco"
    _write_coco(root, "val2017", {
        "000000000005": _annotation(360, 360, 270),
        "000000000002": _annotation(400, 400, 300, stuff=170, rest=255),
        "000000000003": _annotation(359, 500, 359),
        "000000000004": _annotation(360, 400, 269),
    })
    _write_coco(root, "train2017", {
        "000000000010": _annotation(360, 360, 360, stuff=156),
        "000000000011": np.full((360, 360), 0, np.uint8),
    })
    mod = _load_script("prepare_cocostuff27")
    assert mod.main(["--root", str(root), "--regenerate-lists"]) == 0
    val_list = root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    train_list = root / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse.txt"
    assert val_list.read_text() == "000000000002\n000000000005\n"  # sorted ids
    assert train_list.read_text() == "000000000010\n"
    first = (val_list.read_bytes(), train_list.read_bytes())
    assert regenerate_curated_lists(root) == {"train2017": 1, "val2017": 2}
    assert (val_list.read_bytes(), train_list.read_bytes()) == first
    assert not list((root / "curated").rglob("*.tmp"))  # atomic writes leave nothing behind
    ds = build_dataset("cocostuff27", root, "val")
    assert [ds.key(i) for i in range(len(ds))] == ["000000000002", "000000000005"]


def test_regenerate_needs_annotations(tmp_path):
    fixture = write_cocostuff_root(tmp_path)
    mod = _load_script("prepare_cocostuff27")
    shutil.rmtree(fixture.root / "annotations" / "train2017")
    assert mod.main(["--root", str(fixture.root), "--regenerate-lists"]) == 1
