"""Issue 22, files inside output and cache folders: the manifest (findings 1, 2, 4) and
the feature-cache index and key (findings 5, 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segeig
import segeig.feature_cache.fill as fill_module
from segeig.backbone import Backbone
from segeig.batch.inputs import expand_inputs
from segeig.batch.manifest import read_manifest
from segeig.batch.options import SegmentOptions
from segeig.batch.run import segment_inputs
from segeig.checkpoint import save_checkpoint
from segeig.cli import main
from segeig.config import HeadConfig, WorkingResolution
from segeig.feature_cache import FeatureCacheError, View, prepare_feature_cache
from segeig.model import build_model
from segeig.train.launch import train
from tests.conftest import random_image, tiny_backbone_config
from tests.test_feature_cache import Images
from tests.train_helpers import tiny_config, write_images

K = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=K))
    model.set_centroids("eigen+kmeans", torch.randn(5, model.head.hidden_dim))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), model)


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return segeig.load(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(random_image(rng, 32, 48)).save(root / f"{name}.png")
    return root


# -- the manifest -----------------------------------------------------------------------

def test_a_symlinked_manifest_is_never_written_through(checkpoint, photos, tmp_path, capsys):
    """Finding 1: ``o/manifest.jsonl -> ../outside.txt`` got the producer and key lines."""
    out = tmp_path / "o"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("someone else's file\n")
    (out / "manifest.jsonl").symlink_to("../outside.txt")
    code = main(["-q", "segment", str(photos), "--out", str(out), "--checkpoint",
                 str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "symbolic link" in err and "manifest.jsonl" in err, err
    assert outside.read_text() == "someone else's file\n"
    assert not (out / "labels").exists()  # refused before any work


def test_a_manifest_cut_mid_line_loses_no_record(segmenter, checkpoint, photos, tmp_path):
    """Finding 2: after a crash mid-line the next run's producer record was glued to the
    partial line and dropped; its outputs then looked "made before manifests", and with
    summary.json gone a run with another method skipped them as done."""
    files, _ = expand_inputs([photos])
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"producer": "0123456789abcdef", "checkp')
    segment_inputs(segmenter, files, out, SegmentOptions(method="eigen"),
                   checkpoint=checkpoint)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert lines[0] == '{"producer": "0123456789abcdef", "checkp'  # left alone
    assert json.loads(lines[1])["settings"]["method"] == "eigen"  # on a line of its own
    (out / "summary.json").unlink()
    with pytest.raises(ValueError, match="same checkpoint with other settings.*method"):
        segment_inputs(segmenter, files, out, SegmentOptions(method="eigen+kmeans"),
                       checkpoint=checkpoint)


def test_keys_whose_producer_record_is_lost_count_as_foreign(segmenter, checkpoint, photos,
                                                             tmp_path, caplog):
    files, _ = expand_inputs([photos])
    out = tmp_path / "out"
    segment_inputs(segmenter, files, out, SegmentOptions(method="eigen"),
                   checkpoint=checkpoint)
    manifest = out / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(b'{"producer": 3}\n' + b"".join(lines[1:]))  # its record is damaged
    (out / "summary.json").unlink()
    assert read_manifest(out).owner("a").checkpoint["sha256"] == "?"
    with pytest.raises(ValueError, match="3 input.*unknown: its record in the manifest"):
        segment_inputs(segmenter, files, out, SegmentOptions(method="eigen+kmeans"),
                       checkpoint=checkpoint)
    assert "manifest.jsonl line 1" in caplog.text


def test_an_undecodable_manifest_line_is_skipped_with_a_warning(segmenter, checkpoint, photos,
                                                                tmp_path, caplog):
    """Finding 4: one 0xff byte stopped every later run ("'utf-8' codec can't decode")."""
    files, _ = expand_inputs([photos])
    out = tmp_path / "out"
    segment_inputs(segmenter, files, out, checkpoint=checkpoint)
    with open(out / "manifest.jsonl", "ab") as handle:
        handle.write(b'{"key": "a", "producer": "\xff\xfe", "t": 1}\n[1, 2]\n')
    count = len((out / "manifest.jsonl").read_bytes().splitlines())
    again = segment_inputs(segmenter, files, out, checkpoint=checkpoint)
    assert again.skipped == 3 and again.failed == 0
    assert f"manifest.jsonl line {count - 1}: skipping a line" in caplog.text
    assert "not UTF-8" in caplog.text
    assert f"manifest.jsonl line {count}: skipping" in caplog.text


# -- the feature cache ------------------------------------------------------------------

def _images(seed: int, prefix: str) -> Images:
    rng = np.random.default_rng(seed)
    return Images([random_image(rng, h, w) for h, w in ((40, 56), (64, 48), (33, 70))],
                  f"{prefix}-")


@pytest.fixture
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(tiny_backbone_config()).eval()


def _prepare(root, backbone, images):
    return prepare_feature_cache(root, backbone, images, (View(1.0), View(0.5)),
                                 WorkingResolution())


def _all_tokens(cache) -> dict:
    return {key: np.array(cache.tokens(*key)) for key in cache.entries}


def _edit_index(directory: Path, edit) -> None:
    path = directory / "part-0-of-1.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _past_the_end(meta):
    meta["entries"][-1][2] = meta["tokens"] + 10  # outside the data file...
    meta["entries"][-1][7] = 0  # ...with the CRC of an empty slice
    return meta


@pytest.mark.parametrize("edit", [
    lambda meta: {**meta, "tokens": "12x"},
    lambda meta: [meta],
    _past_the_end,
    lambda meta: {**meta, "entries": [[*e[:3], 0, *e[4:]] for e in meta["entries"]]},
], ids=["wrong-type", "a-list", "past-the-end-crc-0", "empty-slices"])
def test_a_malformed_index_is_rebuilt_with_a_warning(tmp_path, backbone, caplog, edit):
    """Finding 5: "invalid literal for int()", an AttributeError, or a cache reused with
    an entry past the end of its data file (training died with "cannot reshape")."""
    images = _images(0, "x")
    cache = _prepare(tmp_path, backbone, images)
    good = _all_tokens(cache)
    _edit_index(cache.directory, edit)
    rebuilt = _prepare(tmp_path, backbone, images)
    assert "is damaged (damaged index" in caplog.text and "rebuilt" in caplog.text
    tokens = _all_tokens(rebuilt)
    assert tokens.keys() == good.keys()
    assert all(np.array_equal(tokens[k], good[k]) for k in good)


def test_something_else_in_place_of_a_cache_file_is_refused(tmp_path, backbone):
    cache = _prepare(tmp_path, backbone, _images(0, "x"))
    index = cache.directory / "part-0-of-1.json"
    index.unlink()
    index.mkdir()
    with pytest.raises(FeatureCacheError, match=f"delete the directory {cache.directory}"):
        _prepare(tmp_path, backbone, _images(0, "x"))


def test_training_finishes_over_a_broken_index(tmp_path, caplog):
    """Finding 5, end to end: the index pointing past its data file is rebuilt and
    training runs to the end."""
    photos = tmp_path / "photos"
    write_images(photos, [(48, 72), (64, 64)])
    cache = tmp_path / "cache"
    config = tiny_config(photos, epochs=1, checkpoint_every=0, feature_cache_dir=str(cache))
    train(config, tmp_path / "one")
    (index,) = cache.rglob("part-0-of-1.json")
    _edit_index(index.parent, _past_the_end)
    assert train(config, tmp_path / "two").is_file()
    assert "damaged index" in caplog.text


def test_two_image_sets_share_a_cache_root_without_rebuilding(tmp_path, backbone, monkeypatch):
    """Finding 8: two sets in one --feature-cache DIR rebuilt each other's part every run."""
    first, second = _images(0, "trip"), _images(1, "garden")
    a = _prepare(tmp_path, backbone, first)
    b = _prepare(tmp_path, backbone, second)
    assert a.directory != b.directory
    monkeypatch.setattr(fill_module, "_fill_part", lambda *a, **k: pytest.fail("refilled"))
    again_a, again_b = _prepare(tmp_path, backbone, first), _prepare(tmp_path, backbone, second)
    assert again_a.directory == a.directory and again_b.directory == b.directory
    assert all(np.array_equal(again_a.tokens(*k), a.tokens(*k)) for k in a.entries)
