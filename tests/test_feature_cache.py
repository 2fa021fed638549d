"""The feature cache: keys, patch-grid windows, corruption, disk limits, resume, parts."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import segeig.feature_cache.fill as fill_module
from segeig.backbone import Backbone
from segeig.config import WorkingResolution
from segeig.feature_cache import (
    FeatureCacheError,
    View,
    cache_key,
    prepare_feature_cache,
)
from segeig.kernel import pad_to_grid
from segeig.train.cached_crops import CachedCrops, training_views
from segeig.train.launch import train
from segeig.train.state import read_log
from segeig.transforms import to_tensor
from tests.conftest import random_image, tiny_backbone_config
from tests.train_helpers import read_tensors, tiny_config, write_images

VIEWS = (View(1.0), View(0.75), View(1.0, True))


class Images:
    """An in-memory :class:`~segeig.feature_cache.ImageSource`; ``prefix`` leads
    every identity (two sets with different prefixes are different images)."""

    def __init__(self, images: list[np.ndarray], prefix: str = "") -> None:
        self.images, self.prefix = images, prefix

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]

    def size(self, index: int) -> tuple[int, int]:
        return self.images[index].shape[:2]

    def identity(self, index: int) -> str:
        return f"{self.prefix}{index}|{self.images[index].sum()}"


@pytest.fixture
def images() -> Images:
    rng = np.random.default_rng(0)
    return Images([random_image(rng, h, w) for h, w in ((40, 56), (64, 48), (33, 70))])


@pytest.fixture
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(tiny_backbone_config()).eval()


def prepare(root, backbone, images, views=VIEWS, **kwargs):
    return prepare_feature_cache(root, backbone, images, views, WorkingResolution(), **kwargs)


def only_key_dir(root: Path) -> Path:
    (key,) = [p for p in root.iterdir() if p.is_dir()]
    return key


def test_cached_views_are_the_backbone_on_the_rendered_view(tmp_path, backbone, images):
    cache = prepare(tmp_path, backbone, images)
    for i in range(len(images)):
        for v, view in enumerate(VIEWS):
            pixels = to_tensor(view.render(images.image(i)))[None]
            with torch.no_grad():
                expected = backbone(pixels)
            grid = expected.kernel.shape[-2:]
            tokens = torch.from_numpy(np.array(cache.tokens(i, v))).permute(2, 0, 1)[None]
            stacked, kernel, colours = cache.split(tokens.float())
            assert stacked.shape[-2:] == grid
            torch.testing.assert_close(stacked, expected.stacked, atol=2e-2, rtol=1e-2)
            torch.testing.assert_close(kernel, expected.kernel, atol=2e-2, rtol=1e-2)
            small = F.interpolate(pad_to_grid(pixels, grid, 16, backbone.mean), size=grid,
                                  mode="bilinear", align_corners=False)
            torch.testing.assert_close(colours, small, atol=1e-3, rtol=0)


def test_windows_are_patch_aligned_and_padded_past_the_view(tmp_path, backbone, images):
    cache = prepare(tmp_path, backbone, images)
    # Image 1 at scale 1 is 64×48 px: a 4×3 grid, every patch whole.
    full = np.array(cache.tokens(1, 0))
    window, fraction = cache.window(1, 0, 1, 1, (2, 2))
    assert np.array_equal(window, full[1:3, 1:3]) and (fraction == 1).all()
    # Past the edge: zeros, and no real pixels.
    window, fraction = cache.window(1, 0, 3, 2, (2, 2))
    assert np.array_equal(window[0, 0], full[3, 2])
    assert not window[1:].any() and not window[:, 1:].any()
    assert fraction[0, 0] == 1 and fraction[1:].sum() == 0 and fraction[:, 1:].sum() == 0
    # Image 0 is 40×56 px: its last row of patches holds 8 of 16 pixel rows.
    _, fraction = cache.window(0, 0, 0, 0, (3, 4))
    assert np.allclose(fraction[2], [0.5, 0.5, 0.5, 0.5 * 0.5])

    # A training crop: a window at whole-patch offsets of one cached view, drawn
    # from its seed alone; 48 px crops are 3×3 patches.
    crops = CachedCrops(cache, crop=48, min_valid=0.5)
    for seed in range(20):
        tokens, valid = crops[(1, seed)]
        assert tokens.shape == (cache.channels, 3, 3) and valid.shape == (3, 3)
        again, _ = crops[(1, seed)]
        assert torch.equal(tokens, again)
        found = False
        for v in range(len(VIEWS)):
            grid = np.array(cache.tokens(1, v))
            h, w = grid.shape[:2]
            for top in range(max(h - 3, 0) + 1):
                for left in range(max(w - 3, 0) + 1):
                    expected, _ = cache.window(1, v, top, left, (3, 3))
                    found |= np.array_equal(tokens.permute(1, 2, 0).numpy(), expected)
        assert found, f"seed {seed}: not a patch-aligned window of a cached view"


def test_every_key_change_gives_another_cache(backbone):
    base = cache_key(backbone, WorkingResolution(320, 640), VIEWS)[0]
    torch.manual_seed(1)
    other_weights = Backbone(tiny_backbone_config()).eval()
    keys_backbone = Backbone(tiny_backbone_config(kernel_features="keys")).eval()
    keys_backbone.load_state_dict(backbone.state_dict())
    variants = {
        "weights": cache_key(other_weights, WorkingResolution(320, 640), VIEWS)[0],
        "kernel features": cache_key(keys_backbone, WorkingResolution(320, 640), VIEWS)[0],
        "resolution": cache_key(backbone, WorkingResolution(384, 768), VIEWS)[0],
        "long side": cache_key(backbone, WorkingResolution(320, 480), VIEWS)[0],
        "views": cache_key(backbone, WorkingResolution(320, 640), VIEWS[:2])[0],
        "flip": cache_key(backbone, WorkingResolution(320, 640), (View(1.0),))[0],
        "extra": cache_key(backbone, WorkingResolution(320, 640), VIEWS, {"p": "stego"})[0],
    }
    backbone.layer_indices = (0, 1, 3)
    variants["layers"] = cache_key(backbone, WorkingResolution(320, 640), VIEWS)[0]
    assert base == cache_key(backbone.__class__(backbone.config, backbone.vit),
                             WorkingResolution(320, 640), VIEWS)[0]
    assert len({base, *variants.values()}) == len(variants) + 1, variants


def test_changed_images_are_recomputed(tmp_path, backbone, images):
    first = prepare(tmp_path, backbone, images)
    before = np.array(first.tokens(2, 0))
    images.images[2] = 255 - images.images[2]
    second = prepare(tmp_path, backbone, images)
    # The image set is part of the key: a changed image is another set, another directory.
    assert second.directory != first.directory
    assert not np.array_equal(before, np.array(second.tokens(2, 0)))


def test_a_corrupted_file_is_detected_and_rebuilt(tmp_path, backbone, images, caplog):
    cache = prepare(tmp_path, backbone, images)
    good = {key: np.array(cache.tokens(*key)) for key in cache.entries}
    data = only_key_dir(tmp_path) / "part-0-of-1.bin"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: same size, wrong checksum
    data.write_bytes(bytes(raw))
    caplog.set_level("INFO", logger="segeig.feature_cache")
    rebuilt = prepare(tmp_path, backbone, images)
    assert "checksum mismatch" in caplog.text and "filling" in caplog.text
    for key, tokens in good.items():
        assert np.array_equal(np.array(rebuilt.tokens(*key)), tokens)
    # A truncated file and a damaged index are caught the same way.
    data.write_bytes(data.read_bytes()[:-10])
    caplog.clear()
    prepare(tmp_path, backbone, images)
    assert "bytes, the index says" in caplog.text
    (data.parent / "part-0-of-1.json").write_text("{not json")
    caplog.clear()
    prepare(tmp_path, backbone, images)
    assert "part 0 of 1 is damaged (damaged index" in caplog.text


def test_not_enough_disk_is_refused_before_computing(tmp_path, backbone, images, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(fill_module.shutil, "disk_usage", lambda path: Usage)
    monkeypatch.setattr(fill_module, "_fill_part", lambda *a, **k: pytest.fail("filled"))
    with pytest.raises(FeatureCacheError, match="not enough disk.*--no-feature-cache"):
        prepare(tmp_path, backbone, images)
    with pytest.raises(FeatureCacheError, match="over its bound"):
        prepare(tmp_path, backbone, images, max_bytes=10)


def test_a_disk_filling_up_mid_write_is_a_clear_error(tmp_path, backbone, images, monkeypatch):
    real = fill_module.atomic_write

    class Full:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.handle.write(data)

    monkeypatch.setattr(fill_module, "atomic_write",
                        lambda path, write: real(path, lambda f: write(Full(f))))
    with pytest.raises(FeatureCacheError, match="filled up while writing"):
        prepare(tmp_path, backbone, images)
    left = [p.name for p in only_key_dir(tmp_path).iterdir()]
    assert left == ["key.json"], left  # no partial data, no temp file


def test_parts_of_a_multi_process_fill_are_read_by_any_run(tmp_path, backbone, images,
                                                           monkeypatch):
    # Two ranks as two threads sharing a barrier, as torch.distributed's.
    barrier = threading.Barrier(2, timeout=60)
    parts: dict[int, object] = {}

    def rank(r: int) -> None:
        parts[r] = prepare(tmp_path, backbone, images, rank=r, world_size=2,
                           barrier=barrier.wait)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(parts) == [0, 1]
    names = sorted(p.name for p in only_key_dir(tmp_path).iterdir())
    assert names == ["key.json", "part-0-of-2.bin", "part-0-of-2.json", "part-1-of-2.bin",
                     "part-1-of-2.json"]
    assert {e.part for e in parts[1].entries.values()} == {0, 1}
    # A single-process run reuses the complete two-part set without computing.
    monkeypatch.setattr(fill_module, "_fill_part", lambda *a, **k: pytest.fail("filled"))
    single = prepare(tmp_path, backbone, images)
    for key in single.entries:
        assert np.array_equal(np.array(single.tokens(*key)), np.array(parts[0].tokens(*key)))
    assert prepare(tmp_path / "none", backbone, images, fill=False) is None


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    write_images(root, [(48, 72), (64, 64), (80, 56), (40, 96)])
    return root


def test_training_views_follow_the_scale_range():
    def scales(**changes):
        return [(v.scale, v.flip) for v in training_views(tiny_config("x", **changes))]

    assert scales(scale=(0.5, 2.0)) == [(1.0, False), (0.75, False), (1.5, False)]
    assert scales(scale=(1.0, 2.0)) == [(1.0, False), (1.5, False)]
    assert scales(scale=(1.0, 1.0)) == [(1.0, False)]
    assert scales(scale=(0.5, 2.0), cache_scales=(0.5,), cache_flips=True) == [
        (1.0, False), (0.5, False), (1.0, True), (0.5, True)]
    assert scales(scale=(0.5, 2.0), cache_flips=True, hflip=False)[-1] == (1.5, False)


def test_cached_runs_are_reproducible_and_resume_from_the_same_cache(folder, tmp_path):
    config = tiny_config(folder, epochs=2, save_every=1)
    a = train(config, tmp_path / "a")
    b = train(config, tmp_path / "b", overwrite=True)
    ta, tb = read_tensors(a), read_tensors(b)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta), "two cached runs differ"

    class StopError(Exception):
        pass

    def stop_at(step, total, info):
        if info["phase"] == "train" and step == 3:
            raise StopError

    with pytest.raises(StopError):
        train(config, tmp_path / "c", progress=stop_at)
    data = next((tmp_path / "c" / "feature_cache").rglob("part-0-of-1.bin"))
    stamp = data.stat().st_mtime_ns
    resumed = train(config, tmp_path / "c", resume=True)
    assert data.stat().st_mtime_ns == stamp  # read again, not refilled
    tc = read_tensors(resumed)
    assert all(torch.equal(ta[k], tc[k]) for k in ta), "resumed run differs"
    events = [r["event"] for r in read_log(tmp_path / "c" / "train_log.jsonl")]
    assert events.count("cache") == 2 and events.count("resume") == 1
    # Switching the cache off changes what is computed: refused on resume.
    with pytest.raises(ValueError, match="feature_cache: True → False"):
        train(tiny_config(folder, epochs=2, save_every=1, feature_cache=False),
              tmp_path / "c", resume=True)


def test_fit_runs_remove_their_default_cache(folder, tmp_path):
    config = tiny_config(folder, epochs=1, checkpoint_every=0)
    train(config, tmp_path / "fit")
    assert not (tmp_path / "fit" / "feature_cache").exists()
    kept = tmp_path / "kept"
    train(tiny_config(folder, epochs=1, checkpoint_every=0, feature_cache_dir=str(kept)),
          tmp_path / "fit2")
    assert list(kept.rglob("part-0-of-1.bin"))
    assert json.loads(next(kept.rglob("key.json")).read_text())["views"]


def test_spectral_dataset_reuses_its_feature_cache(tmp_path, backbone, monkeypatch):
    from segeig.evaluation.protocols import resolve_protocol
    from segeig.evaluation.spectral_dataset import (
        SpectralSetTooLargeError,
        evaluate_spectral_dataset,
    )
    from segeig.model import SegEigModel
    from segeig.predictor import Segmenter
    from tests.test_spectral import load_eval_dataset, write_halves

    root = write_halves(tmp_path / "halves", 6, seed=3)
    dataset = load_eval_dataset(resolve_protocol(None, "custom"), root, "val")
    segmenter = Segmenter(SegEigModel(backbone), device="cpu")
    cache = tmp_path / "cache"
    with pytest.raises(SpectralSetTooLargeError):
        evaluate_spectral_dataset(segmenter, dataset, crf=False, max_tokens=20,
                                  feature_cache=cache)
    assert not cache.exists()  # refused before computing or writing anything
    first = evaluate_spectral_dataset(segmenter, dataset, crf=False, feature_cache=cache)
    assert list(cache.rglob("part-0-of-1.bin"))
    monkeypatch.setattr(backbone, "forward", lambda images: pytest.fail("backbone re-run"))
    again = evaluate_spectral_dataset(segmenter, dataset, crf=False, feature_cache=cache)
    assert again.scores.miou == first.scores.miou
    assert np.array_equal(again.scores.confusion, first.scores.confusion)


def test_filling_with_workers_and_batches_gives_the_same_cache(tmp_path, backbone):
    # Two images of one size, so their views share forward passes.
    rng = np.random.default_rng(1)
    same = Images([random_image(rng, 48, 64) for _ in range(2)] + [random_image(rng, 40, 40)])
    plain = prepare(tmp_path / "a", backbone, same)
    batched = prepare(tmp_path / "b", backbone, same, workers=2, batch_size=3)
    assert plain.entries.keys() == batched.entries.keys()
    for key in plain.entries:
        np.testing.assert_allclose(np.array(batched.tokens(*key), np.float32),
                                   np.array(plain.tokens(*key), np.float32), atol=1e-2)
