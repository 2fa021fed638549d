"""Tests for segeig.data.prepare and the scripts/prepare_*.py clients."""

from __future__ import annotations

import importlib.util
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segeig.data.prepare import (
    PASCAL_CONTEXT_DETAIL_IDS,
    check_counts,
    convert_pascal_context,
    detail_to_context59,
    extract_archive,
)
from segeig.data.registry import build_dataset

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _png_bytes(tmp_path: Path, a: np.ndarray) -> bytes:
    p = tmp_path / "tmp.png"
    Image.fromarray(a).save(p)
    return p.read_bytes()


def test_extract_ade_zip_and_count_warning(tmp_path):
    img = _png_bytes(tmp_path, np.zeros((4, 4, 3), np.uint8))
    lbl = _png_bytes(tmp_path, np.ones((4, 4), np.uint8))
    z = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for sub, pre in (("training", "ADE_train"), ("validation", "ADE_val")):
            zf.writestr(f"ADEChallengeData2016/images/{sub}/{pre}_00000001.jpg", img)
            zf.writestr(f"ADEChallengeData2016/annotations/{sub}/{pre}_00000001.png", lbl)
    extract_archive(z, tmp_path / "data")
    counts, notes = check_counts("ade20k", tmp_path / "data")
    assert counts == {"train": 1, "val": 1}
    assert len(notes) == 2 and "20210" in notes[0]


def test_extract_refuses_path_traversal(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        extract_archive(z, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_detail_ids_map_to_context59():
    assert len(PASCAL_CONTEXT_DETAIL_IDS) == 60 and PASCAL_CONTEXT_DETAIL_IDS[0] == 0
    mask = np.array([[0, 2, 9], [458, 18, 0]])
    # 2 = aeroplane -> 1, 9 = bag -> 2, 18 = bed -> 3, 458 = wood -> 59
    assert detail_to_context59(mask).tolist() == [[0, 1, 2], [59, 3, 0]]
    with pytest.raises(ValueError, match="not among"):
        detail_to_context59(np.array([[1]]))


def test_convert_pascal_context_with_fake_detail_api(tmp_path, monkeypatch):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    for n in ("2008_000002", "2008_000003", "2008_000007"):
        Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(voc / "JPEGImages" / f"{n}.jpg")
    (tmp_path / "trainval_merged.json").write_text("{}")

    class FakeDetail:
        def __init__(self, json_path, img_dir, split):
            names = ["2008_000003", "2008_000002"] if split == "train" else ["2008_000007"]
            self.imgs = [{"file_name": f"{n}.jpg"} for n in names]

        def getImgs(self):  # noqa: N802 - the Detail API's spelling
            return self.imgs

        def getMask(self, rec):  # noqa: N802
            m = np.zeros((3, 5), np.int64)
            m[0, :3] = (2, 458, 260)
            return m

    monkeypatch.setitem(sys.modules, "detail", types.SimpleNamespace(Detail=FakeDetail))
    counts = convert_pascal_context(voc, tmp_path / "trainval_merged.json")
    assert counts == {"train": 2, "val": 1}
    lst = voc / "ImageSets" / "SegmentationContext" / "train.txt"
    assert lst.read_text() == "2008_000002\n2008_000003\n"
    s = build_dataset("pascal_context", tmp_path, "val", num_classes=60)[0]
    assert s.label[0, :4].tolist() == [1, 59, PASCAL_CONTEXT_DETAIL_IDS.index(260), 0]


def test_convert_without_detail_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "detail", None)  # makes the import fail
    with pytest.raises(ImportError, match="detail-api"):
        convert_pascal_context(tmp_path, tmp_path / "x.json")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["prepare_ade20k", "prepare_pascal_context"])
def test_scripts_help_and_layout_error(name, tmp_path, capsys):
    mod = _load_script(name)
    with pytest.raises(SystemExit) as ei:
        mod.main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "http" in out  # says where to obtain the data
    assert mod.main(["--root", str(tmp_path)]) == 1
    assert "Expected layout" in capsys.readouterr().err
