"""Tests for segeig.evaluation.metrics: confusion accumulation, matching and scores."""

from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest

from segeig.config import IGNORE_INDEX
from segeig.evaluation.metrics import (
    ConfusionAccumulator,
    class_confusion,
    evaluate_confusion,
    hungarian_match,
    majority_match,
    scores,
)

# Hand-made example: 3 clusters x 2 classes.
#   rows = clusters, cols = gt classes
#   c0: [5, 1]   c1: [0, 3]   c2: [2, 0]      class totals: [7, 4], 11 px
HAND_CONF = np.array([[5, 1], [0, 3], [2, 0]], dtype=np.int64)


def test_hungarian_hand_example():
    # One-to-one options: (c0->0, c1->1)=8, (c2->0, c1->1)=5, (c0->1, c2->0)=3, ...
    # best is c0->0, c1->1 and c2 is left unmatched (-1).
    mapping = hungarian_match(HAND_CONF)
    assert mapping.tolist() == [0, 1, -1]
    cc = class_confusion(HAND_CONF, mapping)
    # rows gt, cols pred 0, pred 1, unmatched:
    #   gt0: c0 gives 5 as class 0, c2's 2 px are unmatched
    #   gt1: c0 gives 1 as class 0, c1 gives 3 as class 1
    assert cc.tolist() == [[5, 0, 2], [1, 3, 0]]
    s = scores(cc)
    # IoU0 = TP 5 / (gt 7 + pred 6 - 5) = 5/8 ; IoU1 = 3 / (4 + 3 - 3) = 3/4
    assert s["per_class_iou"] == pytest.approx([62.5, 75.0])
    assert s["miou"] == pytest.approx(68.75)
    # correct = 5 + 3 out of 11 valid pixels
    assert s["pixel_acc"] == pytest.approx(800 / 11)


def test_majority_hand_example():
    # Cluster/class IoU = n / (cluster total + class total - n):
    #   c0 (6 px): class0 5/(6+7-5)=5/8, class1 1/(6+4-1)=1/9   -> 0
    #   c1 (3 px): class0 0,             class1 3/(3+4-3)=3/4   -> 1
    #   c2 (2 px): class0 2/(2+7-2)=2/7, class1 0               -> 0
    mapping = majority_match(HAND_CONF)
    assert mapping.tolist() == [0, 1, 0]
    s = evaluate_confusion(HAND_CONF, "majority")
    # class conf gt0: [7, 0], gt1: [1, 3] -> IoU0 = 7/(7+8-7) = 7/8, IoU1 = 3/4
    assert s["per_class_iou"] == pytest.approx([87.5, 75.0])
    assert s["miou"] == pytest.approx(81.25)
    assert s["pixel_acc"] == pytest.approx(1000 / 11)
    assert s["mapping"] == [0, 1, 0]
    json.dumps(s)  # results must be serialisable as-is


def test_majority_uses_iou_not_counts():
    # c1 holds 3 px of class 0 (total 100) and 2 px of class 1 (total 2):
    # by count it would go to class 0, by IoU 3/(5+100-3) < 2/(5+2-2) it goes to 1.
    conf = np.array([[97, 0], [3, 2]])
    assert majority_match(conf).tolist() == [0, 1]


def test_majority_empty_cluster_unmatched():
    conf = np.array([[4, 0], [0, 0], [0, 2]])
    assert majority_match(conf).tolist() == [0, -1, 1]


def _random_pair(rng, shape, n_clusters, n_classes, ignore_frac=0.1):
    gt = rng.integers(0, n_classes, size=shape).astype(np.uint8)
    gt[rng.random(shape) < ignore_frac] = IGNORE_INDEX
    pred = rng.integers(0, n_clusters, size=shape)
    return pred, gt


@pytest.mark.parametrize("match", ["hungarian", "majority"])
def test_ground_truth_as_prediction_scores_100(match):
    rng = np.random.default_rng(0)
    n_classes, n_clusters = 5, 7
    perm = rng.permutation(n_clusters)  # class k is predicted as cluster perm[k]
    acc = ConfusionAccumulator(n_clusters, n_classes)
    for _ in range(3):
        _, gt = _random_pair(rng, (20, 30), n_clusters, n_classes)
        pred = np.where(gt == IGNORE_INDEX, rng.integers(0, n_clusters), perm[gt % n_classes])
        acc.update(pred, gt)
    s = evaluate_confusion(acc.matrix, match)
    assert s["miou"] == 100.0
    assert s["pixel_acc"] == 100.0
    assert s["per_class_iou"] == [100.0] * n_classes


def test_ignore_index_respected():
    acc = ConfusionAccumulator(3, 2)
    gt = np.array([[0, 1, 255], [255, 255, 1]], dtype=np.uint8)
    pred = np.array([[2, 1, 0], [0, 0, 1]])
    acc.update(pred, gt)
    assert acc.matrix.sum() == 3
    assert acc.matrix.tolist() == [[0, 0], [0, 2], [1, 0]]
    # Prediction values at ignored pixels are never inspected.
    acc.update(np.array([[999, -5]]), np.array([[255, 255]], dtype=np.uint8))
    assert acc.matrix.sum() == 3


def test_update_errors():
    acc = ConfusionAccumulator(4, 3)
    with pytest.raises(ValueError, match="ground-truth value 7"):
        acc.update(np.zeros((2, 2), int), np.array([[0, 7], [1, 255]], dtype=np.uint8))
    with pytest.raises(ValueError, match="cluster id 4"):
        acc.update(np.array([[0, 4]]), np.array([[0, 1]], dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((2, 2), int), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="integer"):
        acc.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    assert acc.matrix.sum() == 0  # failed updates leave no trace


def test_merge_equals_single_accumulator():
    rng = np.random.default_rng(1)
    pairs = [_random_pair(rng, (8, 9), 6, 4) for _ in range(4)]
    whole = ConfusionAccumulator(6, 4)
    a, b = ConfusionAccumulator(6, 4), ConfusionAccumulator(6, 4)
    for i, (p, g) in enumerate(pairs):
        whole.update(p, g)
        (a if i % 2 else b).update(p, g)
    assert np.array_equal(a.merge(b).matrix, whole.matrix)
    with pytest.raises(ValueError):
        a.merge(ConfusionAccumulator(5, 4))


def test_accumulator_matches_naive_counts():
    rng = np.random.default_rng(2)
    pred, gt = _random_pair(rng, (17, 13), 5, 4)
    acc = ConfusionAccumulator(5, 4)
    acc.update(pred, gt)
    naive = np.zeros((5, 4), np.int64)
    for p, g in zip(pred.ravel(), gt.ravel(), strict=True):
        if g != IGNORE_INDEX:
            naive[p, g] += 1
    assert np.array_equal(acc.matrix, naive)


@pytest.mark.parametrize("match", ["hungarian", "majority"])
def test_scores_match_naive_mask_iou(match):
    # Independent route: map predictions pixel-wise, then IoU straight from masks.
    rng = np.random.default_rng(3)
    n_clusters, n_classes = 6, 4
    gt = rng.integers(0, n_classes, size=(40, 40)).astype(np.uint8)
    # Correlate clusters with classes so the mapping is non-trivial.
    pred = np.where(
        rng.random(gt.shape) < 0.6,
        (gt + 1) % n_clusters,
        rng.integers(0, n_clusters, size=gt.shape),
    )
    gt[rng.random(gt.shape) < 0.1] = IGNORE_INDEX
    acc = ConfusionAccumulator(n_clusters, n_classes)
    acc.update(pred, gt)
    s = evaluate_confusion(acc.matrix, match)

    mapped = np.asarray(s["mapping"])[pred]  # -1 where cluster unmatched
    valid = gt != IGNORE_INDEX
    ious = []
    for k in range(n_classes):
        inter = np.sum((mapped == k) & (gt == k) & valid)
        union = np.sum(((mapped == k) | (gt == k)) & valid)
        ious.append(100.0 * inter / union if union else math.nan)
    assert s["per_class_iou"] == pytest.approx(ious, nan_ok=True)
    assert s["miou"] == pytest.approx(np.nanmean(ious))
    acc_naive = 100.0 * np.sum((mapped == gt) & valid) / valid.sum()
    assert s["pixel_acc"] == pytest.approx(acc_naive)


def test_hungarian_matches_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(20):
        conf = rng.integers(0, 50, size=(5, 3))
        best = max(
            sum(conf[c, k] for k, c in enumerate(assign))
            for assign in itertools.permutations(range(5), 3)
        )
        mapping = hungarian_match(conf)
        got = sum(conf[c, mapping[c]] for c in range(5) if mapping[c] >= 0)
        assert got == best
        matched = mapping[mapping >= 0]
        assert sorted(matched.tolist()) == [0, 1, 2]  # one-to-one, all classes


def test_hungarian_unmatched_clusters_count_as_wrong():
    # 2 classes, 3 clusters; cluster 2 is pure class 0 but loses the matching.
    conf = np.array([[10, 0], [0, 10], [5, 0]])
    s = evaluate_confusion(conf, "hungarian")
    assert s["mapping"] == [0, 1, -1]
    # Class 0: TP 10, gt 15 -> IoU 10/15; class 1 perfect.
    assert s["per_class_iou"] == pytest.approx([100 * 10 / 15, 100.0])
    assert s["pixel_acc"] == pytest.approx(100 * 20 / 25)


def test_hungarian_too_few_clusters():
    with pytest.raises(ValueError, match="n_clusters >= n_classes"):
        hungarian_match(np.ones((2, 3)))


def test_absent_class_is_nan_and_excluded():
    # Class 2 never appears in gt nor prediction -> NaN, not counted in mIoU.
    # Class 1 is predicted but absent from gt -> IoU 0, counted.
    cc = np.array([[6, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = scores(cc)
    assert s["per_class_iou"][0] == pytest.approx(75.0)
    assert s["per_class_iou"][1] == 0.0
    assert math.isnan(s["per_class_iou"][2])
    assert s["miou"] == pytest.approx(37.5)
    assert math.isnan(scores(np.zeros((2, 3)))["miou"])


def test_bad_match_name_and_mapping():
    with pytest.raises(ValueError, match="match"):
        evaluate_confusion(HAND_CONF, "greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        class_confusion(HAND_CONF, np.array([0, 2, 0]))


def test_update_is_fast():
    rng = np.random.default_rng(5)
    pred = rng.integers(0, 256, size=(512, 512))
    gt = rng.integers(0, 150, size=(512, 512)).astype(np.uint8)
    gt[:10] = IGNORE_INDEX
    acc = ConfusionAccumulator(256, 150)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        acc.update(pred, gt)
        times.append(time.perf_counter() - t0)
    # Typically a few ms; generous bound because CI cores are shared.
    assert sorted(times)[2] < 0.1


def test_auto_match_resolves_by_shape():
    from segeig.evaluation.metrics import resolve_match

    assert resolve_match("auto", 4, 4) == "hungarian"
    assert resolve_match("auto", 27, 4) == "majority"  # over-clustering
    assert resolve_match("auto", 3, 4) == "majority"  # hungarian would be undefined
    assert resolve_match("hungarian", 27, 4) == "hungarian"
    square = evaluate_confusion(np.diag([5, 6, 7]), "auto")
    assert square["match"] == "hungarian" and square["mapping"] == [0, 1, 2]
    # Two clusters split class 0: majority keeps both, hungarian drops one.
    wide = np.array([[5, 0], [4, 0], [0, 6]])
    assert evaluate_confusion(wide, "auto")["match"] == "majority"
    assert evaluate_confusion(wide, "auto")["pixel_acc"] == pytest.approx(100.0)
    assert evaluate_confusion(wide, "hungarian")["pixel_acc"] < 100.0


def test_per_image_hungarian_matches_present_clusters_to_present_classes():
    from segeig.evaluation.metrics import PerImageHungarian, per_image_hungarian_match

    # 5 clusters, 4 classes; the image shows classes 1 and 3 and uses clusters 0, 2, 4.
    conf = np.zeros((5, 4), np.int64)
    conf[0, 1], conf[2, 3], conf[2, 1], conf[4, 3] = 10, 7, 2, 3
    assert per_image_hungarian_match(conf).tolist() == [1, -1, 3, -1, -1]
    assert per_image_hungarian_match(np.zeros((3, 2), np.int64)).tolist() == [-1, -1, -1]
    # Two images whose clusters swap meaning: per image both are perfect, while one
    # dataset-level matching gets only half right.
    acc = PerImageHungarian(2, 2)
    gt = np.array([[0, 1]], np.uint8)
    assert acc.update(np.array([[0, 1]]), gt).tolist() == [0, 1]
    assert acc.update(np.array([[1, 0]]), gt).tolist() == [1, 0]
    assert np.array_equal(acc.class_conf, [[2, 0, 0], [0, 2, 0]])
    assert scores(acc.class_conf)["miou"] == 100.0
