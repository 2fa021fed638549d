"""An independent computation of the ``stego`` protocol, shared by the tests that check
segeig's scores against it (no segeig code is used here).

* class maps written out as the STEGO-family repositories print them
  (:data:`STEGO_FINE_TO_COARSE`, :data:`CITYSCAPES_TO_27`, :data:`POTSDAM_TO_3`) and
  :func:`map_ids` to apply one;
* :func:`stego_crop`: torchvision's ``Resize(320, NEAREST)`` + ``CenterCrop(320)`` on a
  PIL image, in exact integer arithmetic;
* :func:`expected_scores`: confusion matrix, scipy's ``linear_sum_assignment``
  (dataset-level or per image) or majority matching, IoU and pixel accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

# The fine -> coarse dict as printed in STEGO's, HP's, EAGLE's ... COCO dataset
# classes (``fine_to_coarse``), kept here as an independent copy to check every id.
STEGO_FINE_TO_COARSE = {
    0: 9, 1: 11, 2: 11, 3: 11, 4: 11, 5: 11, 6: 11, 7: 11, 8: 11, 9: 8, 10: 8, 11: 8, 12: 8,
    13: 8, 14: 8, 15: 7, 16: 7, 17: 7, 18: 7, 19: 7, 20: 7, 21: 7, 22: 7, 23: 7, 24: 7,
    25: 6, 26: 6, 27: 6, 28: 6, 29: 6, 30: 6, 31: 6, 32: 6, 33: 10, 34: 10, 35: 10, 36: 10,
    37: 10, 38: 10, 39: 10, 40: 10, 41: 10, 42: 10, 43: 5, 44: 5, 45: 5, 46: 5, 47: 5, 48: 5,
    49: 5, 50: 5, 51: 2, 52: 2, 53: 2, 54: 2, 55: 2, 56: 2, 57: 2, 58: 2, 59: 2, 60: 2,
    61: 3, 62: 3, 63: 3, 64: 3, 65: 3, 66: 3, 67: 3, 68: 3, 69: 3, 70: 3, 71: 0, 72: 0,
    73: 0, 74: 0, 75: 0, 76: 0, 77: 1, 78: 1, 79: 1, 80: 1, 81: 1, 82: 1, 83: 4, 84: 4,
    85: 4, 86: 4, 87: 4, 88: 4, 89: 4, 90: 4, 91: 17, 92: 17, 93: 22, 94: 20, 95: 20, 96: 22,
    97: 15, 98: 25, 99: 16, 100: 13, 101: 12, 102: 12, 103: 17, 104: 17, 105: 23, 106: 15,
    107: 15, 108: 17, 109: 15, 110: 21, 111: 15, 112: 25, 113: 13, 114: 13, 115: 13, 116: 13,
    117: 13, 118: 22, 119: 26, 120: 14, 121: 14, 122: 15, 123: 22, 124: 21, 125: 21, 126: 24,
    127: 20, 128: 22, 129: 15, 130: 17, 131: 16, 132: 15, 133: 22, 134: 24, 135: 21, 136: 17,
    137: 25, 138: 16, 139: 21, 140: 17, 141: 22, 142: 16, 143: 21, 144: 21, 145: 25, 146: 21,
    147: 26, 148: 21, 149: 24, 150: 20, 151: 17, 152: 14, 153: 21, 154: 26, 155: 15, 156: 23,
    157: 20, 158: 21, 159: 24, 160: 15, 161: 24, 162: 22, 163: 25, 164: 15, 165: 20, 166: 17,
    167: 17, 168: 22, 169: 14, 170: 18, 171: 18, 172: 18, 173: 18, 174: 18, 175: 18, 176: 18,
    177: 26, 178: 26, 179: 19, 180: 19, 181: 24}

#: Cityscapes-27: labelIds 7 (road) .. 33 (bicycle) become 0..26.
CITYSCAPES_TO_27 = {label_id: label_id - 7 for label_id in range(7, 34)}

#: Potsdam-3: {road, car} -> 0, {building, clutter} -> 1, {low vegetation, tree} -> 2.
POTSDAM_TO_3 = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}


def map_ids(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """``raw`` ids through ``table``; every id not in it becomes 255. Same shape, uint8."""
    out = np.full(raw.shape, 255, np.uint8)
    for fine, coarse in table.items():
        out[raw == fine] = coarse
    return out


def _nearest(a: np.ndarray, oh: int, ow: int) -> np.ndarray:
    # Pixel-centre nearest neighbour in exact integer arithmetic: source index
    # floor((2i + 1) * n / (2 * o)).
    h, w = a.shape
    ys = (2 * np.arange(oh) + 1) * h // (2 * oh)
    xs = (2 * np.arange(ow) + 1) * w // (2 * ow)
    return a[ys][:, xs]


def stego_crop(a: np.ndarray) -> np.ndarray:
    """An ``H×W`` id map as STEGO sizes it: short side 320 with nearest neighbour (long
    side truncated), then the centre 320×320 (offsets rounded). Returns 320×320.

    Sizes whose pixel centres tie (``(2i + 1) * n`` a multiple of ``2 * o``) may differ
    from PIL's float arithmetic by a pixel; tests choose sizes without ties.
    """
    h, w = a.shape
    oh, ow = (320, int(320 * w / h)) if h <= w else (int(320 * h / w), 320)
    r = _nearest(a, oh, ow)
    top, left = int(round((oh - 320) / 2)), int(round((ow - 320) / 2))
    return r[top : top + 320, left : left + 320]


def _scores(class_conf: np.ndarray) -> tuple[float, float]:
    """(mIoU, pixel accuracy) in percent of a C×(C+1) matrix (rows truth, last column =
    pixels of unmatched clusters)."""
    c = class_conf.shape[0]
    tp = np.diag(class_conf[:, :c]).astype(float)
    fp = class_conf[:, :c].sum(0) - tp
    fn = class_conf.sum(1) - tp
    union = tp + fp + fn
    miou = float(np.mean(tp[union > 0] / union[union > 0]) * 100)
    return miou, float(tp.sum() / class_conf.sum() * 100)


def _fold(conf: np.ndarray, mapping: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((classes, classes + 1), np.int64)
    for cluster, cls in enumerate(mapping):
        out[:, cls if cls >= 0 else classes] += conf[cluster]
    return out


def _per_image_hungarian(conf: np.ndarray) -> np.ndarray:
    """Cluster -> class (-1 = unmatched), one-to-one, most pixels matched; only the
    clusters and classes that occur in the image take part."""
    rows, cols = np.flatnonzero(conf.sum(1)), np.flatnonzero(conf.sum(0))
    r, c = linear_sum_assignment(conf[np.ix_(rows, cols)], maximize=True)
    mapping = np.full(conf.shape[0], -1)
    mapping[rows[r]] = cols[c]
    return mapping


def expected_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]], classes: int,
                    segments: int, match: str) -> tuple[float, float]:
    """(mIoU, pixel accuracy) in percent of ``(truth, prediction)`` pairs under stego.

    Args:
        pairs: per image, the truth (class ids 0..classes-1, 255 ignored) and the
            predicted segment ids (0..segments-1), both ``H×W`` at the original size.
        classes: classes scored.
        segments: segment ids the predictions may use.
        match: ``hungarian`` (one dataset-level matching over all segments and
            classes), ``hungarian-per-image`` (one per image over what occurs in it,
            folded into one matrix) or ``majority`` (each segment to
            the class it has the highest IoU with).
    """
    total = np.zeros((segments, classes), np.int64)
    per_image = np.zeros((classes, classes + 1), np.int64)
    for truth, pred in pairs:
        gt, pr = stego_crop(truth).astype(np.int64), stego_crop(pred).astype(np.int64)
        valid = gt != 255
        conf = np.bincount(pr[valid] * classes + gt[valid], minlength=segments * classes)
        conf = conf.reshape(segments, classes)
        total += conf
        per_image += _fold(conf, _per_image_hungarian(conf), classes)
    if match == "hungarian-per-image":
        return _scores(per_image)
    if match == "hungarian":
        r, c = linear_sum_assignment(total, maximize=True)
        mapping = np.full(segments, -1)
        mapping[r] = c
    elif match == "majority":
        union = total.sum(1, keepdims=True) + total.sum(0, keepdims=True) - total
        mapping = np.where(total.sum(1) > 0, (total / np.maximum(union, 1)).argmax(1), -1)
    else:
        raise ValueError(match)
    return _scores(_fold(total, mapping, classes))
