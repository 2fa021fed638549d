"""Batch segmentation runs: checkpoint (fitted on the inputs when none is given), summary, resume.

The pieces: :mod:`segeig.batch.inputs` (which files), :mod:`segeig.batch.pipeline` (the
engine), :mod:`segeig.batch.outputs` (file formats). This module ties them into a
run that can be interrupted and resumed, and that several processes can share
(:func:`segeig.batch.inputs.select_shard`)::

    files, conflicts = expand_inputs(["photos/"])
    ckpt, _ = fit_or_reuse_checkpoint("out", [f.path for f in files])
    summary = segment_inputs(segeig.load(ckpt), files, "out", checkpoint=ckpt,
                             conflicts=conflicts)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segeig import __version__
from segeig.atomic import atomic_write
from segeig.batch.inputs import Conflict, InputFile
from segeig.batch.outputs import SUBDIRS
from segeig.batch.pipeline import ImageResult, SegmentOptions, resolve_method, segment_files
from segeig.checkpoint import resolve_checkpoint_path
from segeig.crf import CRFParams
from segeig.predictor import Segmenter

logger = logging.getLogger(__name__)

__all__ = [
    "SegmentSummary",
    "segment_inputs",
    "summary_path",
]

#: Settings that change the outputs; a resumed run must match them.
_OUTPUT_SETTINGS = ("checkpoint_sha256", "method", "crf", "crf_max_labels", "crf_side",
                    "max_side", "overlay_alpha")


def summary_path(out_dir: str | os.PathLike[str], shard: tuple[int, int] = (0, 1)) -> Path:
    """``DIR/summary.json``, or ``DIR/summary.shard-I-of-N.json`` for shard I of N > 1."""
    index, count = shard
    name = "summary.json" if count == 1 else f"summary.shard-{index}-of-{count}.json"
    return Path(out_dir) / name


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (identifies the checkpoint a run used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class SegmentSummary:
    """Outcome of one :func:`segment_inputs` call (one shard).

    Attributes:
        total: inputs of this shard (including name conflicts).
        segmented, skipped, failed: how many were written, found done, failed.
        failures: ``[{"input": path, "reason": text}]``.
        seconds: wall time of the segmentation (model loading and fitting excluded).
        settings: the options, the resolved method and the checkpoint hash.
        checkpoint: ``{"path", "sha256", "fitted_here"}``.
        shard: ``(index, count)``, 0-based.
        complete: every input was handled (False when interrupted).
    """

    total: int
    segmented: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    shard: tuple[int, int] = (0, 1)
    complete: bool = False
    started: str = ""

    @property
    def succeeded(self) -> int:
        """Inputs whose outputs now exist (segmented or skipped as already done)."""
        return self.segmented + self.skipped

    def to_dict(self) -> dict[str, Any]:
        """The JSON document written to :func:`summary_path`."""
        rate = self.segmented / self.seconds if self.seconds > 0 else None
        return {
            "segeig_version": __version__,
            "started": self.started,
            "complete": self.complete,
            "shard": {"index": self.shard[0], "count": self.shard[1]},
            "counts": {"total": self.total, "segmented": self.segmented,
                       "skipped": self.skipped, "failed": self.failed},
            "seconds": round(self.seconds, 3),
            "images_per_second": None if rate is None else round(rate, 3),
            "failures": self.failures,
            "settings": self.settings,
            "checkpoint": self.checkpoint,
            "layout": {kind: f"{sub}/KEY" for kind, sub in SUBDIRS.items()},
        }


def _write_summary(path: Path, summary: SegmentSummary) -> None:
    text = json.dumps(summary.to_dict(), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _check_previous(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix outputs of different settings in one directory (unless overwriting)."""
    for path in sorted(out_dir.glob("summary*.json")):
        try:
            previous = json.loads(path.read_text()).get("settings", {})
        except (OSError, ValueError, AttributeError):
            logger.warning("ignoring unreadable %s", path)
            continue
        changed = {k: (previous[k], settings[k]) for k in _OUTPUT_SETTINGS
                   if k in previous and previous[k] != settings.get(k)}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{out_dir} holds outputs made with other settings ({detail}; see {path.name}). "
                "Pass --overwrite to replace them, or choose another output directory.")


def segment_inputs(
    segmenter: Segmenter,
    files: Sequence[InputFile],
    out_dir: str | os.PathLike[str],
    options: SegmentOptions | None = None,
    *,
    checkpoint: str | os.PathLike[str],
    fitted_here: bool = False,
    conflicts: Sequence[Conflict] = (),
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[ImageResult], None] | None = None,
    crf_params: CRFParams | None = None,
) -> SegmentSummary:
    """Segment ``files`` (already sharded) into ``out_dir`` and write the shard's summary.

    The summary is written when the run starts (``complete: false``), and again
    when it ends — also when it is interrupted, before the exception propagates.
    Existing outputs are kept and counted as skipped unless ``options.overwrite``;
    resuming into a directory whose previous summary records different output
    settings (checkpoint, method, CRF, ...) raises instead of mixing results.

    Args:
        segmenter: the loaded checkpoint.
        files: this shard's inputs (:func:`segeig.batch.inputs.select_shard`).
        out_dir: output directory.
        options: see :class:`segeig.batch.pipeline.SegmentOptions`.
        checkpoint: the checkpoint file ``segmenter`` was loaded from (hashed
            into the summary).
        fitted_here: the checkpoint was fitted by this run (recorded).
        conflicts: inputs refused for name clashes; reported as failures.
        shard: ``(index, count)``; names the summary file.
        progress: called once per input as it completes.
        crf_params: dense CRF hyper-parameters.

    Returns:
        The :class:`SegmentSummary` also written to :func:`summary_path`.
    """
    options = options or SegmentOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint_path(checkpoint)
    sha = file_sha256(checkpoint)
    settings = {**options.to_dict(), "method": resolve_method(segmenter, options.method),
                "checkpoint_sha256": sha, "device": str(segmenter.device)}
    if not options.overwrite:
        _check_previous(out, settings)
    summary = SegmentSummary(
        total=len(files) + len(conflicts), settings=settings, shard=shard,
        checkpoint={"path": str(checkpoint.resolve()), "sha256": sha,
                    "fitted_here": fitted_here},
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    for conflict in conflicts:
        summary.failed += 1
        summary.failures.append({"input": str(conflict.path), "reason": conflict.reason})
    target = summary_path(out, shard)
    _write_summary(target, summary)

    def record(result: ImageResult) -> None:
        if result.status == "segmented":
            summary.segmented += 1
        elif result.status == "skipped":
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.failures.append({"input": result.path, "reason": result.reason or ""})
        if progress is not None:
            progress(result)

    started = time.perf_counter()
    try:
        segment_files(segmenter, files, out, options, progress=record, crf_params=crf_params)
        summary.complete = True
    finally:
        # Also on Ctrl-C: the summary says how far the run got.
        summary.seconds = time.perf_counter() - started
        _write_summary(target, summary)
    return summary
