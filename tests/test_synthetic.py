"""Synthetic datasets: layout, determinism, class structure, the script."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segeig.data.registry import build_dataset
from segeig.data.synthetic import (
    PRETRAIN_CLASS_OFFSET,
    TEXTURES,
    class_names,
    make_synthetic_dataset,
    render_sample,
)

#: sha256 of ``render_sample(default_rng([0, 1, 2]), (40, 56), 6)``'s arrays.
PINNED = "ab89ec62342e89fd8c59774f5c85b820bedc47164bdd03a921c5c084de33ee3b"


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_is_a_custom_dataset(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", n_train=3, n_val=4, size=(40, 56),
                                  n_classes=5, seed=1)
    train = build_dataset("custom", root, "train", with_labels=False)
    val = build_dataset("custom", root, "val")
    assert len(train) == 3 and len(val) == 4
    assert val.num_classes == 5 and val.class_names == class_names(5)
    for i in range(len(val)):
        sample = val[i]
        assert sample.image.shape == (40, 56, 3) and sample.label.shape == (40, 56)
        present = np.unique(sample.label)
        assert present.max() < 5
        # A two-class background plus objects: never a one-class image.
        assert len(present) >= 2


def test_deterministic_per_seed(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", 2, 2, 32, 4, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", 2, 2, 32, 4, seed=7)
    c = make_synthetic_dataset(tmp_path / "c", 2, 2, 32, 4, seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_classes_have_distinct_appearance():
    rng = np.random.default_rng(0)
    pixels: dict[int, list[np.ndarray]] = {}
    for _ in range(30):
        image, label = render_sample(rng, (64, 64), 6)
        for c in np.unique(label):
            pixels.setdefault(int(c), []).append(image[label == c].astype(np.float32))
    means = {c: np.concatenate(v).mean(0) for c, v in pixels.items()}
    assert len(means) == 6
    dists = [np.linalg.norm(means[a] - means[b]) for a in means for b in means if a < b]
    assert min(dists) > 20
    # Textured classes vary inside a region far more than the pixel noise does.
    stds = {c: np.concatenate(v).std(0).mean() for c, v in pixels.items()}
    assert stds[1] > 2 * stds[0]  # stripes vs flat


def test_existing_output_is_pinned():
    # Benchmarks compare numbers across versions: the default rendering must not drift.
    image, label = render_sample(np.random.default_rng([0, 1, 2]), (40, 56), 6)
    digest = hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest()
    assert digest == PINNED


def test_class_offset_renders_other_classes(tmp_path):
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    image, label = render_sample(rng_a, (48, 48), 8)
    other, other_label = render_sample(rng_b, (48, 48), 8, class_offset=PRETRAIN_CLASS_OFFSET)
    # Same layout and labels in [0, C), different appearance.
    assert np.array_equal(label, other_label)
    assert np.abs(image.astype(int) - other.astype(int)).mean() > 20
    root = make_synthetic_dataset(tmp_path, 1, 0, 32, 3, class_offset=PRETRAIN_CLASS_OFFSET)
    assert (root / "classes.txt").read_text().split() == class_names(3, PRETRAIN_CLASS_OFFSET)
    assert class_names(3, PRETRAIN_CLASS_OFFSET)[0] == "c64-grain"


def test_pretraining_classes_are_not_evaluation_classes():
    # What the module docstring promises: an id from 64 on shares its texture
    # kind with an evaluation id 0..7 only with a different texture geometry
    # and a hue at least 14° away.
    golden = 0.618033988749895
    for c0 in range(8):
        for c in range(PRETRAIN_CLASS_OFFSET, 2 * PRETRAIN_CLASS_OFFSET):
            if c % len(TEXTURES) != c0 % len(TEXTURES):
                continue
            hue = abs((c - c0) * golden) % 1.0
            assert min(hue, 1 - hue) * 360 > 14
            assert ((c * 0.37) % 1.0, c % 4) != ((c0 * 0.37) % 1.0, c0 % 4)


def test_jitter_and_ignore(tmp_path):
    root = make_synthetic_dataset(tmp_path, 0, 6, 48, 4, seed=0, size_jitter=0.3,
                                  ignore_width=2)
    val = build_dataset("custom", root, "val")
    shapes = {val[i].image.shape for i in range(len(val))}
    assert len(shapes) > 1
    label = val[0].label
    ignored = label == 255
    assert 0 < ignored.mean() < 0.5
    assert not (root / "images" / "train").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_classes"):
        make_synthetic_dataset(tmp_path, 1, 1, 16, 1)
    with pytest.raises(ValueError, match=">= 0"):
        make_synthetic_dataset(tmp_path, -1, 1, 16, 3)


def test_script(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic_dataset.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "s"), "--train", "1", "--val", "2",
         "--size", "24", "32", "--classes", "3"],
        capture_output=True, text=True, cwd=script.parents[1],
        env={"PYTHONPATH": str(script.parents[1]), "PATH": ""}, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "s" / "images" / "val").iterdir())) == 2
    assert (tmp_path / "s" / "classes.txt").read_text().split() == class_names(3)
