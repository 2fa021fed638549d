"""Output files: safe paths, label-map formats, overlays, scores, atomic writes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from segeig.batch.outputs import (
    OutputPathError,
    output_paths,
    read_scores,
    safe_output_path,
    save_overlay,
    save_scores,
)
from segeig.labelmaps import save_segments
from segeig.viz import make_palette


@pytest.mark.parametrize("rel", [
    "../x.png", "labels/../../x.png", "a/../../b", "/etc/passwd", "C:\\x.png", "C:x.png",
    "\\\\server\\share\\x", "..\\x.png", "", "a\0b",
])
def test_escaping_paths_are_refused(tmp_path, rel):
    with pytest.raises(OutputPathError):
        safe_output_path(tmp_path / "out", rel)


def test_plain_paths_stay_inside(tmp_path):
    out = tmp_path / "out"
    path = safe_output_path(out, "labels/trip/a.png")
    assert path == out.resolve() / "labels" / "trip" / "a.png"
    # ".." inside a name (not a component) is harmless.
    assert safe_output_path(out, "labels/a..b.png").name == "a..b.png"


def test_symlinked_folder_or_file_inside_out_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "labels").mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "labels" / "trip")
    with pytest.raises(OutputPathError, match="outside"):
        safe_output_path(out, "labels/trip/a.png")
    with pytest.raises(OutputPathError, match="outside"):
        safe_output_path(out, "labels/trip/deeper/a.png")
    os.symlink(elsewhere / "victim.png", out / "labels" / "b.png")
    with pytest.raises(OutputPathError, match="symlink"):
        safe_output_path(out, "labels/b.png")
    assert list(elsewhere.iterdir()) == []


def test_out_dir_itself_may_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    path = safe_output_path(tmp_path / "link", "labels/a.png")
    assert path.parent.parent == (tmp_path / "real").resolve()


def test_output_paths_layout(tmp_path):
    paths = output_paths(tmp_path, "trip/a", overlay_format="png", probs=True)
    root = tmp_path.resolve()
    assert paths == {"labels": root / "labels/trip/a.png", "overlay": root / "overlays/trip/a.png",
                     "probs": root / "probs/trip/a.npz"}
    assert list(output_paths(tmp_path, "a")) == ["labels"]


def test_overlay_and_scores(tmp_path, rng):
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    labels = np.zeros((20, 30), int)
    labels[:, 15:] = 1
    for suffix in ("jpg", "png"):
        save_overlay(image, labels, tmp_path / f"o.{suffix}", make_palette(2))
        with Image.open(tmp_path / f"o.{suffix}") as img:
            assert img.size == (30, 20) and img.format == {"jpg": "JPEG", "png": "PNG"}[suffix]
    scores = rng.normal(size=(7, 2, 3)).astype(np.float32)
    save_scores(tmp_path / "s.npz", scores, patch_size=16, image_size=(20, 30), method="eigen")
    back = read_scores(tmp_path / "s.npz")
    assert back["scores"].dtype == np.float16
    np.testing.assert_allclose(back["scores"], scores, atol=1e-2)
    assert (back["patch_size"], back["image_size"], back["method"]) == (16, (20, 30), "eigen")


def test_writes_leave_no_temp_and_respect_umask(tmp_path):
    path = tmp_path / "sub" / "l.png"
    save_segments(np.zeros((3, 3), int), path, 2)
    assert sorted(p.name for p in path.parent.iterdir()) == ["l.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, rng, monkeypatch):
    path = tmp_path / "o.jpg"
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    save_overlay(image, np.zeros((8, 8), int), path, make_palette(1))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C arrived mid-encode

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_overlay(image, np.ones((8, 8), int), path, make_palette(2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["o.jpg"]


def test_overlay_written_in_bands_equals_the_whole_overlay(tmp_path, rng, monkeypatch):
    """Bands (for huge images) keep boundaries across band edges."""
    import segeig.batch.outputs as outputs
    from segeig.viz import overlay

    image = rng.integers(0, 256, (23, 17, 3), dtype=np.uint8)
    labels = np.repeat(rng.integers(0, 6, (23, 1)), 17, 1)  # horizontal stripes: row boundaries
    palette = make_palette(6)
    monkeypatch.setattr(outputs, "_OVERLAY_BAND_PIXELS", 17 * 4)
    save_overlay(image, labels, tmp_path / "o.png", palette, 0.4)
    expected = overlay(image, labels, palette, alpha=0.4, ignore_index=None)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), expected)
