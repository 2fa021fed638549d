"""Input expansion (files, folders, globs), output keys, shards."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segeig.batch.inputs import expand_inputs, parse_shard, select_shard, shard_of


def _touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    for rel in ["b.jpg", "a.png", "trip/c.jpg", "trip/deep/d.webp", ".hidden/e.jpg", "z.JPG"]:
        _touch_image(root / rel)
    (root / "notes.txt").write_text("not an image")
    return root


def keys(files) -> list[str]:
    return [f.key for f in files]


def test_folder_is_recursive_sorted_and_filtered(tree):
    files, conflicts = expand_inputs([tree])
    assert conflicts == []
    assert keys(files) == ["a", "b", "trip/c", "trip/deep/d", "z"]
    assert [f.rel.as_posix() for f in files][2] == "trip/c.jpg"
    assert all(f.path.is_file() for f in files)


def test_files_and_globs_and_dedup(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    # The same files through a folder, a glob and an explicit path: each once.
    files, _ = expand_inputs(["photos/trip", "photos/trip/*.jpg", "photos/trip/c.jpg"])
    assert keys(files) == ["c", "deep/d"]
    files, _ = expand_inputs(["photos/**/*.jpg"])
    assert keys(files) == ["b", "trip/c"]  # ** recursive; hidden folder skipped
    # A glob matching folders expands them, relative to the glob's fixed part.
    files, _ = expand_inputs(["photos/tr*"])
    assert keys(files) == ["trip/c", "trip/deep/d"]


def test_explicit_file_is_kept_whatever_its_suffix(tree):
    files, _ = expand_inputs([tree / "notes.txt"])
    assert keys(files) == ["notes"]  # attempted; reading will report it


def test_order_does_not_depend_on_input_order(tree):
    a, _ = expand_inputs([tree / "trip", tree / "b.jpg"])
    b, _ = expand_inputs([tree / "b.jpg", tree / "trip"])
    assert a == b


def test_missing_inputs_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        expand_inputs([tmp_path / "nope"])
    with pytest.raises(FileNotFoundError, match="matches no image"):
        expand_inputs([str(tmp_path / "*.jpg")])
    with pytest.raises(ValueError, match="no inputs"):
        expand_inputs([])


def test_same_stem_keeps_suffixes_and_true_clashes_are_conflicts(tmp_path):
    _touch_image(tmp_path / "x" / "a.jpg")
    _touch_image(tmp_path / "x" / "a.png")
    _touch_image(tmp_path / "y" / "a.jpg")
    files, conflicts = expand_inputs([tmp_path / "x"])
    assert keys(files) == ["a.jpg", "a.png"]
    assert conflicts == []
    files, conflicts = expand_inputs([tmp_path / "x", tmp_path / "y"])
    assert keys(files) == ["a.jpg", "a.png"]
    assert len(conflicts) == 1
    assert "a.jpg" in conflicts[0].reason
    # The first by sorted path wins, whichever order the inputs came in.
    winner = next(f for f in files if f.key == "a.jpg").path
    files2, conflicts2 = expand_inputs([tmp_path / "y", tmp_path / "x"])
    assert next(f for f in files2 if f.key == "a.jpg").path == winner
    assert conflicts2[0].path == conflicts[0].path


def test_symlink_to_same_file_is_deduplicated(tmp_path):
    real = _touch_image(tmp_path / "d" / "a.jpg")
    os.symlink(real, tmp_path / "d" / "link.jpg")
    files, _ = expand_inputs([tmp_path / "d"])
    assert len(files) == 1


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard("3/4") == (3, 4)
    for bad in ["4/4", "-1/4", "1/0", "1", "a/b", "1/2/3"]:
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_shards_partition_the_files(tmp_path):
    for i in range(40):
        _touch_image(tmp_path / "many" / f"img{i:03d}.png")
    files, _ = expand_inputs([tmp_path / "many"])
    for count in (1, 3, 7):
        parts = [select_shard(files, i, count) for i in range(count)]
        flat = [f.key for part in parts for f in part]
        assert sorted(flat) == keys(files)  # union is everything ...
        assert len(flat) == len(set(flat))  # ... with no overlap
    assert all(len(select_shard(files, i, 3)) > 0 for i in range(3))
    # Stable: removing files (or adding them) moves no other file between shards.
    for i in range(3):
        kept = [f for f in select_shard(files, i, 3) if f in files[::2]]
        assert select_shard(files[::2], i, 3) == kept
    assert all(0 <= shard_of(f.key, 3) < 3 for f in files)
    with pytest.raises(ValueError):
        select_shard(files, 3, 3)


def test_output_folder_inside_the_input_is_excluded(tree):
    _touch_image(tree / "seg" / "labels" / "b.png")
    files, _ = expand_inputs([tree], exclude=[tree / "seg"])
    assert keys(files) == ["a", "b", "trip/c", "trip/deep/d", "z"]
    files, _ = expand_inputs([tree])
    assert "seg/labels/b" in keys(files)


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_images_in_order_with_failures(tmp_path, workers):
    from segeig.batch.inputs import decode_images

    good = _touch_image(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    out = list(decode_images([good, bad, tmp_path / "missing.png", good], workers))
    assert [i for i, _, _ in out] == [0, 1, 2, 3]
    assert out[0][1].shape == (4, 4, 3) and out[0][1].dtype == np.uint8 and out[0][2] is None
    assert out[1][1] is None and "not a recognised image" in out[1][2]
    assert out[2][1] is None and "does not exist" in out[2][2]
    assert out[3][1] is not None


def test_excluded_folders_never_hide_files_named_explicitly(tree, caplog):
    """Regression: ``--out .`` above the input excluded even the files named on the line."""
    named = tree / "b.jpg"
    files, _ = expand_inputs([named], exclude=[tree])
    assert keys(files) == ["b"]
    with caplog.at_level("WARNING", logger="segeig.batch.inputs"):
        files, _ = expand_inputs([tree], exclude=[tree / "trip"])
    assert "trip/c" not in keys(files) and "b" in keys(files)
    assert "not segmenting 2 image(s) under" in caplog.text and "trip" in caplog.text
