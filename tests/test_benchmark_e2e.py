"""`segeig train --dataset D` then `segeig evaluate --protocol stego` on each benchmark fixture.

A tiny random ViT and a few steps: this checks that the presets, the readers and
the protocol rows fit together end to end, not that anything is learnt.
"""

from __future__ import annotations

import json

import pytest

from segeig.checkpoint import read_config
from segeig.cli import main
from tests.conftest import TINY_ARCH
from tests.dataset_fixtures import (
    write_cityscapes_root,
    write_cocostuff_root,
    write_potsdam_root,
)

ARCH = [f"--backbone-arch={k}={v}" for k, v in TINY_ARCH.items()]
CASES = {  # dataset: (fixture writer, classes, listed val images)
    "cocostuff27": (write_cocostuff_root, 27, 3),
    "cityscapes27": (write_cityscapes_root, 27, 2),
    "potsdam3": (write_potsdam_root, 3, 3),
}


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_train_then_evaluate_stego(dataset, tmp_path, capsys):
    writer, classes, n_val = CASES[dataset]
    root = writer(tmp_path).root
    out = tmp_path / "run"
    # The preset's K, centroid count and crop stay; only the scale is shrunk for speed.
    assert main(["train", "--dataset", dataset, "--root", str(root), "--out", str(out),
                 "--backbone-weights", "random", *ARCH, "--resolution", "64", "--crop", "64",
                 "--batch-size", "2", "--steps", "2", "--workers", "0",
                 "--device", "cpu"]) == 0
    config = read_config(out)
    training = config["training"]
    assert training["dataset"] == dataset and training["kmeans_k"] == classes
    assert config["head"]["k"] == {"potsdam3": 32}.get(dataset, 128)
    assert "eigen+kmeans" in config["methods"]
    capsys.readouterr()

    report = tmp_path / "report"
    result = tmp_path / "result.json"
    assert main(["evaluate", "--checkpoint", str(out), "--dataset", dataset, "--root",
                 str(root), "--split", "val", "--protocol", "stego", "--device", "cpu",
                 "--crf-backend", "torch", "--crf-workers", "0", "--json", str(result),
                 "--report-dir", str(report)]) == 0
    data = json.loads(result.read_text())
    assert data["protocol"] == "stego" and data["n_images"] == n_val
    assert data["miou"] is not None and data["miou_crf"] is not None
    assert (report / "report.md").is_file()
    assert "stego" in (report / "report.md").read_text()
    # The class-count centroids: one segment per class, matched one-to-one.
    assert main(["evaluate", "--checkpoint", str(out), "--dataset", dataset, "--root",
                 str(root), "--protocol", "stego", "--method", "eigen+kmeans", "--no-crf",
                 "--device", "cpu", "--json", str(result)]) == 0
    data = json.loads(result.read_text())
    assert data["n_segments"] == classes and data["match_used"] == "hungarian"
