"""Presenting an :class:`~segeig.evaluation.EvaluationResult`: text table, JSON, Markdown, PNGs.

Everything here returns strings or writes files atomically inside the
directory it is given (fixed file names, so nothing escapes it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from segeig.atomic import atomic_write
from segeig.evaluation.metrics import PER_IMAGE
from segeig.evaluation.scoring import EvaluationResult, Scores
from segeig.evaluation.statement import statement_rows
from segeig.viz import colorize, comparison_grid, confusion_plot, legend_image

__all__ = ["REPORT_FILES", "format_table", "map_origin", "match_description",
           "predictions_origin", "write_json", "write_report"]

#: File names written by :func:`write_report` inside its directory.
REPORT_FILES = {
    "report": "report.md",
    "json": "results.json",
    "confusion": "confusion.png",
    "confusion_crf": "confusion_crf.png",
    "examples": "examples.png",
    "legend": "legend.png",
}
#: Longest side of an image in the examples grid (bigger ones are shrunk).
GRID_SIDE = 480


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _atomic_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as strict JSON (no NaN), atomically; returns the path."""
    path = Path(path)
    _atomic_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def _rows(result: EvaluationResult) -> list[tuple[str, str, str]]:
    crf = result.scores_crf
    return [
        ("mIoU", _fmt(result.scores.miou), _fmt(crf.miou) if crf else "off"),
        ("pixel accuracy", _fmt(result.scores.pixel_acc), _fmt(crf.pixel_acc) if crf else "off"),
    ]


def match_description(result: EvaluationResult) -> str:
    """``"majority"``, ``"auto → majority"`` or ``"fixed (stored class map)"``."""
    used = result.match_used or result.match
    if result.match == "fixed":
        return "fixed (stored class map)"
    if used == PER_IMAGE:
        return f"{PER_IMAGE} (one matching per image: inflated scores)"
    return f"auto → {used}" if result.match == "auto" else used


def _match_rows(result: EvaluationResult) -> list[tuple[str, ...]]:
    """One row per matching (scores of the same predictions), the one used marked."""
    used = result.match_used or result.match
    rows = []
    pairs = dict(result.by_match())
    if result.match == "fixed":
        pairs = {"fixed": (result.scores, result.scores_crf), **pairs}
    for match, pair in pairs.items():
        name = f"{match} (used)" if match == used else match
        if match == PER_IMAGE:
            name += " [inflated: one matching per image]"
        if pair is None:
            rows.append((name, "n/a: fewer segments than classes", "", "", ""))
            continue
        raw, crf = pair
        rows.append((name, _fmt(raw.miou), _fmt(raw.pixel_acc),
                     _fmt(crf.miou) if crf else "off", _fmt(crf.pixel_acc) if crf else "off"))
    return rows


_MATCH_HEADER = ("matching", "mIoU", "pixel acc.", "mIoU CRF", "pixel acc. CRF")


def _timing_rows(result: EvaluationResult) -> list[tuple[str, str, str]]:
    total = result.timing.get("total", result.seconds) or 1.0
    return [(k, f"{v:.2f}", f"{100 * v / total:.0f}%")
            for k, v in result.timing.items() if k != "total"]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        # First column (names) left-aligned, numbers right-aligned.
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def format_table(result: EvaluationResult, per_class_limit: int = 40) -> str:
    """Plain-text summary for a terminal: settings, scores, per-class IoU, time split.

    Per-class rows are listed when there are at most ``per_class_limit`` classes.
    """
    p = result.protocol
    lines = [
        f"{p.dataset} {result.split}: {result.n_images} images, {result.num_classes} classes; "
        f"method {result.method} ({result.n_segments} segments), "
        f"{match_description(result)} matching",
        f"protocol {p.describe()}",
        *([f"stored class map: {map_origin(result)}"] if result.match == "fixed" else []),
        *([f"predictions: {predictions_origin(result)}"] if result.predictions else []),
        "",
        *(f"{name + ':':<22}{value}" for name, value in statement_rows(result.report_fields())),
        "",
        _table(("metric", "no CRF", "CRF"), _rows(result)),
        "",
        _table(_MATCH_HEADER, _match_rows(result)),
    ]
    if result.num_classes <= per_class_limit:
        crf = result.scores_crf
        per = [(name, _fmt(iou), _fmt(crf.per_class_iou[i]) if crf else "off")
               for i, (name, iou) in enumerate(zip(result.class_names,
                                                   result.scores.per_class_iou, strict=True))]
        lines += ["", _table(("class", "IoU", "IoU CRF"), per)]
    lines += ["", _table(("time split", "seconds", "share"), _timing_rows(result)),
              f"{result.seconds:.1f} s, {result.seconds / max(1, result.n_images):.3f} s/image"]
    return "\n".join(lines)


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _shrink(image: np.ndarray, nearest: bool) -> np.ndarray:
    h, w = image.shape[:2]
    scale = GRID_SIDE / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _paint(result: EvaluationResult, scores: Scores, clusters: np.ndarray,
           mapping: np.ndarray | None) -> np.ndarray:
    # Unmatched clusters map to -1, which colorize paints black like ignore.
    # Per-image matching: the image's own map.
    classes = scores.map(clusters) if mapping is None else np.asarray(mapping)[clusters]
    return colorize(classes, result.palette)


def _example_rows(result: EvaluationResult, n: int) -> tuple[list[list[np.ndarray]], list[str]]:
    titles = ["image", "ground truth", "prediction"]
    if result.scores_crf is not None:
        titles.append("prediction + CRF")
    rows = []
    for ex in result.examples[:n]:
        row = [_shrink(ex.image, False), _shrink(colorize(ex.label, result.palette), True),
               _shrink(_paint(result, result.scores, ex.pred, ex.mapping), True)]
        if result.scores_crf is not None and ex.pred_crf is not None:
            row.append(_shrink(_paint(result, result.scores_crf, ex.pred_crf, ex.mapping_crf),
                               True))
        rows.append(row)
    return rows, titles


def write_report(result: EvaluationResult, out_dir: str | os.PathLike,
                 meta: dict[str, Any] | None = None, n_examples: int = 8) -> dict[str, Path]:
    """Write the JSON, confusion PNG(s), example grid and a Markdown report.

    Args:
        result: the evaluation.
        out_dir: directory (created); files are named as in :data:`REPORT_FILES`.
        meta: extra JSON-ready facts to record (checkpoint path, command line...).
        n_examples: rows of the example grid (at most the examples kept).

    Returns:
        ``{kind: path}`` for every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    data = {**(meta or {}), **result.to_dict()}
    paths["json"] = write_json(out / REPORT_FILES["json"], data)
    title = (f"{result.protocol.dataset} {result.protocol.name}, {result.method}, "
             f"{result.match_used or result.match}")
    confusion_plot(result.scores.class_confusion, result.class_names,
                   out / REPORT_FILES["confusion"], title=f"{title} (no CRF)")
    paths["confusion"] = out / REPORT_FILES["confusion"]
    if result.scores_crf is not None:
        confusion_plot(result.scores_crf.class_confusion, result.class_names,
                       out / REPORT_FILES["confusion_crf"], title=f"{title} (CRF)")
        paths["confusion_crf"] = out / REPORT_FILES["confusion_crf"]
    rows, titles = _example_rows(result, n_examples)
    if rows:
        comparison_grid(rows, out / REPORT_FILES["examples"], titles=titles)
        paths["examples"] = out / REPORT_FILES["examples"]
        _atomic_png(out / REPORT_FILES["legend"],
                    legend_image(result.class_names, result.palette))
        paths["legend"] = out / REPORT_FILES["legend"]
    _atomic_text(out / REPORT_FILES["report"], _markdown(result, meta or {}, paths, len(rows)))
    paths["report"] = out / REPORT_FILES["report"]
    return paths


def _markdown(result: EvaluationResult, meta: dict[str, Any], paths: dict[str, Path],
              n_rows: int) -> str:
    p, crf = result.protocol, result.scores_crf
    settings = [("dataset", f"{p.dataset} ({result.split})"), ("protocol", p.describe()),
                ("method", f"{result.method} ({result.n_segments} segments)"),
                ("matching", match_description(result)), ("images", str(result.n_images)),
                ("classes", str(result.num_classes))]
    if result.predictions:
        settings.append(("predictions", predictions_origin(result)))
    settings += [(k, f"`{v}`") for k, v in meta.items()]
    per = [(str(i), name, _fmt(iou), _fmt(crf.per_class_iou[i]) if crf else "off")
           for i, (name, iou) in enumerate(zip(result.class_names,
                                               result.scores.per_class_iou, strict=True))]
    parts = [
        f"# Evaluation: {p.dataset} / {p.name} / {result.method}", "",
        _md_table(("setting", "value"), settings), "",
        "## Protocol statement", "",
        _md_table(("stated", "value"), statement_rows(result.report_fields())), "",
        "## Scores", "",
        _scores_note(result), "",
        _md_table(("metric", "no CRF", "CRF"), _rows(result)), "",
        "## Scores under each matching", "",
        "The same predictions matched one-to-one (hungarian: clusters beyond the number of "
        "classes count as wrong) and many-to-one (majority: each cluster goes to the class "
        "it overlaps most, by IoU). hungarian-per-image, when it was asked for, matches "
        "every image on its own (DiffSeg, DiffCut): it inflates scores, so compare it only "
        "with numbers under the same matching.", "",
        _md_table(_MATCH_HEADER, _match_rows(result)), "",
        "## Per-class IoU", "",
        "`-` = class neither present in the ground truth nor predicted (left out of the mean).",
        "", _md_table(("id", "class", "IoU", "IoU CRF"), per), "",
        "## Time", "",
        _md_table(("stage", "seconds", "share"), _timing_rows(result)), "",
        f"Total {result.seconds:.1f} s, {result.seconds / max(1, result.n_images):.3f} s/image.",
        "", "## Pictures", "",
    ]
    if "confusion" in paths:
        parts += [f"Confusion, rows normalised (ground truth → prediction; last column = "
                  f"pixels of unmatched clusters): no CRF ![confusion]({paths['confusion'].name})"]
    if "confusion_crf" in paths:
        parts += ["", f"CRF ![confusion CRF]({paths['confusion_crf'].name})"]
    if "examples" in paths:
        parts += ["", f"First {n_rows} images, predictions in the colour of their matched "
                  f"class (black = ignored or unmatched): ![examples]({paths['examples'].name})"]
    if "legend" in paths:
        parts += ["", f"Class colours: ![legend]({paths['legend'].name})"]
    parts += ["", f"All numbers, the mappings and the raw confusion matrices: "
              f"[{paths['json'].name}]({paths['json'].name})", ""]
    return "\n".join(parts)


def predictions_origin(result: EvaluationResult) -> str:
    """Where an ``evaluate --predictions`` run's label maps came from, in words."""
    info = result.predictions or {}
    return (f"saved label maps in {info.get('dir', '?')} ({info.get('original_size', 0)} at "
            f"the image's size, {info.get('prepared_size', 0)} already at the protocol's "
            f"size; {info.get('ignored', 0)} PNGs of unlisted images ignored)")


def map_origin(result: EvaluationResult) -> str:
    """Where a ``fixed`` evaluation's stored map came from, in words ("" otherwise)."""
    if result.match != "fixed":
        return ""
    source = (result.class_map or {}).get("source", {})
    if source.get("kind") == "names":
        return f"named by hand ({source.get('file', 'a names file')})"
    used = source.get("match_used", {})
    used = used.get(result.method, "") if isinstance(used, dict) else ""
    return (f"fitted on {source.get('dataset', '?')} {source.get('split', '?')} "
            f"({source.get('n_images', '?')} images, {source.get('protocol', '?')} protocol, "
            f"{used or source.get('match', '?')} matching)")


def _scores_note(result: EvaluationResult) -> str:
    if result.match == "fixed":
        return ("Both columns use the checkpoint's stored cluster→class map, not refitted on "
                f"these predictions: {map_origin(result)}.")
    if (result.match_used or result.match) == PER_IMAGE:
        return ("Matching: " + match_description(result) + ". Every image of each column "
                "has its own cluster→class mapping, fitted on that image alone.")
    return ("Matching: " + match_description(result) + ". Each column has its own "
            "cluster→class mapping, fitted on its own predictions.")
