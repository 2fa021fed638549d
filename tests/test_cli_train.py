"""`segeig train` from the command line (in-process): a tiny CPU run, resume, errors."""

from __future__ import annotations

import time

import pytest

from segeig.checkpoint import read_config
from segeig.cli import main
from segeig.train.state import read_log
from tests.conftest import TINY_ARCH
from tests.train_helpers import write_images

ARCH = [f"--backbone-arch={k}={v}" for k, v in TINY_ARCH.items()]


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "imgs"
    write_images(root, [(64, 96), (80, 64), (72, 72), (96, 80)])
    return root


def tiny_args(root, out, *extra):
    return ["train", "--dataset", "folder", "--root", str(root), "--out", str(out),
            "--backbone-weights", "random", *ARCH, "--crop", "64", "--k", "8",
            "--batch-size", "2", "--epochs", "2", "--workers", "0", "--kmeans-k", "4",
            "--device", "cpu", *extra]


def test_tiny_cpu_run_then_resume_rules(images, tmp_path, capsys):
    out = tmp_path / "run"
    start = time.perf_counter()
    assert main(tiny_args(images, out, "--head", "transformer", "--log-every", "1")) == 0
    elapsed = time.perf_counter() - start
    assert elapsed < 60  # generous: it takes a few seconds
    printed = capsys.readouterr().out
    assert f"checkpoint: {out / 'checkpoint.safetensors'}" in printed
    config = read_config(out)
    assert config["head"]["kind"] == "transformer" and config["head"]["k"] == 8
    assert config["backbone"]["weights_origin"] == "random"
    training = config["training"]
    assert training["batch_size"] == 2 and training["resolution"] == 320  # folder default
    assert config["resolution"] == {"short": 320, "max_long": 640}
    assert [r["event"] for r in read_log(out / "train_log.jsonl")][-1] == "end"
    # Same directory again: refused, nothing touched.
    before = (out / "checkpoint.safetensors").read_bytes()
    assert main(tiny_args(images, out)) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert (out / "checkpoint.safetensors").read_bytes() == before
    # --resume takes the settings from the run; changing one is refused.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "9"]) == 2
    assert "epochs: 2 → 9" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--workers", "0"]) == 0


def test_kmeans_method_from_cli(images, tmp_path):
    out = tmp_path / "km"
    assert main(tiny_args(images, out, "--method", "kmeans")) == 0
    assert read_config(out)["methods"] == ["kmeans"]


def test_cli_errors_are_actionable(images, tmp_path, capsys):
    assert main(["train", "--dataset", "folder", "--out", str(tmp_path / "x")]) == 2
    assert "--dataset and --root are required" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(tiny_args(images, tmp_path / "y", "--backbone-arch", "depth")) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(tiny_args(images, tmp_path / "z", "--scale", "2", "1")) == 2
    assert "scale" in capsys.readouterr().err
    assert main(["train", "--dataset", "ade20k", "--root", str(tmp_path),
                 "--out", str(tmp_path / "w"), "--backbone-weights", "random", *ARCH]) == 2
    assert "Expected layout" in capsys.readouterr().err


def test_feature_cache_flags(images, tmp_path, capsys):
    cache = tmp_path / "cache"
    out = tmp_path / "cached"
    assert main(tiny_args(images, out, "--epochs", "1", "--feature-cache", str(cache),
                          "--cache-scales", "0.5", "--cache-flips")) == 0
    training = read_config(out)["training"]
    assert training["feature_cache"] and training["feature_cache_dir"] == str(cache)
    assert training["cache_scales"] == [0.5] and training["cache_flips"]
    assert list(cache.rglob("part-0-of-1.bin")) and not (out / "feature_cache").exists()
    # --no-feature-cache: the backbone on every crop, nothing cached.
    plain = tmp_path / "plain"
    assert main(tiny_args(images, plain, "--epochs", "1", "--no-feature-cache")) == 0
    assert read_config(plain)["training"]["feature_cache"] is False
    assert not (plain / "feature_cache").exists()
    assert "cache" not in [r["event"] for r in read_log(plain / "train_log.jsonl")]
    # A resume may move the cache but not switch it off.
    assert main(["train", "--out", str(out), "--resume", "--no-feature-cache"]) == 2
    assert "feature_cache: True → False" in capsys.readouterr().err
