"""Naming clusters: fit a cluster → class map once on a labelled split, or read one by hand.

Unsupervised training gives cluster ids; the standard way to use such a model
is to fit a cluster → class matching once on a small labelled split and apply
it to every later prediction. :func:`fit_class_map` fits it with the same
matching as :func:`segeig.evaluation.evaluate` (one pass per method, without
CRF); :func:`class_map_from_names` builds one from a hand-written
``{cluster id: name}`` file (no dataset needed). Either result is stored in a
checkpoint with :func:`segeig.checkpoint.save_class_map`, after which
``segeig segment``, ``Segmenter.predict(image, classes=True)`` and the demo
speak class names.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from segeig import __version__
from segeig.checkpoint import MAX_CLASSES, UNASSIGNED, CheckpointError, ClassMap
from segeig.data import SegDataset
from segeig.evaluation.evaluator import evaluate
from segeig.evaluation.protocols import Protocol, resolve_protocol
from segeig.evaluation.scoring import EvaluationResult
from segeig.predictor import Segmenter
from segeig.safeio import parse_json, read_bounded
from segeig.viz import make_palette

logger = logging.getLogger(__name__)

__all__ = ["MAX_NAMES_BYTES", "class_map_from_names", "fit_class_map", "format_names",
           "parse_names", "read_names"]

#: Largest names file accepted (a name per cluster for K = 4096 fits many times over).
MAX_NAMES_BYTES = 1 << 20


def fit_class_map(
    segmenter: Segmenter,
    dataset: SegDataset,
    protocol: Protocol | str | None = "native",
    methods: Sequence[str] | None = None,
    match: str = "auto",
    *,
    max_images: int | None = None,
    progress: Callable[..., Iterable] | None = None,
    batch_size: int = 1,
    loader_workers: int = 0,
) -> tuple[ClassMap, dict[str, EvaluationResult]]:
    """Fit each method's cluster → class map on a labelled split.

    The map of a method is the matching ``evaluate`` fits on the split's raw
    (no-CRF) predictions; clusters it leaves out (the extra clusters of a
    one-to-one matching, clusters that never occur) are unassigned
    (:data:`segeig.checkpoint.UNASSIGNED`).

    Args:
        segmenter: the checkpoint to label.
        dataset: a labelled split (:func:`segeig.evaluation.load_eval_dataset`);
            its class names and palette become the map's.
        protocol: how images are predicted. ``native`` (default) predicts each
            image as ``segeig segment`` does, so the map fits those outputs.
        methods: methods to fit (default: the checkpoint's default method).
        match: ``auto`` (hungarian when segments equal classes, else
            majority), ``hungarian`` or ``majority``.
        max_images, progress, batch_size, loader_workers: as in
            :func:`segeig.evaluation.evaluate`.

    Returns:
        ``(class map, {method: the evaluation it was fitted on})``; each
        evaluation's ``scores`` are the fitted map's scores on this split.

    Raises:
        ValueError: unknown method or matching (``fixed`` refits nothing), an
            unlabelled dataset, more than 255 classes.
    """
    if match not in ("auto", "hungarian", "majority"):
        raise ValueError(f"a class map is fitted with auto, hungarian or majority matching, "
                         f"not {match!r}")
    if not isinstance(protocol, Protocol):
        protocol = resolve_protocol(protocol, dataset.name)
    methods = list(dict.fromkeys(methods or [segmenter.model.default_method]))
    missing = [m for m in methods if m not in segmenter.methods]
    if missing:
        raise ValueError(f"method {missing[0]!r} is not in this checkpoint; it has "
                         f"{', '.join(segmenter.methods)}")
    if dataset.num_classes is not None and dataset.num_classes > MAX_CLASSES:
        raise ValueError(f"{dataset.num_classes} classes: a class map holds at most "
                         f"{MAX_CLASSES} (class index 255 means unassigned)")
    results: dict[str, EvaluationResult] = {}
    for method in methods:
        results[method] = evaluate(segmenter, dataset, protocol, method=method, match=match,
                                   crf=False, max_images=max_images, progress=progress,
                                   batch_size=batch_size, loader_workers=loader_workers,
                                   n_examples=0)
    first = next(iter(results.values()))
    maps = {m: np.where(np.asarray(r.scores.mapping) < 0, UNASSIGNED, r.scores.mapping)
            for m, r in results.items()}
    source = {
        "kind": "dataset", "dataset": dataset.name, "split": dataset.split,
        "protocol": protocol.name, "n_images": first.n_images, "match": match,
        "match_used": {m: r.match_used for m, r in results.items()},
        "miou": {m: _round(r.scores.miou) for m, r in results.items()},
        "pixel_acc": {m: _round(r.scores.pixel_acc) for m, r in results.items()},
        "segeig_version": __version__,
    }
    class_map = ClassMap(first.class_names, first.palette[: first.num_classes], maps,
                         source)
    for method, table in class_map.maps.items():
        logger.info("%s: %d clusters -> %d classes (%s matching), %d unassigned", method,
                    len(table), len(set(table.tolist()) - {UNASSIGNED}),
                    results[method].match_used, int((table == UNASSIGNED).sum()))
    return class_map, results


def _round(value: float) -> float | None:
    return None if value != value else round(float(value), 4)  # NaN → None (JSON)


def parse_names(text: str | bytes, n_segments: int, *, what: str = "names file"
                ) -> dict[int, str]:
    """Read and validate a ``{"cluster id": "name", ...}`` JSON document.

    Keys are decimal cluster ids (``"0"``, ``"12"``) in ``[0, n_segments)``;
    values are printable, non-blank names of at most 100 characters (surrounding
    spaces are dropped). Several ids may share a name.

    Args:
        text: the document (untrusted: size, syntax, types and ranges are checked).
        n_segments: clusters S of the method the names are for.
        what: how the document is called in error messages.

    Returns:
        cluster id → name, in the document's order.

    Raises:
        ValueError: with what is wrong and where (bad JSON, an id given twice,
            not an object, non-integer keys, unknown ids, bad names, more than
            255 names).
    """
    if len(text) > MAX_NAMES_BYTES:
        raise ValueError(f"{what} is larger than {MAX_NAMES_BYTES} bytes")
    document = parse_json(text, what)  # duplicate ids refused, deep nesting named
    if not isinstance(document, dict) or not document:
        raise ValueError(f'{what} must be a non-empty JSON object {{"cluster id": "name"}}, '
                         f'e.g. {{"0": "sky", "3": "road"}}')
    names: dict[int, str] = {}
    bad_keys, unknown = [], []
    for key, name in document.items():
        # Only plain decimal ids: "1.0", " 3", "+2" or "0x1" are typos, not ids.
        if not (key.isascii() and key.isdigit()) or (len(key) > 1 and key[0] == "0"):
            bad_keys.append(key)
            continue
        cluster = int(key)
        if cluster >= n_segments:
            unknown.append(cluster)
            continue
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{what}: the name of cluster {cluster} must be a non-blank "
                             f"string, got {name!r}")
        names[cluster] = name.strip()
    if bad_keys:
        raise ValueError(f"{what}: keys must be integer cluster ids like \"12\"; got "
                         f"{', '.join(map(repr, bad_keys[:5]))}")
    if unknown:
        raise ValueError(f"{what}: unknown cluster ids {sorted(unknown)[:10]}; the method "
                         f"predicts {n_segments} clusters (ids 0..{n_segments - 1})")
    return names


def read_names(path: str | os.PathLike[str], n_segments: int) -> dict[int, str]:
    """:func:`parse_names` of a names file a user named.

    The file must be a regular file (a FIFO or a device is refused at once)
    of at most :data:`MAX_NAMES_BYTES`, checked before reading.

    Raises:
        ValueError: naming the file and what is wrong.
    """
    data = read_bounded(path, MAX_NAMES_BYTES, "names file")
    return parse_names(data, n_segments, what=f"names file {path}")


def class_map_from_names(names: Mapping[int, str], n_segments: int, method: str,
                         source: Mapping[str, Any] | None = None) -> ClassMap:
    """A class map from hand-given cluster names.

    Classes are the distinct names in order of first appearance; clusters
    sharing a name share a class; clusters without a name are unassigned.
    Colours are :func:`segeig.viz.make_palette`'s.

    Raises:
        ValueError: no names, ids outside ``[0, n_segments)``, or a name
            :class:`~segeig.checkpoint.ClassMap` refuses (too long, not printable).
    """
    if not names:
        raise ValueError("no cluster is named")
    classes = list(dict.fromkeys(names.values()))
    table = np.full(n_segments, UNASSIGNED, dtype=np.int64)
    index = {name: i for i, name in enumerate(classes)}
    for cluster, name in names.items():
        if not 0 <= cluster < n_segments:
            raise ValueError(f"cluster id {cluster} is outside 0..{n_segments - 1}")
        table[cluster] = index[name]
    try:
        return ClassMap(classes, make_palette(len(classes)), {method: table},
                        {"kind": "names", **(source or {}), "segeig_version": __version__})
    except CheckpointError as err:
        raise ValueError(str(err)) from None


def format_names(names: Mapping[int, str]) -> str:
    """The JSON text :func:`parse_names` reads: ``{"3": "sky", ...}``, ids in order."""
    return json.dumps({str(k): names[k] for k in sorted(names)}, indent=2,
                      ensure_ascii=False) + "\n"
