"""scripts/benchmark.py at tiny settings: every section's rows, the plots, --only quality."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TINY_ARCH

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

TINY = [*(f"--backbone-arch={k}={v}" for k, v in TINY_ARCH.items()), "--proxy-backbone", "none",
        "--threads", "1", "--size", "64", "--sizes", "48,64", "--images", "1", "--repeats", "1",
        "--k", "12", "--segments", "4", "--quality-n-train", "4", "--quality-n-val", "2",
        "--quality-size", "48", "--quality-classes", "3", "--quality-k", "4",
        "--quality-steps", "2", "--quality-batch", "2", "--quality-k-feat", "6",
        "--kernel-sizes", "2x3", "--exact-sizes", "3x3", "--k-feat", "6",
        "--exact-clusters", "3", "--train-batch", "2", "--train-crop", "32", "--train-k", "6",
        "--crf-sides", "48", "--crf-labels", "4", "--crf-predict-side", "48",
        "--crf-train-size", "32", "--crf-val-side", "40", "--crf-n-train", "4", "--crf-n-val", "2",
        "--crf-classes", "3", "--crf-k", "4", "--crf-steps", "2", "--crf-batch", "2",
        "--crf-k-feat", "6", "--crf-head-k", "12"]


def load_benchmark():
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("benchmark", SCRIPTS / "benchmark.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def table_rows(text: str) -> list[list[str]]:
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_tiny_benchmark_has_every_row(tmp_path, capsys, one_torch_thread):
    benchmark = load_benchmark()
    out = tmp_path / "table.md"
    assert benchmark.main([*TINY, "--plots", str(tmp_path / "img"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text(encoding="utf-8").strip() == printed.strip()
    assert "load average" in printed and "Command: `python scripts/benchmark.py" in printed
    rows = table_rows(printed)
    sections, configs = [], []
    for section, config, *_ in rows:
        sections.append(section or sections[-1])
        configs.append(config)
    by_section: dict[str, list[str]] = {}
    for section, config in zip(sections, configs, strict=True):
        by_section.setdefault(section.split(",")[0], []).append(config)
    methods = ["eigen · mlp", "eigen+kmeans · mlp", "eigen · transformer",
               "eigen+kmeans · transformer", "kmeans", "spectral (exact, per image)"]
    inference = by_section["inference per image"]
    assert inference == ["backbone forward alone", *methods, *(f"{m} + CRF" for m in methods)]
    assert by_section["after the backbone"] == ["mlp head forward alone",
                                                "transformer head forward alone", *methods]
    quality = by_section["quality"]
    assert quality == ["eigen · mlp", "eigen+kmeans · mlp", "eigen · transformer",
                       "eigen+kmeans · transformer", "kmeans", "spectral", "spectral-dataset"]
    assert by_section["graph kernel per batch (k_feat 6)"] == ["18 tokens (2 × 3²)"]
    exact = by_section["exact spectral clustering"]
    assert exact == ["27 tokens", "vs one training step of the mlp head",
                     "vs one training step of the transformer head"]
    assert len(by_section["EXTRAPOLATED"]) == 2
    assert by_section["training step"] == ["mlp head", "transformer head"]
    assert by_section["feature cache"] == [
        "mlp head · step without cache", "mlp head · step from the cache",
        "transformer head · step without cache", "transformer head · step from the cache",
        "fill, per image", "size on disk, per image"]
    # Every measured cell holds a number.
    for section, (_, config, measured, _, _) in zip(sections, rows, strict=True):
        if config.startswith(("eigen", "kmeans", "spectral")) and "quality" not in section:
            assert measured.endswith("ms") or measured.endswith(" s"), (config, measured)
    ratio = next(r for r in rows if r[1] == "eigen · mlp")[3]
    assert ratio.endswith("×") and float(ratio[:-1]) > 0
    for name in ("time_vs_size.png", "memory_vs_tokens.png"):
        with Image.open(tmp_path / "img" / name) as image:
            assert image.size[0] > 600


def test_only_quality_with_seeds(capsys, one_torch_thread):
    benchmark = load_benchmark()
    assert benchmark.main([*TINY, "--only", "quality", "--quality-seeds", "2",
                           "--quality-heads", "mlp"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows[0][0].startswith("quality") and "mean ± sd of 2 seeds" in rows[0][0]
    assert [r[1] for r in rows] == ["eigen · mlp", "eigen+kmeans · mlp", "kmeans", "spectral",
                                    "spectral-dataset"]
    assert " ± " in rows[1][2]


def test_only_crf(capsys, one_torch_thread, pydensecrf):
    benchmark = load_benchmark()
    assert benchmark.main([*TINY, "--only", "crf"]) == 0
    rows = table_rows(capsys.readouterr().out)
    sections: list[str] = []
    for row in rows:
        sections.append(row[0] or sections[-1])
    by_section: dict[str, list[list[str]]] = {}
    for section, row in zip(sections, rows, strict=True):
        by_section.setdefault(section.split(",")[0], []).append(row)
    timed = [r[1] for r in by_section["dense CRF per image"]]
    assert "torch, cpu" in timed and "densecrf, cpu" in timed
    predict = by_section["predict() per image"]
    assert [r[1] for r in predict][:3] == ["no CRF", "CRF, auto", "CRF, torch"]
    assert all(r[3].endswith("×") for r in predict)
    sweep = by_section["CRF iterations"]
    assert [r[1] for r in sweep][-1] == "10 iterations" and sweep[-1][3] == "100.00 %"
    agreement = [r[1] for r in by_section["CRF agreement"]]
    assert agreement[0] == "torch vs densecrf, same settings"
    mious = {r[1]: float(r[2]) for r in by_section["CRF mIoU"]}
    assert {"torch · eigen", "densecrf · eigen", "before · eigen", "no CRF · eigen"} <= set(mious)
    assert all(0 <= v <= 100 for v in mious.values())


def test_gpu_crf_bench_refuses_without_cuda(capsys, tmp_path, one_torch_thread):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would measure rather than refuse "
                    "(that run is for the device machine, see the script)")
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("gpu_crf_bench",
                                                      SCRIPTS / "gpu_crf_bench.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    assert module.main([]) == 2
    assert "no CUDA" in capsys.readouterr().err
    # The same steps on the CPU (what the device machine will run, minus CUDA).
    out = tmp_path / "gpu.md"
    assert module.main(["--device", "cpu", "--sides", "40", "--labels", "4", "--images", "1",
                        "--repeats", "1", "--out", str(out)]) == 0
    table = out.read_text()
    assert "| 40 px, working size | torch, cpu |" in table and "predict() on cpu" in table
