"""scripts/gpu_train_smoke.py (its CPU --tiny mode) and scripts/plot_spectrum.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

from segeig.train.launch import train
from tests.train_helpers import tiny_config, write_images

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_smoke_script_runs_tiny_on_cpu(tmp_path, capsys):
    smoke = load_script("gpu_train_smoke")
    assert smoke.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert report["device"] == "cpu" and report["steps"] == 6 and report["tiny"]
    assert report["steps_per_s"] > 0 and report["peak_gpu_memory_gb"] is None
    assert np.isfinite(report["loss_last"])
    assert "steps_per_s" in capsys.readouterr().out
    assert Path(report["checkpoint"]).is_file()


def test_plot_spectrum(tmp_path, capsys):
    write_images(tmp_path / "imgs", [(64, 64)] * 4)
    train(tiny_config(tmp_path / "imgs", epochs=3), tmp_path / "run")
    plot = load_script("plot_spectrum")
    assert plot.main([str(tmp_path / "run")]) == 0
    png = tmp_path / "run" / "spectrum.png"
    assert str(png) in capsys.readouterr().out
    with Image.open(png) as image:
        assert image.size[0] > 800 and image.size[1] > 300
    epochs, spectra = plot.load_spectra(tmp_path / "run" / "train_log.jsonl")
    assert epochs == [1, 2, 3] and spectra.shape == (3, 8)
    # A k-means-only run has no spectrum: a clear message, exit code 2.
    train(tiny_config(tmp_path / "imgs", method="kmeans"), tmp_path / "km")
    assert plot.main([str(tmp_path / "km"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no epoch records with eigenvalues" in capsys.readouterr().err
    assert plot.main([str(tmp_path / "nowhere")]) == 2


def test_gpu_feature_cache_script_runs_tiny_on_cpu(tmp_path, capsys):
    script = load_script("gpu_feature_cache")
    assert script.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "cache.json").read_text())
    assert report["uncached"]["fill_s"] == 0 and report["cached"]["fill_s"] > 0
    assert report["cached"]["cache_gb"] > 0 and report["speedup_steps"] > 0
    assert "speed-up" in capsys.readouterr().out
