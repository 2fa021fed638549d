"""Batch segmentation runs: checkpoint (fitted on the inputs when none is given), summary, resume.

The pieces: :mod:`segeig.batch.inputs` (which files), :mod:`segeig.batch.options` (the
settings), :mod:`segeig.batch.pipeline` (the engine), :mod:`segeig.batch.outputs` (file
formats). This module ties them into a run that can be interrupted and resumed, and that
several processes can share (:func:`segeig.batch.inputs.select_shard`)::

    files, conflicts = expand_inputs(["photos/"])
    ckpt, _ = fit_or_reuse_checkpoint("out", [f.path for f in files])
    summary = segment_inputs(segeig.load(ckpt), files, "out", checkpoint=ckpt,
                             conflicts=conflicts)
"""

from __future__ import annotations

import contextlib
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
from segeig.batch.manifest import (
    Manifest,
    ManifestWriter,
    Producer,
    manifest_path,
    producer_of,
    read_manifest,
)
from segeig.batch.options import SegmentOptions, resolve_method, uses_classes
from segeig.batch.outputs import SUBDIRS, OutputPathError, output_paths
from segeig.batch.pipeline import ImageResult, segment_files
from segeig.checkpoint import UNASSIGNED, resolve_checkpoint_path
from segeig.config import to_dict
from segeig.crf import CRFParams
from segeig.predictor import Segmenter
from segeig.safeio import read_json_file

logger = logging.getLogger(__name__)

__all__ = [
    "SegmentSummary",
    "segment_inputs",
    "summary_path",
]

#: Settings that change the outputs; a resumed run must match them.
_OUTPUT_SETTINGS = ("checkpoint_sha256", "method", "clusters", "crf", "crf_max_labels",
                    "crf_side", "max_side", "overlay_alpha", "working_resolution")

#: Largest ``summary.json`` read back (it lists every failure: ~200 bytes each).
MAX_SUMMARY_BYTES = 256 << 20


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
        others: ``[{"checkpoint": {"path", "sha256"}, "inputs": n}]``: other
            producers of outputs in the folder that this run did not redo
            (after a partial ``--overwrite``); see :mod:`segeig.batch.manifest`.
        shard: ``(index, count)``, 0-based.
        complete: every input was handled (False when interrupted).
        classes: class names, when the label maps hold class indices (a
            labelled checkpoint; pixel value i is ``classes[i]``, 255 unassigned).
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
    classes: list[str] | None = None
    others: list[dict[str, Any]] = field(default_factory=list)

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
            "other_checkpoints": self.others,
            "layout": {kind: f"{sub}/KEY" for kind, sub in SUBDIRS.items()},
            # Only for class label maps: an unlabelled run's summary stays as it was.
            **({"classes": self.classes, "unassigned": UNASSIGNED}
               if self.classes is not None else {}),
        }


def _write_summary(path: Path, summary: SegmentSummary) -> None:
    text = json.dumps(summary.to_dict(), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_final_summary(path: Path, summary: SegmentSummary) -> None:
    """Write the closing summary; if that fails, remove the one written at the start.

    A stale summary would describe a run that is not what happened (its counts,
    ``complete``); no summary is honest, and the error says why.
    """
    try:
        _write_summary(path, summary)
    except OSError as err:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise OSError(f"could not write {path} ({err}); the outputs written are complete, "
                      "rerun to write the summary") from err


def _check_previous(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix outputs of different settings in one directory (unless overwriting)."""
    for path in sorted(out_dir.glob("summary*.json")):
        try:
            previous = read_json_file(path, MAX_SUMMARY_BYTES, "summary",
                                      follow_symlinks=False).get("settings", {})
            if not isinstance(previous, dict):
                raise ValueError("its settings are not a JSON object")
        except (ValueError, AttributeError) as err:
            logger.warning("ignoring unreadable %s: %s", path, err)
            continue
        changed = {k: (previous[k], settings[k]) for k in _OUTPUT_SETTINGS
                   if k in previous and previous[k] != settings.get(k)}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{out_dir} holds outputs made with other settings ({detail}; see {path.name}). "
                "Pass --overwrite to replace them, or choose another output directory.")


def _existing_outputs(out_dir: Path, key: str) -> bool:
    """Whether any output of ``key`` (labels, either overlay format, scores) exists."""
    try:
        paths = output_paths(out_dir, key, "jpg", probs=True)
        paths["overlay_png"] = output_paths(out_dir, key, "png")["overlay"]
    except OutputPathError:
        return False
    return any(p.exists() for p in paths.values())


def _check_owners(out_dir: Path, files: Sequence[InputFile], manifest: Manifest,
                  producer: Producer) -> None:
    """Refuse to resume over outputs that another checkpoint or other settings made."""
    foreign: dict[str, list[str]] = {}
    for item in files:
        owner = manifest.owner(item.key)
        if owner is not None and owner.id != producer.id and _existing_outputs(out_dir, item.key):
            foreign.setdefault(owner.id, []).append(item.key)
    if not foreign:
        return
    parts = []
    for keys in foreign.values():
        owner = manifest.owner(keys[0])
        assert owner is not None  # keys were collected because they have an owner
        if owner.checkpoint.get("sha256") != producer.checkpoint.get("sha256"):
            how = owner.describe()
        else:
            how = f"the same checkpoint with other settings ({owner.differences(producer)})"
        parts.append(f"{len(keys)} input(s), e.g. '{keys[0]}', were segmented with {how}")
    raise ValueError(
        f"{out_dir} holds outputs of another run: {'; '.join(parts)}; this run uses "
        f"{producer.describe()}. Pass --overwrite to redo them with this checkpoint, or "
        f"choose another output directory (see {manifest_path(out_dir).name}).")


def _others(manifest: Manifest, producer: Producer, keys: set[str]) -> list[dict[str, Any]]:
    """Producers of outputs in the folder that this run neither made nor redid."""
    counts: dict[str, int] = {}
    for key, owner in manifest.owners.items():
        if owner != producer.id and key not in keys:
            counts[owner] = counts.get(owner, 0) + 1
    return [{"checkpoint": manifest.producers[o].checkpoint, "inputs": n}
            for o, n in counts.items() if o in manifest.producers]


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
        options: see :class:`segeig.batch.options.SegmentOptions`.
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
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output directory {out} is a file; give a directory (it is "
                         "created when missing)")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint_path(checkpoint)
    sha = file_sha256(checkpoint)
    classes = uses_classes(segmenter, options)
    settings = {**options.to_dict(),
                "method": resolve_method(segmenter, options.method, classes),
                "working_resolution": to_dict(segmenter.working_resolution(options.resolution)),
                "checkpoint_sha256": sha, "device": str(segmenter.device)}
    producer = producer_of(str(checkpoint.resolve()),
                           {k: settings[k] for k in _OUTPUT_SETTINGS if k in settings})
    manifest = read_manifest(out)
    if not options.overwrite:
        _check_previous(out, settings)
        _check_owners(out, files, manifest, producer)
    summary = SegmentSummary(
        total=len(files) + len(conflicts), settings=settings, shard=shard,
        checkpoint={"path": str(checkpoint.resolve()), "sha256": sha,
                    "fitted_here": fitted_here},
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        classes=segmenter.class_names if classes else None,
    )
    for conflict in conflicts:
        summary.failed += 1
        summary.failures.append({"input": str(conflict.path), "reason": conflict.reason})
    target = summary_path(out, shard)
    # The manifest first: one that cannot be appended to safely stops the run
    # before anything is written.
    writer = ManifestWriter(manifest_path(out, shard), producer, root=out)
    try:
        _write_summary(target, summary)
    except BaseException:
        writer.close()
        raise

    def record(result: ImageResult) -> None:
        if result.status == "segmented":
            summary.segmented += 1
            writer.record(result.key)
        elif result.status == "skipped":
            summary.skipped += 1
            if manifest.owners.get(result.key) != producer.id:
                writer.record(result.key)  # checked above: ours, or made before manifests
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
        # A failed summary write must not hide the error that ended the run.
        fail = contextlib.nullcontext() if summary.complete else contextlib.suppress(OSError)
        writer.close()
        # Also on Ctrl-C: the summary says how far the run got.
        summary.seconds = time.perf_counter() - started
        summary.others = _others(manifest, producer, {f.key for f in files})
        for other in summary.others:
            logger.warning("%s also holds outputs of %d input(s) made with checkpoint %s "
                           "(sha256 %s), not redone by this run", out, other["inputs"],
                           other["checkpoint"].get("path"),
                           str(other["checkpoint"].get("sha256"))[:12])
        with fail:
            _write_final_summary(target, summary)
    return summary
