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
latest ``t`` winning per key; a line cut short by a crash is ignored.
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

logger = logging.getLogger(__name__)

__all__ = ["Manifest", "Producer", "manifest_path", "producer_of", "read_manifest"]


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
        """The producer of ``key``'s outputs, or None when no manifest names it."""
        found = self.owners.get(key)
        return None if found is None else self.producers.get(found)


def read_manifest(out_dir: str | os.PathLike[str]) -> Manifest:
    """Merge every ``manifest*.jsonl`` of ``out_dir`` (missing folder: empty manifest)."""
    manifest = Manifest()
    stamped: list[tuple[float, str, str]] = []
    for path in sorted(Path(out_dir).glob("manifest*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            logger.warning("ignoring unreadable %s: %s", path, err)
            continue
        for line in lines:
            try:
                entry = json.loads(line)
                if "key" in entry:
                    stamped.append((float(entry["t"]), str(entry["key"]), str(entry["producer"])))
                elif "producer" in entry:
                    manifest.producers[str(entry["producer"])] = Producer(
                        str(entry["producer"]), dict(entry["checkpoint"]),
                        dict(entry["settings"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a crash, or written by hand
    for _, key, producer in sorted(stamped):
        manifest.owners[key] = producer
    return manifest


class ManifestWriter:
    """Appends a run's records to its manifest file, one flushed line each.

    Args:
        path: :func:`manifest_path` of the run's shard.
        producer: this run's producer (recorded once, when the file is opened).
    """

    def __init__(self, path: Path, producer: Producer) -> None:
        self.producer = producer
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._line({"producer": producer.id, "checkpoint": producer.checkpoint,
                    "settings": producer.settings})

    def _line(self, entry: dict[str, Any]) -> None:
        assert self._file is not None, "manifest already closed"
        self._file.write(json.dumps(entry, default=str) + "\n")
        self._file.flush()

    def record(self, key: str) -> None:
        """This run's producer made (or adopted) the outputs of ``key``."""
        self._line({"key": key, "producer": self.producer.id, "t": time.time()})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
