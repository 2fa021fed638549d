"""Protocols: the settings table, image/label sizing, label handling on real layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segeig.data.base import Sample
from segeig.evaluation.evaluator import evaluate
from segeig.evaluation.protocols import (
    PROTOCOLS,
    Protocol,
    load_eval_dataset,
    prepare,
    resolve_protocol,
)
from segeig.predictor import Segmenter
from tests.conftest import random_image


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _labels(size=(24, 40)) -> np.ndarray:
    """Raw label map with a few blocks of chosen raw ids (filled in by callers)."""
    return np.zeros(size, np.uint8)


# -- fixture datasets in the standard layouts --------------------------------

def make_pascal_context(root: Path, raw: np.ndarray, rng) -> None:
    voc = root / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    (voc / "JPEGImages").mkdir(parents=True)
    Image.fromarray(random_image(rng, *raw.shape)).save(voc / "JPEGImages" / "2008_000002.jpg")
    _png(voc / "SegmentationClassContext" / "2008_000002.png", raw)


def make_cityscapes(root: Path, raw: np.ndarray, rng) -> None:
    stem = "frankfurt_000000_000294"
    _png(root / "leftImg8bit" / "val" / "frankfurt" / f"{stem}_leftImg8bit.png",
         random_image(rng, *raw.shape))
    _png(root / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_labelIds.png", raw)


def make_ade20k(root: Path, raw: np.ndarray, rng) -> None:
    base = root / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    Image.fromarray(random_image(rng, *raw.shape)).save(
        base / "images" / "validation" / "ADE_val_00000001.jpg")
    _png(base / "annotations" / "validation" / "ADE_val_00000001.png", raw)


# -- the table ----------------------------------------------------------------

def test_table_follows_design():
    pc_stego = PROTOCOLS["stego", "pascal_context"]
    assert (pc_stego.num_classes, pc_stego.short_side, pc_stego.crop) == (59, 320, 320)
    assert pc_stego.window is None and not pc_stego.score_at_original
    assert PROTOCOLS["stego", "cityscapes"].num_classes == 27
    expected_full = {"pascal_context": (60, 520, 480, 320), "ade20k": (150, 512, 512, 512),
                     "cityscapes": (19, 1024, 768, 512)}
    for dataset, values in expected_full.items():
        p = PROTOCOLS["full", dataset]
        assert (p.num_classes, p.short_side, p.window, p.stride) == values
        assert p.crop is None and p.score_at_original
    native = PROTOCOLS["native", "custom"]
    assert native.short_side is None and native.num_classes is None and native.max_side == 1024


def test_defaults_and_errors():
    assert resolve_protocol(None, "custom").name == "native"
    assert resolve_protocol(None, "ade20k").name == "full"
    assert resolve_protocol(None, "pascal-context").name == "stego"
    assert resolve_protocol("full", "cityscapes") is PROTOCOLS["full", "cityscapes"]
    with pytest.raises(ValueError, match="stego, full, native"):
        resolve_protocol("segmenter", "ade20k")
    with pytest.raises(ValueError, match="valid"):
        resolve_protocol("stego", "folder")
    assert "short side 520" in PROTOCOLS["full", "pascal_context"].describe()


# -- sizing -------------------------------------------------------------------

def test_stego_resizes_and_crops_label_like_image():
    # 60×90 image in three vertical thirds; resized to 32×48 and centre-cropped
    # to 32×32, the crop starts 8 px into the resized image: columns 0-7 show
    # class 0, 8-23 class 1 and 24-31 class 2.
    label = np.repeat(np.repeat(np.arange(3, dtype=np.uint8), 30)[None], 60, axis=0)
    colours = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250]], np.uint8)
    sample = Sample(colours[label], label, "x", Path("x.png"))
    protocol = dataclasses.replace(PROTOCOLS["stego", "custom"], short_side=32, crop=32)
    out = prepare(sample, protocol)
    assert out.image.shape == (32, 32, 3) and out.label.shape == (32, 32)
    assert out.eval_image is out.image and out.in_size == out.out_size == (32, 32)
    assert np.all(out.label[:, :7] == 0) and np.all(out.label[:, 9:23] == 1)
    assert np.all(out.label[:, 25:] == 2)
    # Image and label stay aligned: away from the two boundaries the colours agree.
    inner = np.r_[0:7, 9:23, 25:32]
    assert np.array_equal(out.image[:, inner].argmax(-1), out.label[:, inner])


def test_full_keeps_original_label():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (50, 70)).astype(np.uint8)
    sample = Sample(random_image(rng, 50, 70), label, "x", Path("x.png"))
    out = prepare(sample, dataclasses.replace(PROTOCOLS["full", "custom"], short_side=30))
    assert out.in_size == (30, 42)
    assert out.label is label and out.eval_image is sample.image
    out = prepare(sample, PROTOCOLS["native", "custom"])
    assert out.image is sample.image and out.label is label


def test_prepare_needs_label():
    sample = Sample(np.zeros((8, 8, 3), np.uint8), None, "x", Path("x.png"))
    with pytest.raises(ValueError, match="with_labels=True"):
        prepare(sample, PROTOCOLS["native", "custom"])


# -- label handling on fixture datasets ---------------------------------------

def _prepared_label(protocol: Protocol, root: Path) -> np.ndarray:
    dataset = load_eval_dataset(protocol, root, "val")
    assert dataset.num_classes == protocol.num_classes
    return prepare(dataset[0], protocol).label


def test_pascal_context_59_and_60(tmp_path):
    raw = _labels((320, 480))
    raw[:, 160:320] = 5
    raw[:, 320:] = 59
    make_pascal_context(tmp_path, raw, np.random.default_rng(0))
    stego = _prepared_label(PROTOCOLS["stego", "pascal_context"], tmp_path)
    # 320 short side already: only the centre crop (columns 80..400) remains.
    assert stego.shape == (320, 320)
    assert np.all(stego[:, :80] == 255) and np.all(stego[:, 80:240] == 4)
    assert np.all(stego[:, 240:] == 58)
    full = _prepared_label(PROTOCOLS["full", "pascal_context"], tmp_path)
    assert full.shape == raw.shape
    assert np.array_equal(np.unique(full), [0, 5, 59])


def test_cityscapes_27_and_19(tmp_path):
    raw = _labels((32, 64))
    raw[:, 16:32] = 7  # road
    raw[:, 32:48] = 26  # car
    raw[:, 48:] = 3  # void ("out of roi")
    make_cityscapes(tmp_path, raw, np.random.default_rng(0))
    stego = PROTOCOLS["stego", "cityscapes"]
    label = _prepared_label(dataclasses.replace(stego, short_side=16, crop=16), tmp_path)
    # 32×64 → 16×32, centre crop keeps columns 8..24 of it = raw columns 16..48.
    assert np.all(label[:, :8] == 0) and np.all(label[:, 8:] == 19)
    full = _prepared_label(PROTOCOLS["full", "cityscapes"], tmp_path)
    assert np.all(full[:, :16] == 255) and np.all(full[:, 16:32] == 0)
    assert np.all(full[:, 32:48] == 13) and np.all(full[:, 48:] == 255)


def test_ade20k_150(tmp_path):
    raw = _labels((20, 30))
    raw[:, 10:20] = 1
    raw[:, 20:] = 150
    make_ade20k(tmp_path, raw, np.random.default_rng(0))
    label = _prepared_label(PROTOCOLS["full", "ade20k"], tmp_path)
    assert np.all(label[:, :10] == 255) and np.all(label[:, 10:20] == 0)
    assert np.all(label[:, 20:] == 149)


# -- where predictions are scored --------------------------------------------

def _custom(root: Path, sizes, n_classes=4, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(f"k{i}" for i in range(n_classes)))
    for i, (h, w) in enumerate(sizes):
        label = rng.integers(0, n_classes, (h, w)).astype(np.uint8)
        label[:2] = 255
        _png(root / "images" / "val" / f"im{i}.png", random_image(rng, h, w))
        _png(root / "annotations" / "val" / f"im{i}.png", label)
    return root


def _valid_pixels(labels) -> int:
    return int(sum((lab != 255).sum() for lab in labels))


def test_full_scores_every_original_pixel(tmp_path, tiny_model):
    root = _custom(tmp_path, [(40, 70), (37, 29)])
    protocol = dataclasses.replace(PROTOCOLS["full", "custom"], short_side=32, window=32,
                                   stride=16)
    dataset = load_eval_dataset(protocol, root)
    result = evaluate(Segmenter(tiny_model, device="cpu"), dataset, protocol, crf=False)
    assert [ex.pred.shape for ex in result.examples] == [(40, 70), (37, 29)]
    labels = [dataset[i].label for i in range(2)]
    assert result.scores.confusion.sum() == _valid_pixels(labels)


def test_stego_scores_the_crop(tmp_path, tiny_model):
    root = _custom(tmp_path, [(40, 70), (50, 33)])
    protocol = dataclasses.replace(PROTOCOLS["stego", "custom"], short_side=24, crop=24)
    dataset = load_eval_dataset(protocol, root)
    result = evaluate(Segmenter(tiny_model, device="cpu"), dataset, protocol, crf=False)
    labels = [prepare(dataset[i], protocol).label for i in range(2)]
    assert all(ex.pred.shape == (24, 24) for ex in result.examples)
    assert result.scores.confusion.sum() == _valid_pixels(labels)


def test_sliding_window_covers_partial_last_patch(tiny_model, rng):
    # 520 px is not a multiple of 16: the grid has 33 rows and the last one is
    # partial. Windows of 480/320 px: rows 30-32 are covered only by the last
    # window (grid rows 3..32), so they must equal a single pass on that crop.
    segmenter = Segmenter(tiny_model, device="cpu")
    image = random_image(rng, 520, 64)
    scores = segmenter.patch_scores(image, window=480, stride=320)
    assert scores.shape[1] == 33
    last = segmenter.patch_scores(image[48:], max_side=None)
    torch.testing.assert_close(scores[:, 30:], last[:, 27:])


@pytest.mark.parametrize("size", [(427, 640), (640, 427), (480, 640), (1024, 2048), (200, 200),
                                  (375, 500), (333, 500), (321, 999), (33, 47)])
def test_stego_sizes_like_the_reference_code(size):
    """stego = STEGO's torchvision ``Resize(320, NEAREST)`` + ``CenterCrop(320)`` on PIL
    images, pixel for pixel, for the image and the label alike (odd crop offsets,
    truncated long sides, downsampling and Potsdam's 200 → 320 upsampling)."""
    import torchvision.transforms as T

    rng = np.random.default_rng(size[0])
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    label = rng.integers(0, 30, size, dtype=np.uint8)
    reference = T.Compose([T.Resize(320, T.InterpolationMode.NEAREST), T.CenterCrop(320)])
    out = prepare(Sample(image, label, "x", Path("x.png")), PROTOCOLS["stego", "custom"])
    assert np.array_equal(out.image, np.asarray(reference(Image.fromarray(image))))
    assert np.array_equal(out.label, np.asarray(reference(Image.fromarray(label))))
    assert out.label.shape == (320, 320)
