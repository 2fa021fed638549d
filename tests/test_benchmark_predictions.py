"""`segeig evaluate --predictions` on the three benchmark layouts (cocostuff27, cityscapes27,
potsdam3): the CLI's scores equal an independent computation of the stego protocol
(tests/stego_reference.py), only listed images count, and a missing map is named."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from segeig.cli import main
from segeig.config import DEFAULT_PROTOCOL
from segeig.evaluation import resolve_protocol
from tests.dataset_fixtures import (
    FixtureRoot,
    write_cityscapes_root,
    write_cocostuff_root,
    write_potsdam_root,
)
from tests.stego_reference import (
    CITYSCAPES_TO_27,
    POTSDAM_TO_3,
    STEGO_FINE_TO_COARSE,
    expected_scores,
    map_ids,
)


@dataclass(frozen=True)
class Layout:
    """One benchmark: how to write its root, read a listed key's truth independently,
    and which keys of the root are not in the val list."""

    write: Callable[[Path], FixtureRoot]
    split: str  # the fixture's name for the val split
    classes: int
    truth: Callable[[Path, str], np.ndarray]  # (root, key) -> H×W class ids, 255 ignored
    unlisted: tuple[str, ...]  # keys whose maps DIR also holds, none of them scored


def _coco_truth(root: Path, key: str) -> np.ndarray:
    raw = np.asarray(Image.open(root / "annotations" / "val2017" / f"{key}.png"))
    return map_ids(raw, STEGO_FINE_TO_COARSE)


def _coco_root(tmp: Path) -> FixtureRoot:
    # Landscape, portrait and a wider one: each resized so its short side is 320, then
    # cropped (sizes free of pixel-centre ties, see stego_reference.stego_crop).
    fixture = write_cocostuff_root(tmp, sizes=[(48, 64), (70, 36), (41, 90)])
    # A valid image and annotation in the val folders that the curated list leaves out.
    rng = np.random.default_rng(9)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
        fixture.root / "images" / "val2017" / "000000555555.jpg")
    Image.fromarray(rng.integers(0, 182, (40, 56), dtype=np.uint8)).save(
        fixture.root / "annotations" / "val2017" / "000000555555.png")
    return fixture


def _city_truth(root: Path, key: str) -> np.ndarray:
    stem = key.removesuffix("_leftImg8bit")
    raw = np.asarray(Image.open(root / "gtFine" / "val" / f"{stem}_gtFine_labelIds.png"))
    return map_ids(raw, CITYSCAPES_TO_27)


def _potsdam_truth(root: Path, key: str) -> np.ndarray:
    return map_ids(loadmat(root / "gt" / f"{key}.mat")["gt"], POTSDAM_TO_3)


LAYOUTS = {
    "cocostuff27": Layout(_coco_root, "val2017", 27, _coco_truth,
                          ("000000555555", "000000999999", "000000000139")),  # + a train id
    "cityscapes27": Layout(
        lambda tmp: write_cityscapes_root(tmp, sizes=[(32, 64), (40, 100)]), "val", 27,
        _city_truth,
        ("aachen/aachen_000000_000000_leftImg8bit",  # a train image
         "frankfurt/frankfurt_000000_999999_leftImg8bit")),
    # IIC's tiles are 200×200: upsampled to 320, nothing cropped.
    "potsdam3": Layout(lambda tmp: write_potsdam_root(tmp, size=200), "val", 3,
                       _potsdam_truth, ("12", "41", "999")),
}


def _prediction(rng: np.random.Generator, truth: np.ndarray, segments: int) -> np.ndarray:
    """Segment ids that follow the classes through a permutation, wrong in random blocks."""
    perm = rng.permutation(segments)
    pred = perm[np.where(truth == 255, 0, truth).astype(np.int64) % segments]
    h, w = truth.shape
    blocks = rng.random((h // 4 + 1, w // 4 + 1)) < 0.35
    wrong = np.kron(blocks, np.ones((4, 4), bool))[:h, :w]
    return np.where(wrong, rng.integers(0, segments, (h, w)), pred)


def _write_predictions(layout: Layout, fixture: FixtureRoot, folder: Path, segments: int,
                       seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """KEY.png for every listed val image (original size) and for each unlisted key;
    returns the (truth, prediction) pairs of the listed ones."""
    rng = np.random.default_rng(seed)
    pairs = []
    for key in fixture.splits[layout.split]:
        truth = layout.truth(fixture.root, key)
        pred = _prediction(rng, truth, segments)
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pred.astype(np.uint8)).save(folder / f"{key}.png")
        pairs.append((truth, pred))
    for key in layout.unlisted:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((7, 9), np.uint8)).save(folder / f"{key}.png")
    return pairs


def _evaluate(dataset: str, root: Path, folder: Path, *extra: str) -> int:
    return main(["evaluate", "--dataset", dataset, "--root", str(root), "--split", "val",
                 "--protocol", "stego", "--predictions", str(folder), *extra])


@pytest.mark.parametrize("match", ["hungarian", "majority", "hungarian-per-image"])
@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_cli_equals_the_independent_protocol(dataset, match, tmp_path, capsys):
    layout = LAYOUTS[dataset]
    fixture = layout.write(tmp_path)
    # One segment per class for the one-to-one matchings; over-clustering for majority.
    segments = layout.classes + (5 if match == "majority" else 0)
    folder = tmp_path / "preds"
    pairs = _write_predictions(layout, fixture, folder, segments)
    out = tmp_path / "r.json"
    code = _evaluate(dataset, fixture.root, folder, "--match", match,
                     "--segments", str(segments), "--json", str(out))
    assert code == 0, capsys.readouterr().err
    miou, accuracy = expected_scores(pairs, layout.classes, segments, match)
    assert 5 < miou < 95  # neither trivial nor hopeless
    data = json.loads(out.read_text())
    assert data["miou"] == pytest.approx(miou, abs=0.01)
    assert data["pixel_acc"] == pytest.approx(accuracy, abs=0.01)
    # Only the listed images count; the other maps in DIR are reported as ignored.
    assert data["n_images"] == len(fixture.splits[layout.split])
    assert data["predictions"]["ignored"] == len(layout.unlisted)
    assert data["predictions"]["original_size"] == data["n_images"]
    assert (data["dataset"], data["protocol"], data["matching"]) == (dataset, "stego", match)
    assert data["protocol_settings"]["resample"] == "nearest"
    assert data["crop"] == "centre 320x320" and data["num_classes"] == layout.classes


@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_a_missing_listed_prediction_names_the_file(dataset, tmp_path, capsys):
    layout = LAYOUTS[dataset]
    fixture = layout.write(tmp_path)
    folder = tmp_path / "preds"
    _write_predictions(layout, fixture, folder, layout.classes)
    key = fixture.splits[layout.split][-1]
    (folder / f"{key}.png").unlink()
    capsys.readouterr()
    assert _evaluate(dataset, fixture.root, folder) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(folder / f"{key}.png") in err, err
    assert f"missing: 1 of the {len(fixture.splits[layout.split])}" in err


def test_evaluate_help_states_every_default_protocol(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    text = re.sub(r"- ", "-", text)  # argparse may wrap after a hyphen
    assert ("default per dataset: stego for pascal_context, cityscapes, cocostuff27, "
            "cityscapes27, potsdam3; full for ade20k; native for custom") in text
    # The help and the resolver read one table.
    for dataset, name in DEFAULT_PROTOCOL.items():
        assert resolve_protocol(None, dataset).name == name
