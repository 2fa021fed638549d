"""Backbone: token maps, freezing, preprocessing, and the three weight sources."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from segeig.backbone import KNOWN_BACKBONES, Backbone, BackboneWeightsError
from segeig.config import BackboneConfig
from tests.conftest import TINY_ARCH, tiny_backbone_config


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (17, 33), (5, 3)])
def test_maps_cover_padded_grid(tiny_backbone, size):
    feats = tiny_backbone(torch.rand(2, 3, *size))
    h, w = -(-size[0] // 16), -(-size[1] // 16)
    for m in (*feats.layers, feats.kernel):
        assert m.shape == (2, 48, h, w)
        assert m.dtype == torch.float32
    assert feats.stacked.shape == (2, 144, h, w)
    assert tiny_backbone.feature_dim == 144


def test_layers_are_block0_middle_and_final_normed(tiny_backbone):
    x = torch.rand(1, 3, 32, 48)
    feats = tiny_backbone(x)
    vit = tiny_backbone.vit
    # Independent computation: run the blocks by hand, drop the class token.
    tokens = vit._pos_embed(vit.patch_embed(tiny_backbone.normalize(x)))
    tokens = vit.norm_pre(tokens)
    outputs = []
    for block in vit.blocks:
        tokens = block(tokens)
        outputs.append(tokens)

    def as_map(t):
        return t[:, vit.num_prefix_tokens:].transpose(1, 2).reshape(1, 48, 2, 3)

    assert tiny_backbone.layer_indices == (0, 2, 3)
    torch.testing.assert_close(feats.layers[0], as_map(outputs[0]))
    torch.testing.assert_close(feats.layers[1], as_map(outputs[2]))
    torch.testing.assert_close(feats.layers[2], as_map(vit.norm(outputs[3])))


@pytest.mark.parametrize("name", KNOWN_BACKBONES)
def test_known_backbones_build_and_give_patch_maps(name):
    """Every backbone the docs name builds (shrunk, random) and yields h×w patch maps."""
    backbone = Backbone(BackboneConfig(name=name, weights="random",
                                       arch_overrides=dict(TINY_ARCH)))
    p = backbone.patch_size
    feats = backbone(torch.rand(1, 3, 2 * p, 3 * p))
    assert feats.stacked.shape == (1, 3 * 48, 2, 3)


def test_register_tokens_removed():
    config = BackboneConfig(
        name="vit_small_patch14_reg4_dinov2.lvd142m", weights="random",
        arch_overrides=dict(TINY_ARCH),
    )
    backbone = Backbone(config)
    assert backbone.vit.num_prefix_tokens == 5  # class + 4 registers
    assert backbone.patch_size == 14
    feats = backbone(torch.rand(1, 3, 56, 42))
    assert feats.layers[2].shape == (1, 48, 4, 3)


def test_frozen_and_stays_in_eval(tiny_model):
    tiny_model.train()
    assert not tiny_model.backbone.vit.training
    assert tiny_model.head.training
    assert all(not p.requires_grad for p in tiny_model.backbone.parameters())


def test_preprocessing_comes_from_pretrained_config():
    dino = Backbone(tiny_backbone_config())
    augreg = Backbone(BackboneConfig(
        name="vit_small_patch16_384.augreg_in21k_ft_in1k", weights="random",
        arch_overrides=dict(TINY_ARCH),
    ))
    assert dino.mean == pytest.approx((0.485, 0.456, 0.406))
    assert augreg.mean == pytest.approx((0.5, 0.5, 0.5))
    assert augreg.std == pytest.approx((0.5, 0.5, 0.5))


def test_attention_keys_as_kernel_features():
    torch.manual_seed(0)
    backbone = Backbone(tiny_backbone_config(kernel_features="keys"))
    x = torch.rand(2, 3, 32, 48)
    feats = backbone(x)
    assert feats.kernel.shape == (2, 48, 2, 3)
    # Independent computation: capture the last block's qkv output with a hook.
    captured = {}
    qkv = backbone.vit.blocks[-1].attn.qkv
    handle = qkv.register_forward_hook(lambda m, a, out: captured.setdefault("qkv", out))
    backbone.vit.forward_features(backbone.normalize(x))
    handle.remove()
    keys = captured["qkv"][:, backbone.vit.num_prefix_tokens:, 48:96]
    expected = keys.transpose(1, 2).reshape(2, 48, 2, 3)
    torch.testing.assert_close(feats.kernel, expected)
    # The other maps are unaffected by the choice.
    plain = Backbone(tiny_backbone_config(), vit=backbone.vit)(x)
    torch.testing.assert_close(feats.layers[2], plain.layers[2])


def _reference_vit() -> torch.nn.Module:
    torch.manual_seed(123)
    return timm.create_model("vit_small_patch16_224", num_classes=0, **TINY_ARCH)


@pytest.mark.parametrize("form", ["safetensors", "pth_teacher", "pth_module_prefix"])
def test_local_weights_file(tmp_path, form):
    reference = _reference_vit()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif form == "pth_teacher":
        path = tmp_path / "w.pth"
        torch.save({"teacher": state, "epoch": 3}, path)
    else:
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    backbone = Backbone(tiny_backbone_config(weights=str(path)))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(backbone.vit.state_dict()[key], value)


def test_local_weights_errors(tmp_path):
    with pytest.raises(BackboneWeightsError, match="not found"):
        Backbone(tiny_backbone_config(weights=str(tmp_path / "missing.pth")))
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="could not read"):
        Backbone(tiny_backbone_config(weights=str(bad)))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(wrong))
    with pytest.raises(BackboneWeightsError, match="does not fit"):
        Backbone(tiny_backbone_config(weights=str(wrong)))


class ArbitraryObject:
    """Stands in for any pickled object a malicious checkpoint could carry."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": ArbitraryObject()}, path)
    with pytest.raises(BackboneWeightsError, match="weights_only"):
        Backbone(tiny_backbone_config(weights=str(path)))


def _populate_hf_cache(cache: Path, repo: str, state: dict) -> None:
    """Lay out a Hugging Face hub cache holding ``model.safetensors`` for ``repo``."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)


HUB_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from segeig.backbone import KNOWN_BACKBONES, Backbone, BackboneWeightsError
    from segeig.config import BackboneConfig
    config = BackboneConfig(arch_overrides={arch!r})  # weights="hub", the users' default
    try:
        backbone = Backbone(config)
    except BackboneWeightsError as err:
        print("ERROR", err)
        sys.exit(3)
    torch.save(backbone.vit.state_dict(), sys.argv[1])
    """
)


def _run_hub(tmp_path: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    script = tmp_path / "hub.py"
    script.write_text(HUB_SCRIPT.format(arch=TINY_ARCH))
    return subprocess.run([sys.executable, str(script), str(tmp_path / "out.pt")],
                          env=env, capture_output=True, text=True, timeout=120)


def test_hub_loading_through_timm_offline_cache(tmp_path):
    """The code path users hit (timm → huggingface_hub) reads a pre-populated cache."""
    reference = _reference_vit()
    _populate_hf_cache(tmp_path / "hf", "timm/vit_small_patch16_224.dino",
                       reference.state_dict())
    result = _run_hub(tmp_path, tmp_path / "hf")
    assert result.returncode == 0, result.stderr + result.stdout
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded[key], value)


def test_hub_unreachable_names_offline_options(tmp_path):
    result = _run_hub(tmp_path, tmp_path / "empty-cache")
    assert result.returncode == 3
    assert "--backbone-weights PATH" in result.stdout
    assert "--backbone-weights random" in result.stdout
