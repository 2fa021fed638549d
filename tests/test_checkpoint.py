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


# -- an untrusted description is validated, not obeyed (issue 15) ----------------------
def _edit_tensors(path, edit) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


@pytest.fixture
def saved(tmp_path, tiny_model):
    return save_checkpoint(tmp_path / "c.safetensors", _with_centroids(tiny_model))


@pytest.fixture
def no_timm(monkeypatch):
    """Fail the test if anything reaches timm.create_model (where hf-hub: names download)."""
    import segeig.backbone

    calls = []
    monkeypatch.setattr(segeig.backbone.timm, "create_model",
                        lambda *a, **k: calls.append(a) or pytest.fail(f"timm built {a}"))
    return calls


@pytest.mark.parametrize(("edit", "needle"), [
    # Names that fetch from anywhere, or read any folder.
    (lambda d: d["backbone"].update(name="hf-hub:attacker/evil-vit"), "not a timm model name"),
    (lambda d: d["backbone"].update(name="local-dir:/tmp/evil"), "not a timm model name"),
    (lambda d: d["backbone"].update(name="vit_small_patch16_224.nope"), "Invalid pretrained tag"),
    (lambda d: d["backbone"].update(name="no_such_model"), "not a model timm knows"),
    # Keywords that read files, rewrite preprocessing or exhaust memory.
    (lambda d: d["backbone"]["arch_overrides"].update(checkpoint_path="/etc/passwd"),
     "'checkpoint_path' is not allowed"),
    (lambda d: d["backbone"]["arch_overrides"].update(
        pretrained_cfg_overlay={"std": [0, 0, 0]}), "'pretrained_cfg_overlay' is not allowed"),
    (lambda d: d["backbone"]["arch_overrides"].update(depth=100000), "outside 1..40"),
    (lambda d: d["backbone"]["arch_overrides"].update(embed_dim="48"), "must be an integer"),
    (lambda d: d["backbone"].update(std=[0, 0, 0]), "positive"),
    (lambda d: d["backbone"].update(weights="/etc/passwd"), "not a weights file"),
    # Types and keys.
    (lambda d: d["head"].update(k="8"), "HeadConfig.k must be an integer"),
    (lambda d: d["head"].update(k=10**9), "head.k must be an integer in"),
    (lambda d: d["head"].update(tau_min=float("nan")), "finite"),
    (lambda d: d.update(evil={"x": 1}), "unknown section 'evil'"),
    (lambda d: d["backbone"].update(url="http://x"), "unknown key 'url'"),
    (lambda d: d.pop("backbone"), "lacks 'backbone'"),
    (lambda d: d.update(methods=["eigen", "rm -rf"]), "methods must be"),
    (lambda d: d.update(eigenvalues=[1.0, "x"]), "eigenvalues"),
    (lambda d: d.update(resolution=[512]), "resolution: WorkingResolution must be a JSON object"),
])
def test_a_malicious_or_broken_description_is_refused(saved, no_timm, edit, needle):
    _edit_description(saved, edit)
    with pytest.raises(CheckpointError, match=needle) as refused:
        load_model(saved)
    assert str(saved) in str(refused.value)
    assert no_timm == []  # refused before building anything


def test_hub_repository_names_need_the_users_word(monkeypatch):
    from segeig.backbone import check_backbone_name

    with pytest.raises(ValueError, match="only with --backbone-weights hub"):
        check_backbone_name("hf-hub:org/repo")
    check_backbone_name("hf-hub:org/repo", allow_hub_repo=True)  # the user asked for it
    with pytest.raises(ValueError):
        check_backbone_name("hf-hub:org/../../x", allow_hub_repo=True)


def test_recorded_layers_and_normalisation_must_match_the_built_backbone(saved):
    """Regression: depth 2 dropped blocks silently; recorded mean/std were never compared."""
    _edit_description(saved, lambda d: d["backbone"].update(mean=[0.5, 0.5, 0.5]))
    with pytest.raises(CheckpointError, match="mean"):
        load_model(saved)
    _edit_description(saved, lambda d: d["backbone"].update(mean=[0.485, 0.456, 0.406]))
    load_model(saved)
    # Fewer blocks than the embedded weights hold: refused, not truncated.
    _edit_description(saved, lambda d: d["backbone"]["arch_overrides"].update(depth=2))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_model(saved)


def test_recorded_layers_are_compared(saved):
    _edit_description(saved, lambda d: d["backbone"].update(layers=[0, 6, 11]))
    with pytest.raises(CheckpointError, match=r"layers \[0, 6, 11\].*\[0, 2, 3\]"):
        load_model(saved)


@pytest.mark.parametrize("prefix", ["head.", "centroids.eigen+kmeans", "backbone."])
def test_non_finite_tensors_are_refused(saved, prefix):
    def poison(tensors):
        key = next(k for k in tensors if k.startswith(prefix) and tensors[k].numel())
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")

    _edit_tensors(saved, poison)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(saved)


def test_unexpected_tensors_are_refused(saved):
    _edit_tensors(saved, lambda t: t.update(payload=torch.zeros(3)))
    with pytest.raises(CheckpointError, match="unexpected tensor 'payload'"):
        load_model(saved)


def test_sections_of_other_features_are_tolerated(saved):
    """``resolution`` (working resolution) and ``classes`` (class maps) load when present."""
    _edit_description(saved, lambda d: d.update(resolution={"short": 320, "max_long": 640},
                                                classes={"names": ["sky"]}))
    _, doc = load_model(saved)
    assert doc["resolution"]["short"] == 320
