"""evaluate --predictions: saved label maps scored like a checkpoint, checked against an
independent computation of the protocol, and every bad input refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segeig.checkpoint import save_checkpoint
from segeig.cli import main
from segeig.evaluation.predictions import (
    PredictionError,
    evaluate_predictions,
    prediction_path,
)
from segeig.evaluation.protocols import PROTOCOLS, load_eval_dataset
from tests.conftest import random_image
from tests.stego_reference import CITYSCAPES_TO_27, expected_scores, map_ids, stego_crop

C = 27  # cityscapes classes under stego
#: Non-square images of different sizes (H, W); each resizes to short side 320
#: without a pixel-centre tie (see stego_crop), one shrinks, the others grow.
SIZES = {"frankfurt/frankfurt_000000_000294": (40, 90),
         "frankfurt/frankfurt_000001_000019": (64, 40),
         "lindau/lindau_000000_000019": (400, 480)}


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode == "P":
        image.putpalette(np.random.default_rng(0).integers(0, 255, 768, dtype=np.uint8)
                         .tobytes())
    image.save(path)
    return path


def _blocks(rng, h, w, values) -> np.ndarray:
    """H×W map of random rectangles of ``values`` (ids that survive resizing)."""
    out = np.full((h, w), rng.choice(values), np.int64)
    for _ in range(6):
        y, x = rng.integers(0, h), rng.integers(0, w)
        out[y : y + rng.integers(4, h // 2 + 5), x : x + rng.integers(4, w // 2 + 5)] = \
            rng.choice(values)
    return out


@pytest.fixture
def city(tmp_path):
    """A Cityscapes root (labelIds, 27 classes + void) and predictions at original size."""
    rng = np.random.default_rng(3)
    root = tmp_path / "cityscapes"
    preds = {}
    for stem, (h, w) in SIZES.items():
        raw = _blocks(rng, h, w, np.r_[0:4, 7:34]).astype(np.uint8)  # 0..3 void
        _png(root / "leftImg8bit" / "val" / f"{stem}_leftImg8bit.png", random_image(rng, h, w))
        _png(root / "gtFine" / "val" / f"{stem}_gtFine_labelIds.png", raw)
        # Clusters follow the classes through a permutation, with errors in blocks.
        perm = rng.permutation(40)
        pred = perm[np.clip(raw.astype(np.int64) - 7, 0, 26)]
        noise = _blocks(rng, h, w, np.arange(40))
        pred = np.where(_blocks(rng, h, w, [0, 0, 1]) == 1, noise, pred)
        preds[f"{stem}_leftImg8bit"] = pred
    return root, preds


# -- the independent computation (tests/stego_reference.py) --------------------

def _expected(root: Path, preds: dict, match: str, segments: int) -> float:
    pairs = []
    for stem in SIZES:
        raw = np.array(Image.open(root / "gtFine" / "val" / f"{stem}_gtFine_labelIds.png"))
        pairs.append((map_ids(raw, CITYSCAPES_TO_27), preds[f"{stem}_leftImg8bit"]))
    return expected_scores(pairs, C, segments, match)[0]


def _write(folder: Path, preds: dict, mode: str | None = None) -> Path:
    for key, pred in preds.items():
        dtype = np.uint16 if mode == "I;16" else np.uint8
        _png(folder / f"{key}.png", pred.astype(dtype), "P" if mode == "P" else None)
    return folder


@pytest.mark.parametrize(("match", "segments", "mode"), [
    ("hungarian", 40, None), ("hungarian-per-image", 40, "P"), ("majority", 40, "I;16")])
def test_equals_independent_protocol(city, tmp_path, match, segments, mode):
    root, preds = city
    folder = _write(tmp_path / "preds", preds, mode)
    protocol = PROTOCOLS["stego", "cityscapes"]
    result = evaluate_predictions(load_eval_dataset(protocol, root), protocol, folder,
                                  match=match, segments=segments)
    expected = _expected(root, preds, match, segments)
    assert 5 < expected < 95  # a real test: neither trivial nor hopeless
    assert result.scores.miou == pytest.approx(expected, abs=0.01)
    assert result.match_used == match and result.n_images == 3
    assert result.predictions["original_size"] == 3


def test_cli_json_carries_the_statement_and_counts_only_listed(city, tmp_path, capsys):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    # Extra maps that no listed image owns: ignored, and counted.
    _png(folder / "frankfurt" / "not_listed.png", np.zeros((40, 90), np.uint8))
    _png(folder / "zurich" / "zurich_000000_000019_leftImg8bit.png", np.zeros((8, 8), np.uint8))
    out = tmp_path / "r.json"
    code = main(["evaluate", "--predictions", str(folder), "--dataset", "cityscapes",
                 "--root", str(root), "--split", "val", "--protocol", "stego",
                 "--segments", "40", "--match", "hungarian", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "no checkpoint chosen with labels" in printed
    data = json.loads(out.read_text())
    assert data["n_images"] == 3 and data["predictions"]["ignored"] == 2
    assert data["miou"] == pytest.approx(_expected(root, preds, "hungarian", 40), abs=0.01)
    assert (data["protocol"], data["n_clusters"], data["matching"]) == ("stego", 40, "hungarian")
    assert data["crop"] == "centre 320x320" and "320" in data["resolution"]
    assert data["crf"].startswith("off") and data["miou_crf"] is None
    assert "no checkpoint chosen with labels" in data["checkpoint_selection"]
    # Only the first listed image: the other two maps count as ignored too.
    code = main(["evaluate", "--predictions", str(folder), "--dataset", "cityscapes",
                 "--root", str(root), "--segments", "40", "--max-images", "1",
                 "--json", str(out), "--report-dir", str(tmp_path / "rep")])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["n_images"] == 1 and data["predictions"]["ignored"] == 4
    # auto with 40 segments for 27 classes: many-to-one, and the report says so.
    assert (data["match"], data["matching"]) == ("auto", "majority")
    assert "many-to-one" in data["matching_note"]
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "no checkpoint chosen with labels" in report and "Protocol statement" in report


def test_maps_already_at_the_crop_are_accepted(city, tmp_path):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    key = "lindau/lindau_000000_000019_leftImg8bit"
    _png(folder / f"{key}.png", stego_crop(preds[key]).astype(np.uint8))
    protocol = PROTOCOLS["stego", "cityscapes"]
    result = evaluate_predictions(load_eval_dataset(protocol, root), protocol, folder,
                                  match="hungarian", segments=40)
    assert (result.predictions["original_size"], result.predictions["prepared_size"]) == (2, 1)
    assert result.scores.miou == pytest.approx(_expected(root, preds, "hungarian", 40),
                                               abs=0.01)


# -- bad inputs, each named ---------------------------------------------------

def _score(root: Path, folder: Path, **kw):
    protocol = PROTOCOLS["stego", "cityscapes"]
    return evaluate_predictions(load_eval_dataset(protocol, root), protocol, folder,
                                segments=kw.pop("segments", 40), **kw)


KEY = "frankfurt/frankfurt_000000_000294_leftImg8bit"


def test_missing_prediction_is_named(city, tmp_path):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    (folder / f"{KEY}.png").unlink()
    with pytest.raises(PredictionError, match=r"missing: 1 of the 3.*000294_leftImg8bit\.png"):
        _score(root, folder)


def test_wrong_size_is_named(city, tmp_path):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    _png(folder / f"{KEY}.png", np.zeros((41, 90), np.uint8))
    with pytest.raises(PredictionError, match=r"000294_leftImg8bit\.png.*is 90x41 but the "
                                              r"image needs 90x40 or 320x320"):
        _score(root, folder)


def test_out_of_range_values_are_named(city, tmp_path):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    with pytest.raises(PredictionError, match=r"\.png'.*segment id 3\d, outside 0\.\.26 "
                                              r".*--segments"):
        _score(root, folder, segments=None)  # default: 27 = the classes


@pytest.mark.parametrize(("content", "reason"), [
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot be read"),  # truncated
    (b"not an image at all", "cannot be read"),
])
def test_corrupt_png_is_named(city, tmp_path, content, reason):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    (folder / f"{KEY}.png").write_bytes(content)
    with pytest.raises(PredictionError, match=rf"000294_leftImg8bit\.png'.*{reason}"):
        _score(root, folder)


def test_jpeg_and_colour_maps_are_refused(city, tmp_path):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    Image.fromarray(np.zeros((40, 90), np.uint8)).save(folder / f"{KEY}.png", format="JPEG")
    with pytest.raises(PredictionError, match="JPEG file, not a PNG"):
        _score(root, folder)
    _png(folder / f"{KEY}.png", np.zeros((40, 90, 3), np.uint8))
    with pytest.raises(PredictionError, match="mode 'RGB', not a single channel"):
        _score(root, folder)


def test_symlinks_and_escaping_keys_are_refused(city, tmp_path):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    target = tmp_path / "elsewhere.png"
    (folder / f"{KEY}.png").rename(target)
    (folder / f"{KEY}.png").symlink_to(target)
    with pytest.raises(PredictionError, match="symbolic link"):
        _score(root, folder)
    # A symlinked subfolder is refused too.
    (folder / f"{KEY}.png").unlink()
    (folder / "frankfurt").rename(tmp_path / "frankfurt")
    (folder / "frankfurt").symlink_to(tmp_path / "frankfurt")
    with pytest.raises(PredictionError, match=r"preds/frankfurt'.*symbolic link"):
        _score(root, folder)
    for key in ("../x", "/etc/passwd", "a/../../b"):
        with pytest.raises(PredictionError, match="would leave"):
            prediction_path(folder, key)


def test_cli_errors_name_the_file(city, tmp_path, capsys):
    root, preds = city
    folder = _write(tmp_path / "preds", preds)
    _png(folder / f"{KEY}.png", np.zeros((10, 10), np.uint8))
    base = ["evaluate", "--predictions", str(folder), "--dataset", "cityscapes",
            "--root", str(root), "--segments", "40"]
    assert main(base) == 2
    assert f"{KEY}.png" in capsys.readouterr().err
    assert main([*base, "--method", "eigen"]) == 2
    assert "--checkpoint only" in capsys.readouterr().err
    assert main([*base, "--match", "fixed"]) == 2
    assert "stored class map" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # exactly one of --checkpoint / --predictions
        main(["evaluate", "--dataset", "cityscapes", "--root", str(root)])


# -- a segeig segment output folder as DIR -------------------------------------

def test_segment_output_folder(tiny_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "custom"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\nc\n")
    for i, (h, w) in enumerate([(40, 56), (48, 36)]):
        _png(root / "images" / "val" / f"im{i}.png", random_image(rng, h, w))
        _png(root / "annotations" / "val" / f"im{i}.png",
             _blocks(rng, h, w, [0, 1, 2, 255]).astype(np.uint8))
    torch.manual_seed(1)
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model)
    out = tmp_path / "seg"
    assert main(["segment", str(root / "images" / "val"), "--out", str(out), "--checkpoint",
                 str(ckpt), "--method", "eigen", "--device", "cpu"]) == 0
    assert (out / "labels" / "im0.png").is_file()
    code = main(["evaluate", "--predictions", str(out), "--dataset", "custom", "--root",
                 str(root), "--protocol", "native", "--segments", "12", "--match", "majority",
                 "--json", str(tmp_path / "p.json")])
    assert code == 0, capsys.readouterr().err
    scored = json.loads((tmp_path / "p.json").read_text())
    assert scored["predictions"]["dir"] == str(out / "labels")
    assert scored["n_images"] == 2 and scored["predictions"]["ignored"] == 0
    # The checkpoint scored directly under native predicts what segment wrote.
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "custom", "--root",
                 str(root), "--protocol", "native", "--method", "eigen", "--match",
                 "majority", "--no-crf", "--device", "cpu", "--json",
                 str(tmp_path / "c.json")]) == 0
    direct = json.loads((tmp_path / "c.json").read_text())
    assert scored["confusion"] == direct["confusion"]
