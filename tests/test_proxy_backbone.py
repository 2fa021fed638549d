"""scripts/make_proxy_backbone.py at a tiny setting, and the benchmark's quality rows on it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from segeig.backbone import Backbone
from segeig.config import BackboneConfig, KernelConfig
from segeig.data.textures import PRETRAIN_TEXTURE_OFFSET
from segeig.train import default_config
from tests.test_benchmark import TINY, load_benchmark, table_rows
from tests.test_train_scripts import load_script

TINY_PROXY = ["--steps", "3", "--size", "64", "--batch", "2", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def proxy_file(tmp_path_factory):
    """A proxy backbone trained for 3 steps of 2 images of 64 px (a few seconds)."""
    out = tmp_path_factory.mktemp("proxy") / "proxy.safetensors"
    script = load_script("make_proxy_backbone")
    assert script.main([*TINY_PROXY, "--out", str(out)]) == 0
    return out


def test_proxy_loads_into_backbone(proxy_file, capsys):
    saved = load_file(str(proxy_file))
    backbone = Backbone(BackboneConfig(name="deit_tiny_patch16_224", weights=str(proxy_file)))
    own = backbone.vit.state_dict()
    assert set(saved) == set(own)  # no classifier saved, nothing missing
    assert all(torch.equal(saved[k], own[k]) for k in saved)
    # The deit config's ImageNet normalisation, which the script trained under.
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.std == (0.229, 0.224, 0.225)
    # Really the trained weights: a fresh random ViT of the same seed differs ...
    torch.manual_seed(0)
    fresh = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0,
                              dynamic_img_size=True)
    assert not torch.equal(fresh.state_dict()["blocks.0.attn.qkv.weight"],
                           saved["blocks.0.attn.qkv.weight"])
    # ... and the same weights loaded by hand give the same features.
    fresh.load_state_dict(saved)
    x = torch.rand(1, 3, 48, 48)
    tokens = fresh.eval().forward_features(backbone.normalize(x))[:, 1:]
    final = backbone(x).layers[2].flatten(2).transpose(1, 2)
    torch.testing.assert_close(final, tokens)
    info = json.loads(safe_open(str(proxy_file), "pt").metadata()["segeig_proxy"])
    assert info["family"] == "texture" and info["settings"]["steps"] == 3
    assert info["class_offset"] == PRETRAIN_TEXTURE_OFFSET
    assert 0 <= info["train_patch_accuracy"] <= 1


def test_proxy_is_deterministic_and_not_rebuilt(proxy_file, tmp_path, capsys):
    script = load_script("make_proxy_backbone")
    again = tmp_path / "again.safetensors"
    assert script.main([*TINY_PROXY, "--out", str(again)]) == 0
    assert "patch accuracy" in capsys.readouterr().out
    first, second = load_file(str(proxy_file)), load_file(str(again))
    assert all(torch.equal(first[k], second[k]) for k in first)  # the header holds timings
    stamp = again.stat().st_mtime_ns
    assert script.main([*TINY_PROXY, "--out", str(again)]) == 0
    assert "exists" in capsys.readouterr().out and again.stat().st_mtime_ns == stamp


def test_quality_rows_use_the_proxy(proxy_file, capsys):
    benchmark = load_benchmark()
    args = [a for a in TINY if not a.startswith("--backbone-arch")]
    assert benchmark.main([*args, "--proxy-backbone", str(proxy_file), "--only", "quality",
                           "--quality-heads", "mlp"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert "proxy ViT-Tiny" in rows[0][0]
    assert [r[1] for r in rows] == ["eigen · mlp", "eigen+kmeans · mlp", "kmeans", "spectral",
                                    "spectral-dataset"]
    assert "Quality backbone: deit_tiny_patch16_224 pretrained offline" in out
    summary = next(line for line in out.splitlines() if line.startswith("Majority mIoU"))
    for name in ("eigen · mlp", "eigen+kmeans · mlp", "kmeans", "exact spectral"):
        assert name in summary
    assert "–" not in summary.split("):", 1)[1]


def test_quality_settings_follow_the_backbone(tmp_path):
    benchmark = load_benchmark()
    bench_quality = sys.modules["bench_quality"]
    args = benchmark.parse_args(["--proxy-backbone", str(tmp_path / "absent.safetensors")])
    timing = BackboneConfig(weights="random")
    assert benchmark.quality_backbone(args, timing) is timing
    assert benchmark.quality_settings(args, proxy=False) == bench_quality.QualitySettings()
    proxy = benchmark.quality_settings(args, proxy=True)
    assert (proxy.n_train, proxy.n_val, proxy.size, proxy.classes, proxy.k, proxy.epochs,
            proxy.steps) == (120, 40, 320, 8, 64, 0, 0)
    # The texture set, trained with the 'custom' preset's own length and settings.
    assert proxy.texture and proxy.custom_defaults
    args = benchmark.parse_args(["--quality-steps", "5", "--quality-defaults"])
    chosen = benchmark.quality_settings(args, proxy=True)
    assert chosen.steps == 5 and chosen.epochs == 0 and chosen.custom_defaults
    (tmp_path / "p.safetensors").write_bytes(b"")
    args = benchmark.parse_args(["--proxy-backbone", str(tmp_path / "p.safetensors")])
    assert benchmark.quality_backbone(args, timing).name == "deit_tiny_patch16_224"
    args = benchmark.parse_args(["--proxy-backbone", "none"])
    assert benchmark.quality_backbone(args, timing) is timing


def test_custom_defaults_change_only_k_and_length(tmp_path):
    load_benchmark()
    bench_quality = sys.modules["bench_quality"]
    backbone = BackboneConfig(name="deit_tiny_patch16_224", weights="x.safetensors")
    settings = bench_quality.QualitySettings(k=64, epochs=15, custom_defaults=True)
    config = bench_quality.quality_config(settings, tmp_path, backbone, "mlp", first=True)
    preset = default_config("custom", tmp_path, backbone=backbone, k=64, epochs=15)
    for name in ("crop", "batch_size", "scale", "resolution", "max_long", "kmeans_k",
                 "kmeans_metric", "lr", "steps", "kernel", "objective", "head", "photometric",
                 "hflip", "seed"):
        assert getattr(config, name) == getattr(preset, name), name
    assert config.baseline_centroids and config.spectral_centroids
    tuned = bench_quality.quality_config(bench_quality.QualitySettings(), tmp_path, backbone,
                                         "mlp", first=False)
    assert (tuned.crop, tuned.steps, tuned.kernel) == (128, 150, KernelConfig(k_feat=32))
    assert np.isclose(tuned.scale[1], 1.5)


def test_gabor_patch_embedding_is_a_luminance_filter_bank():
    script = load_script("make_proxy_backbone")
    conv = torch.nn.Conv2d(3, 192, 16, 16)
    script.gabor_patch_embedding(conv)
    w = conv.weight.detach()
    assert torch.equal(w[:, 0], w[:, 1]) and torch.equal(w[:, 1], w[:, 2])  # colour-blind
    torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(192))
    assert w.sum(dim=(1, 2, 3)).abs().max() < 1e-4 and not conv.bias.any()  # no DC response
    # A vertical grating of period 4.5 px excites the filters tuned to it most.
    xx = torch.arange(16).float().expand(16, 16)
    response = conv(torch.cos(2 * torch.pi * xx / 4.5).expand(1, 3, 16, 16)).flatten().abs()
    best = int(response.argmax())
    assert best // 32 == 1 and (best % 32) // 4 == 0  # period 4.5, orientation 0
