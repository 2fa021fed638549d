"""The JSONL training log: one JSON object per line, appended as training runs.

Records (all have ``event`` and ``time``, seconds since the run started):

* ``start``: ``config`` (the TrainConfig), ``num_images``, ``steps_per_epoch``,
  ``total_steps``, ``world_size``, ``device``, ``amp``.
* ``step`` (every ``log_every`` steps): ``step`` (completed steps), ``epoch``
  (0-based epoch of this step), ``loss``, ``trace`` (tr(R)/K), ``penalty``
  (β·Σ_{i<j} R̂_ij²/K), ``lr``, ``tau``, ``tokens`` (patches in the graph),
  ``it_s`` (steps per second since the previous step record).
* ``epoch``: ``epoch`` (epochs completed), ``step``, ``loss`` (epoch mean),
  ``eigenvalues`` (K floats: the epoch mean of diag(R)/t, in eigenfunction
  order), ``max_memory_gb`` on CUDA.
* ``resume``: ``step`` resumed from. ``diverged``: ``step``, ``loss``.
* ``centroids``: ``method``, ``k``; ``end``: ``checkpoint``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from segeig.atomic import write_text

LOG_NAME = "train_log.jsonl"


class JsonlLog:
    """Append-only JSONL writer (a no-op when ``enabled`` is False, e.g. rank > 0).

    Args:
        path: the log file.
        enabled: write at all.
        fresh: start a new file (otherwise append to an existing one).
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True, fresh: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.start = time.perf_counter()
        if enabled and fresh:
            self.path.write_text("")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(self.elapsed(), 3), **fields}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (work redone after a resume), atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            if record.get("event") in ("end", "centroids"):
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        write_text(self.path, "".join(line + "\n" for line in kept))


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL training log (malformed lines skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
