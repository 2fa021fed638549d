"""Checkpoints written by earlier versions keep loading and predicting the same labels.

``tests/data/checkpoint-0.1.0`` was written by segeig 0.1.0 before the package
was regrouped into folders (see its README): the file format, the JSON
description and the numbers must all survive refactoring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segeig
from segeig.checkpoint import read_config
from segeig.cli import main
from segeig.config import PropagationConfig

OLD = Path(__file__).parent / "data" / "checkpoint-0.1.0"


@pytest.fixture(scope="module")
def old_segmenter():
    return segeig.load(OLD / "checkpoint.safetensors", device="cpu")


def test_old_checkpoint_describes_itself(old_segmenter):
    doc = read_config(OLD / "checkpoint.safetensors")
    assert doc["format_version"] == 1 and doc["backbone"]["weights"] == "embedded"
    assert old_segmenter.methods == ["eigen", "eigen+kmeans"]
    assert old_segmenter.num_eigenfunctions == 6 and old_segmenter.num_segments("eigen+kmeans") == 4


@pytest.mark.parametrize(("method", "name"), [("eigen", "eigen"), ("eigen+kmeans", "eigen-kmeans")])
def test_old_checkpoint_predicts_what_it_predicted(old_segmenter, method, name):
    image = np.asarray(Image.open(OLD / "image.png").convert("RGB"))
    expected = np.asarray(Image.open(OLD / f"labels-{name}.png")).astype(np.int32)
    # 0.1.0 predicted every image at its own size; resolution=0 still does. Its eigen
    # was the head's plain argmax: propagation over the image's graph came later.
    old_segmenter.model.propagation = PropagationConfig(steps=0)
    labels = old_segmenter.predict(image, method=method, resolution=0)
    # Equal up to float ties that another CPU's kernels may break differently.
    assert labels.shape == expected.shape and (labels == expected).mean() >= 0.995


def test_old_checkpoint_gets_a_working_resolution_from_its_training_config(old_segmenter):
    # It was trained on images pre-resized to a short side of 64 (resize_short).
    assert (old_segmenter.resolution.short, old_segmenter.resolution.max_long) == (64, 128)
    image = np.asarray(Image.open(OLD / "image.png").convert("RGB"))  # 128×128
    labels = old_segmenter.predict(image)
    assert labels.shape == (128, 128)
    small = old_segmenter.predict(image[::2, ::2].copy(), resolution=0)  # already 64×64
    # Predicting at the working resolution = predicting a 64 px copy, sampled at 128 px.
    assert (labels[::2, ::2] == small).mean() > 0.9
    # Its "eigenvalues" are training-order running estimates, not a measurement.
    assert old_segmenter.eigenvalues is None


def test_old_checkpoint_through_the_cli(capsys):
    assert main(["info", str(OLD)]) == 0
    out = capsys.readouterr().out
    assert "K=6" in out and "eigen, eigen+kmeans" in out
    assert "working resolution: short side 64 px (long side ≤ 128 px) (derived" in out
