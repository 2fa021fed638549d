"""Web demo logic, without a server: inputs, segmentation, merging, downloads, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segeig.app import legend, logic, uploads

from segeig.config import PropagationConfig
from segeig.labelmaps import read_segments
from segeig.predictor import Segmenter
from segeig.viz import make_palette
from tests.app_helpers import EIGENVALUES, add_centroids, write_image
from tests.conftest import random_image


@pytest.fixture
def seg(tiny_model) -> Segmenter:
    add_centroids(tiny_model)
    # Plain argmax: these tests need several segments on tiny noise images, where
    # every patch is a colour/position neighbour of most others and propagation
    # of the random head's near-uniform probabilities leaves one segment.
    tiny_model.propagation = PropagationConfig(steps=0)
    config = {"eigenvalues": EIGENVALUES, "resolution": {"short": 0, "max_long": 0}}
    return Segmenter(tiny_model, config, device="cpu")


@pytest.fixture
def result(seg, rng) -> logic.SegmentedImage:
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
    image, notice = uploads.read_upload(path, max_side=100)
    assert image.shape == (67, 100, 3)
    assert notice == "big.png was downscaled from 300×200 to 100×67 (max side 100 px)"
    same, none = uploads.read_upload(path, max_side=300)
    assert same.shape == (200, 300, 3) and none is None


def test_read_upload_corrupt_file_names_upload_only(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(logic.UserError) as info:
        uploads.read_upload(path, 512)
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


def test_render_overlay_opacity(seg, result):
    view = logic.view_of(seg, result, 0)
    merged, palette = view.merged, view.palette
    np.testing.assert_array_equal(palette, make_palette(12))
    edge = np.zeros(merged.labels.shape, bool)
    edge[:, :-1] |= merged.labels[:, :-1] != merged.labels[:, 1:]
    edge[:-1, :] |= merged.labels[:-1, :] != merged.labels[1:, :]
    plain = logic.render_overlay(result, view, 0.0)
    np.testing.assert_array_equal(plain[~edge], result.image[~edge])
    full = logic.render_overlay(result, view, 1.0)
    np.testing.assert_array_equal(full[~edge], palette[merged.labels][~edge])


def test_legend_lists_largest_segments(seg, result):
    view = logic.view_of(seg, result, 0)
    table = legend.segment_table(view.merged)
    fractions = [row[1] for row in table]
    assert fractions == sorted(fractions, reverse=True)
    assert abs(sum(fractions) - 1) < 1e-9
    entries, hidden = legend.legend_for(view, max_entries=2)
    assert [e[0] for e in entries] == [legend.segment_caption(*row) for row in table[:2]]
    np.testing.assert_array_equal(entries[0][1], view.palette[table[0][0]])
    assert hidden == len(table) - 2
    picture = legend.legend_picture(entries)
    assert picture.ndim == 3 and picture.dtype == np.uint8
    html = legend.legend_html(entries)
    r, g, b = view.palette[table[0][0]]
    assert entries[0][0] in html and f"#{r:02x}{g:02x}{b:02x}" in html


def _class_seg(seg, names: dict[int, str]):
    from segeig.evaluation import class_map_from_names

    seg.class_map = class_map_from_names(names, 12, "eigen")
    return seg


def test_class_view_names_colours_and_unassigned(seg, result):
    present = result.ids.tolist()
    assert len(present) >= 3
    # Two present segments share a class, one gets another, the rest none.
    _class_seg(seg, {present[0]: "sky", present[1]: "sky", present[2]: "<b>road</b>"})
    view = logic.view_of(seg, result, 2)  # merging does not apply to classes
    assert view.classes
    table = seg.class_map.maps["eigen"]
    np.testing.assert_array_equal(view.merged.labels, table[result.labels])
    assert view.merged.members[0] == sorted(present[:2])
    assert view.merged.members[255] == present[3:]
    entries, _ = legend.legend_for(view)
    captions = [e[0] for e in entries]
    assert any(c.startswith("sky · ") for c in captions)
    assert not any(c.startswith("unassigned") for c in captions)  # drawn uncoloured
    html = legend.legend_html(entries)
    assert "&lt;b&gt;road&lt;/b&gt;" in html and "<b>road" not in html  # escaped
    shown = logic.render_overlay(result, view, 1.0)
    unassigned = view.merged.labels == 255
    # Unassigned pixels keep the photo (except the white boundary lines); others are coloured.
    assert (shown[unassigned] == result.image[unassigned]).all(axis=1).mean() > 0.5
    assert (shown[~unassigned] == result.image[~unassigned]).all(axis=1).mean() < 0.05
    text = logic.explain_segment(seg, result, view, 1)
    assert text.startswith("**&#60;b&#62;road&#60;&#47;b&#62;** covers")
    assert "map to this class" in text
    assert "have no class" in logic.explain_segment(seg, result, view, 255)


def test_class_downloads_hold_class_indices(tmp_path, seg, result):
    present = result.ids.tolist()
    _class_seg(seg, {present[0]: "sky"})
    view = logic.view_of(seg, result, 0)
    files = logic.write_downloads(tmp_path, 0, result, view, logic.render_overlay(result, view, .5))
    labels = read_segments(files[0])
    assert set(np.unique(labels).tolist()) <= {0, 255}
    np.testing.assert_array_equal(labels == 0, result.labels == present[0])


def test_clean_name():
    assert logic.clean_name("  blue   sky ") == "blue sky"
    with pytest.raises(logic.UserError, match="Type a name"):
        logic.clean_name("   ")
    with pytest.raises(logic.UserError, match="at most 100"):
        logic.clean_name("x" * 101)


def test_segment_caption():
    assert legend.segment_caption(12, 0.344, 1) == "segment 12 · 34%"
    assert legend.segment_caption(3, 0.001, 3) == "segment 3 · <1% (+2 merged)"


def test_write_downloads_roundtrip(tmp_path, seg, result):
    view = logic.view_of(seg, result, 3)
    merged = view.merged
    shown = logic.render_overlay(result, view, 0.5)
    result.name = "../../holiday photo.jpg"
    files = logic.write_downloads(tmp_path, 0, result, view, shown)
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
    path = logic.write_downloads(tmp_path, 0, result, logic.LabelMapView(merged, palette), shown)[0]
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
    shown = logic.view_of(seg, result, 0)
    merged = shown.merged
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
    text = logic.explain_segment(seg, result, shown, seg_id)
    assert text.startswith(f"**Segment {seg_id}** covers ")
    assert "Most distinctive eigenfunctions: ψ" in text
    with pytest.raises(logic.UserError, match="not in this image"):
        logic.mask_view(result.image, merged.labels, 999)


def test_model_runs_under_the_lock_and_crf_outside(seg, rng, monkeypatch):
    import threading

    import segeig.predictor

    lock = threading.Lock()
    seen = []
    for name in ("forward", "patch_scores", "crf_inputs", "eigenfunctions"):
        original = getattr(seg, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, lock.locked()))
            return _original(*args, **kwargs)

        monkeypatch.setattr(seg, name, spy)
    crf_from_scores = segeig.predictor.crf_from_scores

    def crf_spy(*args, **kwargs):
        seen.append(("crf", lock.locked()))
        return crf_from_scores(*args, **kwargs)

    monkeypatch.setattr(segeig.predictor, "crf_from_scores", crf_spy)
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


def test_concurrent_uploads_take_turns_decoding(tmp_path, rng, monkeypatch):
    """Regression: concurrent uploads decoded at once (two PNG bombs: 8.4 GB)."""
    import threading
    import time

    from segeig.imageio import read_image

    active, peak = [0], [0]
    lock = threading.Lock()

    def slow_read(path, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return read_image(path, **kwargs)

    monkeypatch.setattr(uploads, "read_image", slow_read)
    paths = [write_image(tmp_path / f"{i}.png", random_image(rng, 100, 120)) for i in range(2)]
    budget = uploads.PixelBudget(100 * 120 * 3 // 2)  # room for one of them at a time
    threads = [threading.Thread(target=uploads.read_upload, args=(p, 64, budget)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak[0] == 1 and budget.in_use == 0


def test_read_upload_refuses_too_many_pixels_from_the_header(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(uploads, "MAX_PIXELS", 5000)
    Image.new("RGBA", (100, 80)).save(tmp_path / "bomb.png")
    with pytest.raises(logic.UserError, match="bomb.png: 100×80 pixels is more than"):
        uploads.read_upload(tmp_path / "bomb.png", 64)


def test_read_upload_decodes_jpegs_at_the_display_size(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (1600, 1200), (9, 99, 199)).save(tmp_path / "photo.jpg")
    image, notice = uploads.read_upload(tmp_path / "photo.jpg", 200)
    assert image.shape == (150, 200, 3) and image.flags.writeable
    assert notice == "photo.jpg was downscaled from 1600×1200 to 200×150 (max side 200 px)"


def test_pixel_budget_serialises_large_decodes():
    import threading

    budget = uploads.PixelBudget(10)
    with budget.hold(6):
        with pytest.raises(TimeoutError), budget.hold(6, timeout=0.05):
            pass
        with budget.hold(4, timeout=0.05):  # fits beside the first
            assert budget.in_use == 10
    with budget.hold(25, timeout=0.05):  # larger than the budget: alone
        assert budget.in_use == 10
    assert budget.in_use == 0
    entered = threading.Event()

    def later():
        with budget.hold(8, timeout=5):
            entered.set()

    with budget.hold(8):
        thread = threading.Thread(target=later)
        thread.start()
        assert not entered.wait(0.1)  # waits while the first holds its pixels
    thread.join(5)
    assert entered.is_set()
