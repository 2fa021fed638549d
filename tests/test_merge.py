"""Merging segments: profiles, Ward groups, label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segeig.cluster import merge_label_map, merge_segments, segment_profiles


def _brute_profiles(labels, scores, patch):
    ids = np.unique(labels)
    out = []
    for i in ids:
        ys, xs = np.nonzero(labels == i)
        out.append(scores[:, ys // patch, xs // patch].mean(axis=1))
    return ids, np.array(out)


def test_segment_profiles_match_pixelwise_mean(rng):
    patch, height, width = 4, 13, 10  # not multiples of the patch: padded grid
    scores = rng.normal(size=(6, 4, 3))
    labels = rng.integers(0, 6, size=(height, width)) * 3  # sparse ids 0, 3, ... 15
    ids, profiles, sizes = segment_profiles(labels, scores, patch)
    ref_ids, ref = _brute_profiles(labels, scores, patch)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(profiles, ref, rtol=1e-12)
    assert sizes.sum() == height * width
    np.testing.assert_array_equal(sizes, [(labels == i).sum() for i in ids])


def test_segment_profiles_accepts_torch_and_checks_grid(rng):
    scores = torch.randn(3, 2, 2)
    labels = np.zeros((16, 16), np.int32)
    ids, profiles, _ = segment_profiles(labels, scores, 8)
    assert ids.tolist() == [0]
    np.testing.assert_allclose(profiles[0], scores.double().mean((1, 2)).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        segment_profiles(labels, scores, 4)


def test_merge_groups_obvious_clusters():
    # Three tight blobs of profiles far apart: 3 groups must recover them.
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    profiles = np.repeat(centres, [3, 2, 4], axis=0) + np.linspace(0, 0.1, 9)[:, None]
    groups = merge_segments(profiles, 3)
    assert groups.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert merge_segments(profiles, 1).tolist() == [0] * 9
    assert merge_segments(profiles, 20).tolist() == list(range(9))


def test_merge_cuts_are_nested(rng):
    profiles = rng.normal(size=(15, 5))
    previous = merge_segments(profiles, 15)
    for n in range(14, 0, -1):
        groups = merge_segments(profiles, n)
        assert len(np.unique(groups)) == n
        # every finer group falls inside exactly one coarser group
        for g in np.unique(previous):
            assert len(np.unique(groups[previous == g])) == 1
        previous = groups


def test_merge_rejects_bad_input():
    with pytest.raises(ValueError, match=">= 1"):
        merge_segments(np.zeros((3, 2)), 0)
    with pytest.raises(ValueError, match="NaN"):
        merge_segments(np.array([[0.0], [np.nan], [1.0]]), 2)


def test_merge_label_map_keeps_largest_id_and_counts():
    labels = np.array([[5, 5, 5, 7], [5, 9, 9, 7], [2, 2, 9, 7]])
    # 5 and 2 look alike, 9 and 7 look alike
    ids = np.array([2, 5, 7, 9])
    profiles = np.array([[0.0, 0.1], [0.0, 0.0], [5.0, 5.0], [5.1, 5.0]])
    sizes = np.array([(labels == i).sum() for i in ids])
    out = merge_label_map(labels, ids, profiles, sizes, 2)
    expected = np.array([[5, 5, 5, 7], [5, 7, 7, 7], [5, 5, 7, 7]])
    # 9 and 7 both cover 3 pixels: argmax picks the first (7)
    np.testing.assert_array_equal(out.labels, expected)
    assert out.members == {5: [2, 5], 7: [7, 9]}
    same = merge_label_map(labels, ids, profiles, sizes, None)
    np.testing.assert_array_equal(same.labels, labels)
    assert same.members == {2: [2], 5: [5], 7: [7], 9: [9]}
    with pytest.raises(ValueError, match="missing"):
        merge_label_map(labels, ids[1:], profiles[1:], sizes[1:], 2)
