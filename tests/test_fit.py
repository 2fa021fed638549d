"""fit_images / `segeig fit`: a model from a user's own photos."""

from __future__ import annotations

import logging

import pytest

import segeig
from segeig.checkpoint import read_config
from segeig.cli import main
from segeig.train.launch import FIT_DEFAULTS, fit_images
from segeig.train.state import read_log
from tests.conftest import TINY_ARCH, tiny_backbone_config
from tests.train_helpers import write_images


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    write_images(root, [(60, 80), (90, 70)], suffix=".jpg")
    write_images(root / "trip", [(70, 70)], seed=1)
    return root


def test_fit_folder_writes_a_complete_checkpoint(photos, tmp_path):
    calls = []
    ckpt = fit_images(photos, tmp_path / "model", backbone=tiny_backbone_config(), k=6, steps=4,
                      crop=64, progress=lambda s, t, info: calls.append((s, t, info)))
    assert ckpt == tmp_path / "model" / "checkpoint.safetensors"
    assert [(s, t) for s, t, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all({"loss", "trace", "penalty", "tau", "lr"} <= info.keys() for *_, info in calls)
    config = read_config(ckpt)
    assert config["methods"] == ["eigen", "eigen+kmeans"]
    assert len(config["eigenvalues"]) == 6
    training = config["training"]
    assert training["num_images"] == 3 and training["total_steps"] == 4
    assert training["kmeans_k"] == 6 and training["crop"] == 64 and training["resolution"] == 64
    assert config["resolution"] == {"short": 64, "max_long": 128}
    assert {"kernel", "objective"} <= config.keys()
    seg = segeig.load(ckpt, device="cpu")
    assert seg.num_segments("eigen+kmeans") == 6
    assert not (tmp_path / "model" / "train_state.safetensors").exists()  # no resume for fits


def test_fit_defaults_are_small():
    # Chosen on the texture proxy within 1.5x of the README main job's old wall time.
    assert FIT_DEFAULTS["steps"] <= 150 and FIT_DEFAULTS["crop"] <= 256
    assert FIT_DEFAULTS["batch_size"] <= 4 and FIT_DEFAULTS["k"] <= 32


def test_unreadable_images_are_skipped_with_a_warning(photos, tmp_path, caplog):
    broken = photos / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    files = sorted(photos.rglob("*.*")) + [notes, tmp_path / "missing.jpg"]
    with caplog.at_level(logging.WARNING):
        ckpt = fit_images(files, tmp_path / "m.safetensors", backbone=tiny_backbone_config(),
                          k=4, steps=2, crop=64)
    assert ckpt == tmp_path / "m.safetensors" and ckpt.is_file()
    assert (tmp_path / "m.train_log.jsonl").is_file()
    text = caplog.text
    assert "broken.png" in text and "missing.jpg" in text and "notes.txt" in text
    assert read_config(ckpt)["training"]["num_images"] == 3


def test_no_readable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"nope")
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 2 images could be read"):
        fit_images(bad, tmp_path / "out", backbone=tiny_backbone_config())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        fit_images(empty, tmp_path / "out", backbone=tiny_backbone_config())
    with pytest.raises(ValueError, match="does not exist"):
        fit_images(tmp_path / "nowhere", tmp_path / "out", backbone=tiny_backbone_config())
    with pytest.raises(ValueError, match="empty list"):
        fit_images([], tmp_path / "out", backbone=tiny_backbone_config())


def test_fit_refuses_to_overwrite_only_when_asked(photos, tmp_path):
    kwargs = dict(backbone=tiny_backbone_config(), k=4, steps=1, crop=64)
    fit_images(photos, tmp_path / "m", **kwargs)
    fit_images(photos, tmp_path / "m", **kwargs)  # default: replace
    with pytest.raises(ValueError, match="already holds"):
        fit_images(photos, tmp_path / "m", overwrite=False, **kwargs)


def test_cli_fit(photos, tmp_path, capsys):
    arch = [f"--backbone-arch={k}={v}" for k, v in TINY_ARCH.items()]
    out = tmp_path / "cli.safetensors"
    code = main(["fit", str(photos), "--out", str(out), "--backbone-weights", "random", *arch,
                 "--steps", "2", "--crop", "64", "--k", "5", "--device", "cpu"])
    assert code == 0 and out.is_file()
    assert str(out) in capsys.readouterr().out
    assert read_config(out)["head"]["k"] == 5
    assert [r["event"] for r in read_log(tmp_path / "cli.train_log.jsonl")][-1] == "end"
    code = main(["fit", str(photos), "--out", str(out), "--backbone-weights", "random", *arch,
                 "--steps", "1", "--crop", "64"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
