"""Which checkpoint and settings produced each output of a batch run.

``summary.json`` describes one run; an output folder outlives runs. A partial
``--overwrite`` with another checkpoint, followed by a plain resume, would
otherwise skip outputs of the first checkpoint as "done" and leave one folder
holding two models' segments. So every run appends to a manifest what made
each output it wrote (or found done and adopted), and a run refuses to resume
over outputs that another producer made.

Format: ``DIR/manifest.jsonl`` (``DIR/manifest.shard-I-of-N.jsonl`` for shard I
of N, so processes never write one file), JSON lines of two kinds::

    {"producer": "3f2a...", "checkpoint": {"path": ..., "sha256": ...}, "settings": {...}}
    {"key": "trip/a", "producer": "3f2a...", "t": 1733140000.12}

A producer is named by the hash of everything that decides the outputs
(checkpoint hash, method, CRF, ...). Readers merge all manifest files, the
latest ``t`` winning per key.

The manifest lives in the output folder, which may hold anything: it is
appended to through :func:`segeig.safeio.open_append` (never through a symbolic
link, never outside the folder, each run starting on a fresh line even after a
crash cut the last line short) and read as a stream of lines; a line that is
not UTF-8 JSON of one of the two kinds is skipped with a warning naming the
file and line. A key whose producer record is missing (lost to damage) is
owned by an unknown producer: it counts as foreign, never as made before
manifests existed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from segeig.safeio import UserFileError, iter_lines, open_append, parse_json

logger = logging.getLogger(__name__)

__all__ = ["Manifest", "Producer", "manifest_path", "producer_of", "read_manifest"]

#: Longest manifest line read (a producer record is a few hundred bytes).
MAX_LINE_BYTES = 1 << 20


def manifest_path(out_dir: str | os.PathLike[str], shard: tuple[int, int] = (0, 1)) -> Path:
    """``DIR/manifest.jsonl``, or ``DIR/manifest.shard-I-of-N.jsonl`` for shard I of N > 1."""
    index, count = shard
    name = "manifest.jsonl" if count == 1 else f"manifest.shard-{index}-of-{count}.jsonl"
    return Path(out_dir) / name


@dataclass(frozen=True)
class Producer:
    """What produces a run's outputs.

    Attributes:
        id: 16 hex digits of the SHA-256 of ``settings`` (which include the
            checkpoint's hash): equal ids, equal outputs.
        checkpoint: ``{"path": str, "sha256": str}``.
        settings: the settings that change the outputs.
    """

    id: str
    checkpoint: dict[str, str] = field(hash=False)
    settings: dict[str, Any] = field(hash=False)

    def describe(self) -> str:
        """``checkpoint PATH (sha256 1234abcd5678)``, for messages."""
        sha = str(self.checkpoint.get("sha256", "?"))[:12]
        return f"checkpoint {self.checkpoint.get('path', '?')} (sha256 {sha})"

    def differences(self, other: Producer) -> str:
        """``key: mine -> other's`` for each setting that differs, comma separated."""
        keys = sorted(set(self.settings) | set(other.settings))
        return ", ".join(f"{k}: {self.settings.get(k)!r} -> {other.settings.get(k)!r}"
                         for k in keys if self.settings.get(k) != other.settings.get(k))


def producer_of(checkpoint_path: str, settings: dict[str, Any]) -> Producer:
    """The :class:`Producer` of a run with ``settings`` (which must hold ``checkpoint_sha256``)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    checkpoint = {"path": checkpoint_path, "sha256": str(settings.get("checkpoint_sha256"))}
    return Producer(digest, checkpoint, dict(settings))


@dataclass
class Manifest:
    """What the manifests of an output folder say.

    Attributes:
        producers: id → :class:`Producer`.
        owners: output key → id of the producer that last wrote (or adopted) it.
    """

    producers: dict[str, Producer] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def owner(self, key: str) -> Producer | None:
        """The producer of ``key``'s outputs, or None when no manifest names it.

        A key recorded under a producer whose own record is missing (a damaged
        manifest) gets a stand-in producer with that id and no settings:
        someone made it, not necessarily with this run's settings.
        """
        found = self.owners.get(key)
        if found is None:
            return None
        return self.producers.get(found) or Producer(
            found, {"path": "<unknown: its record in the manifest is missing>",
                    "sha256": "?"}, {})


def _entry(line: bytes, where: str) -> dict[str, Any] | None:
    """One manifest line as a record of either kind, or None (with a warning)."""
    try:
        entry = parse_json(line, "the line")
        if not isinstance(entry, dict):
            raise ValueError("not a JSON object")
        if "key" in entry:
            return {"key": str(entry["key"]), "producer": str(entry["producer"]),
                    "t": float(entry["t"])}
        if "producer" in entry:
            return {"producer": str(entry["producer"]), "checkpoint": dict(entry["checkpoint"]),
                    "settings": dict(entry["settings"])}
        raise ValueError("neither an output nor a producer record")
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("%s: skipping a line that cannot be read (%s)", where, err)
        return None


def read_manifest(out_dir: str | os.PathLike[str]) -> Manifest:
    """Merge every ``manifest*.jsonl`` of ``out_dir`` (missing folder: empty manifest).

    Files are streamed line by line; an unreadable file or line is skipped
    with a warning naming it (``manifest.jsonl line 12``), never an error.
    """
    manifest = Manifest()
    stamped: list[tuple[float, str, str]] = []
    for path in sorted(Path(out_dir).glob("manifest*.jsonl")):
        try:
            for number, line in iter_lines(path, "manifest", max_line_bytes=MAX_LINE_BYTES,
                                           follow_symlinks=False):
                where = f"{path} line {number}"
                if line is None:
                    logger.warning("%s: skipping a line longer than %d bytes", where,
                                   MAX_LINE_BYTES)
                    continue
                if not line.strip():
                    continue
                entry = _entry(line, where)
                if entry is None:
                    continue
                if "key" in entry:
                    stamped.append((entry["t"], entry["key"], entry["producer"]))
                else:
                    manifest.producers[entry["producer"]] = Producer(
                        entry["producer"], entry["checkpoint"], entry["settings"])
        except UserFileError as err:
            logger.warning("ignoring unreadable %s: %s", path, err)
            continue
    for _, key, producer in sorted(stamped):
        manifest.owners[key] = producer
    return manifest


class ManifestWriter:
    """Appends a run's records to its manifest file, one flushed line each.

    Args:
        path: :func:`manifest_path` of the run's shard.
        producer: this run's producer (recorded once, when the file is opened).
        root: the output folder the manifest must stay in (default: its folder).

    Raises:
        segeig.safeio.UserFileError: the manifest is a symbolic link, or not a
            regular file, or its folder resolves outside ``root``.
    """

    def __init__(self, path: Path, producer: Producer,
                 root: str | os.PathLike[str] | None = None) -> None:
        self.producer = producer
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = open_append(path, path.parent if root is None else root)
        self._line({"producer": producer.id, "checkpoint": producer.checkpoint,
                    "settings": producer.settings})

    def _line(self, entry: dict[str, Any]) -> None:
        assert self._file is not None, "manifest already closed"
        self._file.write((json.dumps(entry, default=str) + "\n").encode("utf-8"))
        self._file.flush()

    def record(self, key: str) -> None:
        """This run's producer made (or adopted) the outputs of ``key``."""
        self._line({"key": key, "producer": self.producer.id, "t": time.time()})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
