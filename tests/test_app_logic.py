"""Web demo logic, without a server: inputs, segmentation, merging, downloads, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segeig.app import logic

from segeig.imageio import read_segments
from segeig.predictor import Segmenter
from segeig.viz import make_palette
from tests.app_helpers import EIGENVALUES, add_centroids, write_image
from tests.conftest import random_image


@pytest.fixture
def seg(tiny_model) -> Segmenter:
    add_centroids(tiny_model)
    return Segmenter(tiny_model, {"eigenvalues": EIGENVALUES}, device="cpu")


@pytest.fixture
def result(seg, rng) -> logic.ImageResult:
    return logic.segment_image(seg, random_image(rng, 48, 64), "cat.png", "eigen", crf=False)


def test_safe_message_hides_paths():
    text = "cannot read image file '/tmp/gradio/ab12/cat photo.png' in /srv/app/x.py, line 3"
    out = logic.safe_message(text)
    assert "/tmp" not in out and "/srv" not in out
    assert "x.py" in out
    assert logic.safe_message(r"bad C:\Users\me\pic.jpg") == "bad pic.jpg"
    assert len(logic.safe_message("word " * 200)) == 300


def test_safe_stem_never_escapes():
    assert logic.safe_stem("../../etc/passwd") == "passwd"
    assert logic.safe_stem("my holiday (1).JPG") == "my_holiday_1"
    assert logic.safe_stem("...") == "image"


def test_read_upload_downscales_with_notice(tmp_path, rng):
    path = write_image(tmp_path / "big.png", random_image(rng, 200, 300))
    image, notice = logic.read_upload(path, max_side=100)
    assert image.shape == (67, 100, 3)
    assert notice == "big.png was downscaled from 300×200 to 100×67 (max side 100 px)"
    same, none = logic.read_upload(path, max_side=300)
    assert same.shape == (200, 300, 3) and none is None


def test_read_upload_corrupt_file_names_upload_only(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(logic.UserError) as info:
        logic.read_upload(path, 512)
    message = str(info.value)
    assert message.startswith("bad.jpg: ")
    assert "not a recognised image" in message
    assert str(tmp_path) not in message


@pytest.mark.parametrize("method", ["eigen", "eigen+kmeans"])
@pytest.mark.parametrize("crf", [False, True])
def test_segment_image_labels_and_profiles(seg, rng, method, crf):
    image = random_image(rng, 40, 56)
    out = logic.segment_image(seg, image, "x.png", method, crf)
    assert out.labels.shape == (40, 56) and out.labels.dtype == np.int32
    assert out.labels.min() >= 0 and out.labels.max() < seg.num_segments(method)
    np.testing.assert_array_equal(out.ids, np.unique(out.labels))
    assert out.sizes.sum() == 40 * 56
    assert out.profiles.shape == (len(out.ids), seg.num_segments(method))
    if not crf:  # without CRF the demo's labels are exactly the library's prediction
        np.testing.assert_array_equal(out.labels, seg.predict(image, method, max_side=None))


def test_segment_image_rejects_unknown_method(seg, rng):
    with pytest.raises(logic.UserError, match="not available"):
        logic.segment_image(seg, random_image(rng, 32, 32), "x.png", "kmeans", False)


def test_merge_reduces_segment_count(result):
    n_present = len(result.ids)
    assert n_present >= 3, "fixture image should show several segments"
    np.testing.assert_array_equal(logic.merge(result, 0).labels, result.labels)
    merged = logic.merge(result, 2)
    assert len(np.unique(merged.labels)) == 2
    # merged ids are original ids, and each original segment moved as a whole
    for old in result.ids:
        assert len(np.unique(merged.labels[result.labels == old])) == 1
    assert set(np.unique(merged.labels)) <= set(result.ids.tolist())


def test_render_overlay_opacity(result):
    palette = make_palette(12)
    merged = logic.merge(result, 0)
    edge = np.zeros(merged.labels.shape, bool)
    edge[:, :-1] |= merged.labels[:, :-1] != merged.labels[:, 1:]
    edge[:-1, :] |= merged.labels[:-1, :] != merged.labels[1:, :]
    plain = logic.render_overlay(result, merged, palette, 0.0)
    np.testing.assert_array_equal(plain[~edge], result.image[~edge])
    full = logic.render_overlay(result, merged, palette, 1.0)
    np.testing.assert_array_equal(full[~edge], palette[merged.labels][~edge])


def test_legend_lists_largest_segments(result):
    palette = make_palette(12)
    merged = logic.merge(result, 0)
    table = logic.segment_table(merged)
    fractions = [row[1] for row in table]
    assert fractions == sorted(fractions, reverse=True)
    assert abs(sum(fractions) - 1) < 1e-9
    legend, hidden = logic.legend_for(merged, palette, max_entries=2)
    assert legend.ndim == 3 and legend.dtype == np.uint8
    assert hidden == len(table) - 2


def test_segment_caption():
    assert logic.segment_caption(12, 0.344, 1) == "segment 12 · 34%"
    assert logic.segment_caption(3, 0.001, 3) == "segment 3 · <1% (+2 merged)"


def test_write_downloads_roundtrip(tmp_path, result):
    palette = make_palette(12)
    merged = logic.merge(result, 3)
    shown = logic.render_overlay(result, merged, palette, 0.5)
    result.name = "../../holiday photo.jpg"
    files = logic.write_downloads(tmp_path, 0, result, merged, palette, shown)
    assert [f.name for f in files] == ["01_holiday_photo_labels.png",
                                      "01_holiday_photo_overlay.png"]
    assert all(f.parent == tmp_path for f in files)
    np.testing.assert_array_equal(read_segments(files[0]), merged.labels)


@pytest.mark.parametrize("n_segments", [256, 512])
def test_label_download_format_follows_the_segment_count(tmp_path, result, n_segments):
    """Like `segeig segment`: palette PNG up to 256 segments (id 255 keeps its colour),
    16-bit beyond — decided by the method's segment count, not by the image."""
    from PIL import Image

    from segeig.cluster import MergeResult

    labels = np.array([[0, 255], [7, 255]], np.int32)
    merged = MergeResult(labels, {0: [0], 7: [7], 255: [255]})
    palette = make_palette(n_segments)
    shown = np.zeros((2, 2, 3), np.uint8)
    path = logic.write_downloads(tmp_path, 0, result, merged, palette, shown)[0]
    np.testing.assert_array_equal(read_segments(path), labels)
    with Image.open(path) as img:
        if n_segments == 256:
            assert img.mode == "P"
            colours = np.array(img.getpalette()[: 3 * 256]).reshape(256, 3)
            np.testing.assert_array_equal(colours[255], palette[255])
        else:
            assert img.mode.startswith("I")


def test_eigenfunctions_sorted_by_eigenvalue(seg, result):
    order, lam = logic.eigen_order(seg)
    assert lam == sorted(EIGENVALUES, reverse=True)
    raw = seg.eigenfunctions(result.image)
    values = logic.eigenfunctions_of(seg, result)
    np.testing.assert_allclose(values[0], raw[int(np.argmax(EIGENVALUES))])
    np.testing.assert_allclose(values, raw[order])
    grid = logic.eigen_grid_image(seg, result, 4)
    assert grid.ndim == 3 and grid.shape[2] == 3


def test_eigen_order_without_eigenvalues(tiny_model):
    seg = Segmenter(tiny_model, {}, device="cpu")
    assert logic.eigen_order(seg) == (None, None)


def test_segment_mask_and_explanation(seg, result):
    merged = logic.merge(result, 0)
    seg_id = logic.segment_at(merged, 5, 7)
    assert seg_id == merged.labels[7, 5]
    assert logic.segment_at(merged, 10_000, -5) == merged.labels[0, -1]
    view = logic.mask_view(result.image, merged.labels, seg_id)
    inside = merged.labels == seg_id
    outline = (view == (255, 64, 64)).all(axis=2)
    assert outline.any()
    # away from the outline: inside untouched, outside dimmed to 0.25·v + 40
    np.testing.assert_array_equal(view[inside & ~outline], result.image[inside & ~outline])
    far = ~inside & ~outline
    np.testing.assert_allclose(view[far], np.rint(result.image[far] * 0.25 + 40), atol=0)
    text = logic.explain_segment(seg, result, merged, seg_id)
    assert text.startswith(f"**Segment {seg_id}** covers ")
    assert "Most distinctive eigenfunctions: ψ" in text
    with pytest.raises(logic.UserError, match="not in this image"):
        logic.mask_view(result.image, merged.labels, 999)


def test_model_runs_under_the_lock_and_crf_outside(seg, rng, monkeypatch):
    import threading

    import segeig.crf

    lock = threading.Lock()
    seen = []
    for name in ("forward", "patch_scores", "crf_inputs", "eigenfunctions"):
        original = getattr(seg, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, lock.locked()))
            return _original(*args, **kwargs)

        monkeypatch.setattr(seg, name, spy)
    crf_from_scores = segeig.crf.crf_from_scores

    def crf_spy(*args, **kwargs):
        seen.append(("crf", lock.locked()))
        return crf_from_scores(*args, **kwargs)

    monkeypatch.setattr(segeig.crf, "crf_from_scores", crf_spy)
    result = logic.segment_image(seg, random_image(rng, 32, 32), "a.png", "eigen", True,
                                 lock=lock)
    logic.eigenfunctions_of(seg, result, lock)
    # One forward pass serves the labels, the CRF inputs and the eigenfunctions.
    assert [name for name, _ in seen] == ["forward", "crf"]
    assert all(locked == (name != "crf") for name, locked in seen)
    assert not lock.locked()
    # A method that runs no head falls back to one eigenfunction pass, under the lock.
    seg.model.set_centroids("kmeans", torch.randn(5, seg.model.backbone.embed_dim))
    seen.clear()
    kmeans = logic.segment_image(seg, random_image(rng, 32, 32), "b.png", "kmeans", False,
                                 lock=lock)
    logic.eigenfunctions_of(seg, kmeans, lock)
    # (the last "forward" is the one Segmenter.eigenfunctions runs itself)
    assert seen == [("forward", True), ("eigenfunctions", True), ("forward", True)]
