"""Training data: the sample plan, augmented crops and masks, label-free
training on every dataset layout, the resume state file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segeig.data.base as data_base
import segeig.data.cityscapes as data_cityscapes
import segeig.data.custom as data_custom
from segeig.checkpoint import read_config
from segeig.config import HeadConfig
from segeig.data.registry import build_dataset
from segeig.head import EigenHead
from segeig.train.augment import train_transform
from segeig.train.launch import train
from segeig.train.loader import (
    AugmentedCrops,
    PlanSampler,
    epoch_plan,
    make_train_loader,
    steps_per_epoch,
    token_validity,
)
from segeig.train.state import Progress, load_train_state, save_train_state
from tests.train_helpers import tiny_config, write_images


# ------------------------------------------------------------------ plan
def test_epoch_plan_covers_each_image_once_and_is_reproducible():
    plan = epoch_plan(10, batch_size=2, world_size=1, seed=3, epoch=0)
    assert plan.shape == (5, 1, 2) and sorted(plan.ravel()) == list(range(10))
    assert np.array_equal(plan, epoch_plan(10, 2, 1, seed=3, epoch=0))
    assert not np.array_equal(plan, epoch_plan(10, 2, 1, seed=3, epoch=1))
    assert not np.array_equal(plan, epoch_plan(10, 2, 1, seed=4, epoch=0))
    # Remainder dropped: 11 images, batch 4 → 2 steps, 8 distinct images.
    assert len(set(epoch_plan(11, 4, 1, 0, 0).ravel())) == 8
    # Sets smaller than a batch repeat images within the step.
    small = epoch_plan(3, 4, 1, 0, 0)
    assert small.shape == (1, 1, 4) and set(small.ravel()) == {0, 1, 2}
    assert steps_per_epoch(3, 4) == 1 and steps_per_epoch(17, 4, 2) == 2


def test_ranks_split_the_global_batch():
    # Rank r's batch at a step is the r-th slice of the single-process batch
    # of world×B, with the same augmentation seeds.
    single = list(PlanSampler(12, 4, rank=0, world_size=1, seed=1, start_step=0, total_steps=6))
    ranks = [list(PlanSampler(12, 2, rank=r, world_size=2, seed=1, start_step=0,
                              total_steps=6)) for r in range(2)]
    for step, batch in enumerate(single):
        assert batch == ranks[0][step] + ranks[1][step]
    # Starting at step 4 yields exactly the tail (what --resume relies on).
    tail = list(PlanSampler(12, 4, rank=0, world_size=1, seed=1, start_step=4, total_steps=6))
    assert tail == single[4:] and len(single) == 6


# ------------------------------------------------------------ crops/masks
def test_augmented_crops_are_seeded_and_mask_padding(tmp_path):
    write_images(tmp_path, [(20, 40), (100, 90)])
    dataset = build_dataset("folder", tmp_path, with_labels=False)
    crops = AugmentedCrops(dataset, train_transform(64, scale=(1.0, 1.0), hflip=False))
    image, valid = crops[(0, 123)]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert valid.shape == (64, 64) and valid.dtype == torch.bool
    assert valid[:20, :40].all() and not valid[20:].any() and not valid[:, 40:].any()
    assert (image[:, 20:] == 0).all()  # the padding the mask describes
    a, b = crops[(1, 7)], crops[(1, 7)]
    assert torch.equal(a[0], b[0]) and bool(a[1].all())
    assert not torch.equal(a[0], crops[(1, 8)][0])
    labelled = build_dataset("custom", _custom(tmp_path / "c"), "train", with_labels=True)
    with pytest.raises(ValueError, match="with_labels=False"):
        AugmentedCrops(labelled, train_transform(64))


def test_workers_do_not_change_the_batches(tmp_path):
    write_images(tmp_path / "imgs", [(50 + 7 * i, 70) for i in range(6)])
    dataset = build_dataset("folder", tmp_path / "imgs", with_labels=False)

    def batches(workers):
        config = tiny_config(tmp_path / "imgs", workers=workers, epochs=2)
        loader = make_train_loader(config, dataset, rank=0, world_size=1, start_step=0,
                                   total_steps=6, pin_memory=False)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 6
    for (xa, va), (xb, vb) in zip(serial, parallel, strict=True):
        assert torch.equal(xa, xb) and torch.equal(va, vb)


def test_token_validity_fraction_and_non_multiple_sizes():
    valid = torch.zeros(1, 40, 40, dtype=torch.bool)
    valid[:, :24, :32] = True
    tokens = token_validity(valid, 16, 0.5)
    # 40 px → 3 patches (the last one half outside the crop: invalid).
    assert tokens.shape == (1, 3, 3)
    expected = torch.tensor([[True, True, False], [True, True, False], [False] * 3])
    assert torch.equal(tokens[0], expected)
    assert token_validity(valid, 16, 1.0)[0].sum() == 2


# ----------------------------------------------- every layout, no labels
def _img(path, h=72, w=96, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + len(str(path)))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _lbl(path, h=72, w=96):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ones((h, w), np.uint8)).save(path)


def _ade(root):
    base = root / "ADEChallengeData2016"
    for i in (1, 2, 3):
        _img(base / "images" / "training" / f"ADE_train_{i:08d}.jpg")
        _lbl(base / "annotations" / "training" / f"ADE_train_{i:08d}.png")
    return root


def _pascal(root):
    voc = root / "VOCdevkit" / "VOC2010"
    names = ["2008_000002", "2008_000003", "2008_000008"]
    for n in names:
        _img(voc / "JPEGImages" / f"{n}.jpg")
        _lbl(voc / "SegmentationClassContext" / f"{n}.png")
    lst = voc / "ImageSets" / "SegmentationContext" / "train.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("\n".join(names) + "\n")
    return root


def _cityscapes(root):
    for i, city in enumerate(("aachen", "bochum", "bremen")):
        stem = f"{city}_000000_00001{i}"
        _img(root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png", 64, 128)
        _lbl(root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png", 64, 128)
    return root


def _custom(root):
    for n in ("a", "b", "sub/c"):
        _img(root / "images" / "train" / f"{n}.png")
        _lbl(root / "annotations" / "train" / f"{n}.png")
    (root / "classes.txt").write_text("sky\ntree\nroad\n")
    return root


@pytest.mark.parametrize("name,make", [("ade20k", _ade), ("pascal_context", _pascal),
                                       ("cityscapes", _cityscapes), ("custom", _custom)])
def test_trains_on_each_layout_without_reading_a_label(tmp_path, monkeypatch, name, make):
    def boom(path):
        raise AssertionError(f"a label was read during training: {path}")

    for module in (data_base, data_cityscapes, data_custom):
        monkeypatch.setattr(module, "read_label", boom)
    root = make(tmp_path / name)
    config = tiny_config(root, dataset=name, steps=1, kmeans_k=None if name == "custom" else 3)
    ckpt = train(config, tmp_path / "out")
    training = read_config(ckpt)["training"]
    assert training["dataset"] == name and training["num_images"] == 3
    # Default centroid count: K (the paper's k-means rows), never the labels.
    assert training["kmeans_k"] == (8 if name == "custom" else 3)


# ------------------------------------------------------------ state file
def test_train_state_round_trip(tmp_path):
    torch.manual_seed(0)
    head = EigenHead(12, HeadConfig(k=4), embed_dim=4)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    head(torch.randn(2, 12, 3, 3))[0].sum().backward()
    optimizer.step()
    config = tiny_config(tmp_path)
    progress = Progress(step=7, eig_sum=torch.arange(4.0, dtype=torch.float64), eig_count=2,
                        loss_sum=-0.5, eigenvalues=[0.9, 0.5, 0.2, 0.1], kmeans_k=4)
    np.random.seed(5)
    path = save_train_state(tmp_path / "s.safetensors", config=config, progress=progress,
                            head=head, optimizer=optimizer, scaler=None)
    expected_next = np.random.rand()
    state = load_train_state(path)
    assert state.config == config and state.progress.step == 7
    assert torch.equal(state.progress.eig_sum, progress.eig_sum)
    assert state.progress.eigenvalues == progress.eigenvalues
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in state.head.items())
    fresh = torch.optim.Adam(EigenHead(12, HeadConfig(k=4), embed_dim=4).parameters())
    fresh.load_state_dict(state.optimizer)
    for a, b in zip(fresh.state.values(), optimizer.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    np.random.seed(99)
    from segeig.train.state import restore_rng

    restore_rng(state.rng)
    assert np.random.rand() == expected_next
    (tmp_path / "bad.safetensors").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a readable segeig training state"):
        load_train_state(tmp_path / "bad.safetensors")


# --------------------------------------------------------------- config
def test_dataset_defaults_follow_the_design():
    from segeig.train.config import default_config

    pc, ade = default_config("pascal_context"), default_config("ade20k")
    assert (pc.head.k, pc.crop, pc.epochs, pc.batch_size) == (256, 480, 40, 16)
    assert (ade.head.k, ade.crop, ade.epochs, ade.batch_size) == (512, 512, 20, 16)
    assert pc.objective.beta_for(pc.head.k) == pytest.approx(0.08)
    assert ade.objective.beta_for(ade.head.k) == pytest.approx(0.04)
    assert (pc.lr, pc.lr_min, pc.head.tau_max, pc.head.tau_min) == (1e-3, 1e-5, 1.0, 0.3)
    city = default_config("cityscapes", k=128, crop=448, epochs=None, head_kind="transformer")
    assert (city.head.k, city.crop, city.epochs, city.head.kind) == (128, 448, 40, "transformer")
    assert default_config("Pascal-Context").dataset == "pascal_context"


def test_config_errors_and_round_trip():
    from segeig.config import from_dict, to_dict
    from segeig.train.config import TrainConfig, default_config

    with pytest.raises(ValueError, match="unknown dataset"):
        default_config("coco")
    with pytest.raises(ValueError, match="unknown training settings"):
        default_config("folder", learning_rate=1)
    with pytest.raises(ValueError, match="scale"):
        default_config("folder", scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="amp"):
        default_config("folder", amp="fp8")
    config = default_config("custom", "/data", k=32, backbone_weights="random",
                            backbone_arch_overrides={"depth": 2})
    assert from_dict(TrainConfig, to_dict(config)) == config
    # through JSON, as the resume state and checkpoints store it: tuples come back as tuples
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(config)))) == config
    assert config.backbone.weights == "random" and config.backbone.arch_overrides == {"depth": 2}
