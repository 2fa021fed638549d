"""Web demo handlers and app construction, called directly (no server, no browser)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from segeig.app import handlers, logic
from segeig.app.ui import build_demo, build_error_demo, serve

from segeig.config import PropagationConfig
from segeig.labelmaps import read_segments
from segeig.predictor import Segmenter
from tests.app_helpers import EIGENVALUES, add_centroids, write_image
from tests.conftest import random_image


def _read(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


class _NoProgress:
    def __call__(self, *args, **kwargs):
        return None


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
def h(seg, tmp_path) -> handlers.DemoHandlers:
    area = handlers.DownloadArea(tmp_path)
    return handlers.DemoHandlers(seg, max_side=64, max_images=2, downloads=area)


def _segment(h, files, n=0, method="eigen", crf=False, opacity=0.5):
    return handlers.guard(h.segment)(files, method, crf, opacity, n, progress=_NoProgress())


def test_guard_turns_errors_into_short_messages():
    def user_error():
        raise logic.UserError("cat.png: broken, see /srv/secret/cat.png")

    def bug():
        raise KeyError("/home/server/internal")

    with pytest.raises(gr.Error) as info:
        handlers.guard(user_error)()
    assert info.value.message == "cat.png: broken, see cat.png"
    with pytest.raises(gr.Error) as info:
        handlers.guard(bug)()
    assert "/home" not in info.value.message and "server log" in info.value.message


def test_segment_handler_outputs(h, tmp_path, rng):
    paths = [str(write_image(tmp_path / f"in/img{i}.png", random_image(rng, 48, 96)))
             for i in range(3)]
    out = _segment(h, paths, n=2)
    state, selector, summary, compare, legend, gallery, files, clickable, choice, mask, text = out
    assert len(state["results"]) == 2  # max_images
    assert "Only the first 2 of 3 images were processed." in summary
    assert "img0.png was downscaled from 96×48 to 64×32" in summary
    assert "2 segments" in summary
    before, after = (_read(p) for p in compare)
    assert before.shape == after.shape == (32, 64, 3)
    np.testing.assert_array_equal(before, state["results"][0].image)
    assert len(gallery) == 2 and gallery[1] == (files[3], "2. img1.png")
    assert [os.path.basename(f) for f in files] == [
        "01_img0_labels.png", "01_img0_overlay.png", "02_img1_labels.png", "02_img1_overlay.png"]
    assert compare[1] == clickable == files[1]
    labels = read_segments(files[0])
    assert len(np.unique(labels)) == 2
    assert mask is None and text == "" and legend.count("<li") == 2
    assert "segment " in legend
    # every returned picture lives in the app's own download area
    for path in [*compare, *files]:
        assert Path(path).is_relative_to(h.downloads.root)


def test_segment_handler_skips_bad_files_and_fails_when_none_left(h, tmp_path, rng):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    good = write_image(tmp_path / "good.png", random_image(rng, 32, 32))
    out = _segment(h, [str(bad), str(good)])
    assert [r.name for r in out[0]["results"]] == ["good.png"]
    assert "Skipped bad.jpg: not a recognised image" in out[2]
    with pytest.raises(gr.Error) as info:
        _segment(h, [str(bad)])
    assert info.value.message.startswith("bad.jpg: not a recognised image")
    assert str(tmp_path) not in info.value.message
    with pytest.raises(gr.Error, match="Upload at least one image"):
        _segment(h, [])


def test_view_eigen_explain_and_click(h, tmp_path, rng):
    path = write_image(tmp_path / "a.png", random_image(rng, 40, 40))
    state = _segment(h, [str(path)])[0]
    summary, *_ = h.view(state, 0, 0.3, 1)
    assert "1 segment, method" in summary
    assert h.view(None, 0, 0.3, 1)[0] == gr.skip()
    grid, note = h.eigen(state, 0, 4)
    assert _read(grid).ndim == 3 and "ordered by eigenvalue" in note
    seg_id = int(state["results"][0].labels[3, 4])
    mask, text = h.explain(state, 0, 0, seg_id)
    assert _read(mask).shape == (40, 40, 3) and f"**Segment {seg_id}**" in text
    event = gr.SelectData(None, {"index": [4, 3], "value": None})
    chosen, mask2, text2 = h.click(state, 0, 0, event)
    assert chosen == seg_id and text2 == text


def test_classes_from_a_labelled_checkpoint(h, seg, tmp_path, rng):
    from segeig.evaluation import class_map_from_names

    path = write_image(tmp_path / "a.png", random_image(rng, 40, 40))
    state = _segment(h, [str(path)], method="eigen")[0]
    present = state["results"][0].ids.tolist()
    seg.class_map = class_map_from_names({present[0]: "sky", present[1]: "grass & soil"}, 12,
                                         "eigen")
    summary, _, legend, _, files, _, choice, *_ = h.view(state, 0, 0.5, 1)
    # Both named clusters are present in the image (``ids``), each its own class.
    assert "class map" in summary and "): 2 classes, method *eigen*." in summary
    assert "sky · " in legend and "grass &amp; soil · " in legend
    names = [os.path.basename(f) for f in files]
    assert names[-2:] == ["classes.txt", "legend.png"]
    assert Path(files[-2]).read_text().splitlines() == ["sky", "grass & soil"]
    assert set(np.unique(read_segments(files[0])).tolist()) <= {0, 1, 255}
    assert any(label.startswith("sky · ") for label, _ in choice.choices)
    assert "named classes (sky, grass &#38; soil) for eigen" in handlers.model_summary(seg)
    text = h.explain(state, 0, 0, 0)[1]
    assert text.startswith("**sky** covers")
    with pytest.raises(logic.UserError, match="already names the classes"):
        h.name_segment(state, {}, 0, 0, 0, "tree")


def test_naming_segments_writes_a_names_file(h, seg, tmp_path, rng):
    from segeig.evaluation import parse_names

    path = write_image(tmp_path / "a.png", random_image(rng, 40, 40))
    state = _segment(h, [str(path)], method="eigen")[0]
    result = state["results"][0]
    merged = logic.merge(result, 1)  # everything merged into one segment
    (rep, members), = merged.members.items()
    names, file, note = h.name_segment(state, None, 0, 1, rep, "  all of it ")
    assert names == {"eigen": {m: "all of it" for m in members}}
    assert Path(file).name == "names-eigen.json" and Path(file).is_relative_to(h.downloads.root)
    assert parse_names(Path(file).read_bytes(), 12) == {m: "all of it" for m in members}
    assert "--names names-eigen.json --method eigen" in note
    # A second name adds to the first, per method.
    other = int(result.labels[0, 0])
    names, file, _ = h.name_segment(state, names, 0, 0, other, "corner")
    assert names["eigen"][other] == "corner" and len(names["eigen"]) == len(members)
    with pytest.raises(logic.UserError, match="Click a segment"):
        h.name_segment(state, names, 0, 0, None, "x")
    with pytest.raises(logic.UserError, match="Type a name"):
        h.name_segment(state, names, 0, 0, other, "")


def test_download_area_sweeps_old_folders(tmp_path):
    area = handlers.DownloadArea(tmp_path)
    old = area.new()
    stale = time.time() - handlers.DOWNLOAD_MAX_AGE_S - 10
    os.utime(old, (stale, stale))
    fresh = area.new()
    assert not old.exists() and fresh.exists()
    area.cleanup()
    assert not area.root.exists()


def test_model_summary_warns_about_random_backbone(seg):
    seg.config["backbone"] = {"name": "vit_tiny", "weights_origin": "random"}
    text = handlers.model_summary(seg, "fitted on the bundled examples")
    assert "K = 12 eigenfunctions" in text and "eigen+kmeans (6 segments)" in text
    assert "RANDOM weights" in text


def test_build_demo_exposes_segment_api(seg, tmp_path, rng):
    example = write_image(tmp_path / "ex.png", random_image(rng, 32, 32))
    demo = build_demo(seg, examples=[example], download_root=tmp_path)
    try:
        assert isinstance(demo, gr.Blocks)
        names = [d.api_name for d in demo.fns.values() if d.api_visibility == "public"]
        assert names == ["segment"]
    finally:
        demo.segeig_downloads.cleanup()
    page = build_error_demo("## no weights")
    assert isinstance(page, gr.Blocks)


def test_serve_binds_localhost_by_default():
    import inspect

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve).parameters["share"].default is False


def test_kmeans_only_checkpoint_works_without_eigen_tab(tiny_backbone, tmp_path, rng):
    import torch

    from segeig.model import SegEigModel

    model = SegEigModel(tiny_backbone, None)
    model.set_centroids("kmeans", torch.randn(5, tiny_backbone.embed_dim))
    seg = Segmenter(model, {}, device="cpu")
    demo = build_demo(seg, download_root=tmp_path)
    demo.segeig_downloads.cleanup()
    h = handlers.DemoHandlers(seg, 64, 2, handlers.DownloadArea(tmp_path))
    path = write_image(tmp_path / "k.png", random_image(rng, 32, 32))
    state = _segment(h, [str(path)], method="kmeans")[0]
    assert state["results"][0].labels.max() < 5
    grid, note = h.eigen(state, 0, 4)
    assert grid is None and "no eigenfunction head" in note
    seg_id = int(state["results"][0].labels[0, 0])
    _, text = h.explain(state, 0, 0, seg_id)
    assert "covers" in text and "ψ" not in text
