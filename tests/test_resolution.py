"""One working resolution: recorded by training, used by every later step, derived
for old checkpoints, overridable at inference; and the paper-faithful presets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_image

from segeig.checkpoint import checkpoint_resolution, read_config, save_checkpoint
from segeig.cli import main
from segeig.cluster import centroid_score_maps, fit_kmeans, mean_squared_distance
from segeig.config import WorkingResolution
from segeig.data.base import Sample
from segeig.evaluation.protocols import prepare, resolve_protocol
from segeig.kernel import pad_to_grid, pixel_points
from segeig.labelmaps import read_segments
from segeig.predictor import Segmenter, load
from segeig.train import default_config
from segeig.train.augment import train_transform
from segeig.train.loader import CenterViews


# -- the value itself --------------------------------------------------------------
def test_working_size_keeps_aspect_and_caps_the_long_side():
    r = WorkingResolution(320, 640)
    assert r.size_for(3000, 4000) == (320, 427)
    assert r.size_for(750, 1000) == (320, 427)
    assert r.size_for(100, 1000) == (64, 640)  # a panorama is capped by its long side
    assert r.size_for(160, 120) == (427, 320)  # small images are enlarged
    assert WorkingResolution().size_for(37, 91) == (37, 91)
    with pytest.raises(ValueError, match="short"):
        WorkingResolution(-1, 0)


def test_checkpoint_resolution_is_recorded_or_derived():
    assert checkpoint_resolution({"resolution": {"short": 448, "max_long": 900}}) == \
        WorkingResolution(448, 900)
    # Before 0.2: derived from the training pre-resize, else the image's own size.
    assert checkpoint_resolution({"training": {"resize_short": 384}}) == WorkingResolution(384, 768)
    assert checkpoint_resolution({"training": {"resize_short": None}}) == WorkingResolution()
    assert checkpoint_resolution({}) == WorkingResolution()
    with pytest.raises(ValueError, match="working resolution"):
        checkpoint_resolution({"resolution": {"short": "big", "max_long": 1}})


# -- inference at the working resolution ----------------------------------------------
@pytest.fixture
def seg(tiny_model):
    return Segmenter(tiny_model, {}, device="cpu", resolution=WorkingResolution(64, 128))


def test_predict_runs_at_the_working_resolution_and_answers_at_the_input_size(seg, rng):
    image = random_image(rng, 48, 80)
    labels = seg.predict(image)
    assert labels.shape == (48, 80)
    # The same as predicting the 64×107 copy the head sees, sampled back at 48×80.
    work = seg.working_image(image)
    assert work.shape[:2] == (64, 107)
    scores = seg.patch_scores(work)
    expected = seg.labels_from_scores(image, scores, in_size=work.shape[:2])
    np.testing.assert_array_equal(labels, expected)
    # resolution=0 is the old behaviour: the image at its own size.
    own = seg.predict(image, resolution=0)
    np.testing.assert_array_equal(own, seg.labels_from_scores(image, seg.patch_scores(image)))


def test_an_upscaled_copy_gets_the_same_segments(seg, rng):
    image = cv2.GaussianBlur(random_image(rng, 64, 96), (0, 0), 3)
    big = cv2.resize(image, (192, 128), interpolation=cv2.INTER_LINEAR)
    small_labels = seg.predict(image)
    big_labels = seg.predict(big)
    # Both reach the head as the same 64×96 image (up to resampling).
    assert (big_labels[::2, ::2] == small_labels).mean() > 0.9


def test_resolution_override_scales_the_cap_in_proportion(seg):
    assert seg.working_resolution(100) == WorkingResolution(100, 200)
    assert seg.working_resolution(0) == WorkingResolution()
    with pytest.raises(ValueError):
        seg.working_resolution(-5)


def test_probabilities_and_scores_come_back_at_the_input_size(seg, rng):
    image = random_image(rng, 40, 50)
    probs = seg.predict_proba(image, method="eigen")
    assert probs.shape == (seg.num_segments("eigen"), 40, 50)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert seg.eigenfunctions(image).shape[1:] == (4, 5)  # 64×80 at patch 16


def test_checkpoint_records_and_reloads_its_resolution(tiny_model, tmp_path, rng):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model,
                           extra={"resolution": {"short": 96, "max_long": 160}})
    loaded = load(path, device="cpu")
    assert loaded.resolution == WorkingResolution(96, 160)
    assert main(["info", str(path)]) == 0


def test_segment_cli_uses_and_overrides_the_working_resolution(tiny_model, tmp_path, rng,
                                                               capsys):
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model,
                           extra={"resolution": {"short": 64, "max_long": 128}})
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), random_image(rng, 200, 300))
    assert main(["info", str(path)]) == 0
    assert "working resolution: short side 64 px (long side ≤ 128 px)" in capsys.readouterr().out
    for flag, expected in (([], 64), (["--resolution", "0"], 0)):
        out = tmp_path / f"out{expected}"
        assert main(["-q", "segment", str(folder), "--out", str(out), "--checkpoint",
                     str(path), "--workers", "0", *flag]) == 0
        summary = (out / "summary.json").read_text()
        assert f'"short": {expected}' in summary
        labels = read_segments(out / "labels" / "a.png")
        assert labels.shape == (200, 300)
    assert main(["segment", str(folder), "--out", str(tmp_path / "bad"), "--checkpoint",
                 str(path), "--resolution", "-1"]) != 0
    assert "--resolution must be between 0 and 16384" in capsys.readouterr().err


def test_native_protocol_predicts_at_the_working_resolution_scores_at_the_original(rng):
    image, label = random_image(rng, 90, 120), np.zeros((90, 120), np.uint8)
    sample = Sample(image=image, label=label, name="x", path=None)
    native = resolve_protocol("native", "custom")
    prepared = prepare(sample, native, WorkingResolution(60, 120))
    assert prepared.image.shape[:2] == (60, 80) and prepared.out_size == (90, 120)
    assert prepare(sample, native, WorkingResolution()).image.shape[:2] == (90, 120)
    full = resolve_protocol("full", "pascal_context")
    assert prepare(sample, full, WorkingResolution(100, 200)).image.shape[:2] == (100, 133)
    assert prepare(sample, full, None).image.shape[:2] == (520, 693)  # the protocol's own 520


# -- training at the working resolution ----------------------------------------------
def test_presets_are_the_papers_reference_settings():
    for name, short in (("pascal_context", 520), ("ade20k", 512), ("cityscapes", 1024)):
        config = default_config(name)
        assert config.working_resolution == WorkingResolution(short, 2 * short)
        assert config.scale == (0.5, 2.0) and config.batch_size == 16
        assert config.kmeans_k is None and config.kmeans_metric == "euclidean"
    assert default_config("pascal_context").head.k == 256
    assert default_config("ade20k").head.k == 512
    assert (default_config("pascal_context").crop, default_config("ade20k").crop) == (480, 512)
    assert (default_config("pascal_context").epochs, default_config("ade20k").epochs) == (40, 20)
    # Class-count k-means stays available, and the old keyword still works.
    assert default_config("pascal_context", kmeans_k=60).kmeans_k == 60
    assert default_config("custom", resize_short=0).working_resolution == WorkingResolution()


def test_training_crops_are_padded_with_the_mean_colour():
    mean = (124, 116, 104)
    transform = train_transform(64, scale=(1.0, 1.0), hflip=False, photometric=False, seed=0,
                                fill=mean)
    image = np.full((20, 30, 3), 7, np.uint8)
    crop, mask = transform(image, np.zeros((20, 30), np.uint8))
    padded = mask == 255
    assert padded.sum() == 64 * 64 - 20 * 30
    assert (crop[padded] == np.array(mean, np.uint8)).all()
    assert (crop[~padded] == 7).all()


class _Images:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return Sample(image=self.images[i], label=None, name=str(i), path=None)


def test_centroid_views_are_taken_at_the_working_resolution(rng):
    images = _Images([random_image(rng, 100, 300), random_image(rng, 50, 40)])
    views = CenterViews(images, crop=48, resolution=WorkingResolution(32, 64))
    # Short side 32 (the 100×300 one hits the 64 px long-side cap: 21×64 → 32 px short).
    assert views.size == 32 and all(tuple(views[i].shape) == (3, 32, 32) for i in range(2))
    assert tuple(CenterViews(images, crop=48)[0].shape) == (3, 48, 48)  # no resolution: crop


# -- k-means as the reference code ---------------------------------------------------
def test_euclidean_kmeans_separates_blobs_cosine_cannot():
    gen = torch.Generator().manual_seed(0)
    # Two blobs on the same ray: the same direction, different norms.
    a = torch.tensor([1.0, 1.0]) + 0.05 * torch.randn(200, 2, generator=gen)
    b = torch.tensor([4.0, 4.0]) + 0.05 * torch.randn(200, 2, generator=gen)
    tokens = torch.cat([a, b])
    centroids = fit_kmeans(tokens, 2, metric="euclidean", seed=0)
    assert sorted(round(float(c[0])) for c in centroids) == [1, 4]
    spread = mean_squared_distance(tokens, centroids)
    assert 0 < spread < 0.02
    maps = tokens.T.reshape(1, 2, 20, 20)
    labels = centroid_score_maps(maps, centroids, "euclidean", spread).argmax(1).flatten()
    assert len(set(labels[:200].tolist())) == 1 and labels[0] != labels[-1]
    cosine = fit_kmeans(tokens, 2, metric="cosine", seed=0)
    sims = centroid_score_maps(maps, cosine, "cosine").argmax(1).flatten()
    # Same direction: cosine cannot tell the blobs apart (mixed labels in each).
    assert (sims[:200] == sims[0]).all() == (sims[200:] == sims[0]).all()


def test_centroid_metric_round_trips_through_the_checkpoint(tiny_model, tmp_path):
    d = tiny_model.backbone.embed_dim
    tiny_model.set_centroids("kmeans", torch.randn(5, d), "euclidean", 3.5)
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model)
    assert read_config(path)["centroid_metrics"]["kmeans"] == {"metric": "euclidean",
                                                               "spread": 3.5}
    assert load(path, device="cpu").model.centroid_metrics["kmeans"] == ("euclidean", 3.5)
    with pytest.raises(ValueError, match="metric"):
        tiny_model.set_centroids("kmeans", torch.randn(5, d), "manhattan")


# -- the pixel graph on the padded patch grid ------------------------------------------
def test_pixel_graph_reads_colours_on_the_padded_patch_grid():
    # A patch-14 backbone (all of DINOv2) at a 200×150 crop: 15×11 patches cover
    # 210×154 pixels, the last row/column partly padding.
    patch, grid, mean = 14, (15, 11), (0.485, 0.456, 0.406)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 200, 150, generator=gen)
    # Reference: pad the image by hand as the backbone does, then sample each patch.
    padded = torch.empty(1, 3, 210, 154)
    padded[:] = torch.tensor(mean).view(1, 3, 1, 1)
    padded[..., :200, :150] = images
    ref = F.interpolate(padded, size=grid, mode="bilinear", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(1, -1, 3)
    points = pixel_points(images, grid, 2.0, patch=patch, pad_colour=mean)
    torch.testing.assert_close(points[..., :3], ref)
    torch.testing.assert_close(pad_to_grid(images, grid, patch, mean), padded)
    # Stretching the unpadded crop over the grid (the old way) reads other colours.
    stretched = pixel_points(images, grid, 2.0)
    assert (stretched[..., :3] - ref).abs().max() > 0.1
