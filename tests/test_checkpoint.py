"""Checkpoints are self-describing, rebuild the same model, and fail clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import segeig
from segeig.checkpoint import CheckpointError, load_model, read_config, save_checkpoint
from tests.conftest import random_image


def _with_centroids(model):
    torch.manual_seed(1)
    model.set_centroids("eigen+kmeans", torch.randn(5, model.head.hidden_dim))
    model.set_centroids("kmeans", torch.randn(7, model.backbone.embed_dim))
    return model


def test_round_trip_identical_predictions(tmp_path, tiny_model, rng):
    model = _with_centroids(tiny_model)
    path = save_checkpoint(tmp_path / "run", model, extra={"training": {"epochs": 1}})
    assert path.name == "checkpoint.safetensors"
    config = read_config(tmp_path / "run")
    assert config["head"]["k"] == 12
    assert config["backbone"]["weights"] == "embedded"
    assert config["backbone"]["weights_origin"] == "random"
    assert config["backbone"]["patch_size"] == 16
    assert config["methods"] == ["eigen", "eigen+kmeans", "kmeans"]
    assert config["training"] == {"epochs": 1}

    seg = segeig.load(path, device="cpu")
    image = random_image(rng, 40, 56)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    for method in ("eigen", "eigen+kmeans", "kmeans"):
        expected = model(x, method).scores
        torch.testing.assert_close(seg.forward(x, method).scores, expected)
    assert seg.num_segments("eigen") == 12
    assert seg.num_segments("eigen+kmeans") == 5
    assert seg.num_segments("kmeans") == 7


def test_file_is_plain_safetensors_with_json(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model)
    with safe_open(str(path), framework="pt") as handle:
        doc = json.loads(handle.metadata()["segeig"])
        keys = list(handle.keys())
    assert doc["format_version"] == 1
    assert any(k.startswith("head.") for k in keys)
    assert any(k.startswith("backbone.") for k in keys)  # random backbone is embedded


def test_hub_backbone_is_not_embedded(tmp_path, tiny_model):
    tiny_model.backbone.config.weights = "hub"
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model)
    with safe_open(str(path), framework="pt") as handle:
        assert not any(k.startswith("backbone.") for k in handle.keys())  # noqa: SIM118
    assert read_config(path)["backbone"]["weights"] == "hub"


def test_kmeans_only_checkpoint(tmp_path, tiny_backbone):
    from segeig.model import SegEigModel

    model = SegEigModel(tiny_backbone, None, {"kmeans": torch.randn(4, 48)})
    seg = segeig.load(save_checkpoint(tmp_path / "k", model), device="cpu")
    assert seg.methods == ["kmeans"]
    labels = seg.predict(np.zeros((20, 20, 3), np.uint8))
    assert labels.max() < 4


def _edit_description(path, edit) -> None:
    """Rewrite a checkpoint with ``edit(doc)`` applied to its JSON description."""
    with safe_open(str(path), framework="pt") as handle:
        doc = json.loads(handle.metadata()["segeig"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    edit(doc)
    save_file(tensors, str(path), metadata={"segeig": json.dumps(doc)})


def test_wrong_k_is_a_clear_error(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model)
    _edit_description(path, lambda doc: doc["head"].update(k=13))
    with pytest.raises(CheckpointError, match="K=13"):
        load_model(path)


def test_backbone_width_mismatch(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model)
    _edit_description(path, lambda doc: doc["backbone"].update(embed_dim=384))
    with pytest.raises(CheckpointError, match="width 384"):
        load_model(path)


def test_newer_format_and_foreign_files(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model)
    _edit_description(path, lambda doc: doc.update(format_version=99))
    with pytest.raises(CheckpointError, match="upgrade segeig"):
        read_config(path)
    foreign = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a segeig checkpoint"):
        read_config(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable"):
        read_config(junk)
    with pytest.raises(CheckpointError, match="no segeig checkpoint"):
        read_config(tmp_path / "nowhere")


def test_backbone_weights_override(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model, embed_backbone=False)
    model, _ = load_model(path, backbone_weights="random")
    assert model.backbone.config.weights == "random"


def test_checkpoint_is_readable_by_others(tmp_path, tiny_model):
    """Written with ordinary permissions (umask applies), not 0600."""
    import os

    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.safetensors", tiny_model)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*tmp"))
