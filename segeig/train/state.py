"""What a training run leaves on disk besides its checkpoint: the resume state
(``train_state.safetensors``) and the log (``train_log.jsonl``).

Resume state: one safetensors file, no pickle.

Tensors: the head's state dict (``head.*``), Adam's per-parameter state
(``optim.<param index>.<name>``), the running eigenvalue sum of the current
epoch and the RNG states of torch (CPU and CUDA) and numpy. JSON metadata
(key ``"segeig_train_state"``): the :class:`~segeig.train.config.TrainConfig`,
the progress counters, the optimizer's param groups, the AMP grad-scaler
state and Python's ``random`` state.

Everything random inside the training loop is drawn from generators seeded by
``(seed, epoch, step, rank, position)`` (see :mod:`segeig.train.loader` and
:mod:`segeig.train.step`), so the counters alone reproduce the data and noise;
the global RNG states are saved and restored as well so that any library code
that draws from them continues identically.

The log: JSONL, one JSON object per line, appended as training runs.

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
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from segeig.atomic import write_safetensors, write_text
from segeig.config import to_dict
from segeig.safeio import open_append, parse_json
from segeig.train.config import TrainConfig, train_config_from_dict

STATE_NAME = "train_state.safetensors"
LOG_NAME = "train_log.jsonl"
_KEY = "segeig_train_state"
_VERSION = 1


@dataclass
class Progress:
    """Counters of a run.

    Attributes:
        step: optimisation steps completed (global, across epochs).
        phase: ``"train"`` (steps remain), ``"trained"`` (head done, centroids
            not yet fitted) or ``"done"``.
        eig_sum: ``K`` float64 sum of per-step eigenvalue estimates in the
            current epoch; ``eig_count`` steps summed.
        loss_sum: sum of step losses in the current epoch.
        eigenvalues: mean estimates of the last completed epoch (or ``None``).
        kmeans_k: the number of centroids, resolved at the start of the run.
    """

    step: int = 0
    phase: str = "train"
    eig_sum: torch.Tensor | None = None
    eig_count: int = 0
    loss_sum: float = 0.0
    eigenvalues: list[float] | None = None
    kmeans_k: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainState:
    """A loaded resume state (tensors on CPU)."""

    config: TrainConfig
    progress: Progress
    head: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: dict[str, Any]


def capture_rng() -> dict[str, Any]:
    """Global RNG states of torch (CPU, CUDA), numpy and Python."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], np_state[1], int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "python": random.getstate(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when devices match)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_train_state(path: str | os.PathLike, *, config: TrainConfig, progress: Progress,
                     head: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                     scaler: torch.amp.GradScaler | None) -> Path:
    """Write the resume state atomically (temp file + ``os.replace``)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {f"head.{k}": v for k, v in head.state_dict().items()}
    optim_meta: dict[str, Any] | None = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, entry in sd["state"].items():
            for name, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{pid}.{name}"] = value
                else:
                    scalars.setdefault(str(pid), {})[name] = value
        optim_meta = {"param_groups": sd["param_groups"], "scalars": scalars,
                      "params": [str(p) for p in sd["state"]]}
    if progress.eig_sum is not None:
        tensors["progress.eig_sum"] = progress.eig_sum
    rng = capture_rng()
    tensors["rng.torch"] = rng["torch"]
    tensors["rng.numpy"] = torch.from_numpy(rng["numpy"][1].astype(np.int64))
    for i, s in enumerate(rng["cuda"]):
        tensors[f"rng.cuda.{i}"] = s
    meta = {
        "version": _VERSION,
        "config": to_dict(config),
        "progress": {"step": progress.step, "phase": progress.phase,
                     "eig_count": progress.eig_count, "loss_sum": progress.loss_sum,
                     "eigenvalues": progress.eigenvalues, "kmeans_k": progress.kmeans_k,
                     "extra": progress.extra},
        "optimizer": optim_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": {"numpy": [rng["numpy"][0], *rng["numpy"][2:]], "python": rng["python"],
                "cuda": len(rng["cuda"])},
    }
    write_safetensors(path, tensors, _KEY, meta)
    return path


def load_train_state(path: str | os.PathLike) -> TrainState:
    """Read a resume state written by :func:`save_train_state`.

    Raises:
        ValueError: not a segeig training state (or from a newer segeig).
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = parse_json((handle.metadata() or {})[_KEY], f"{path}: its metadata")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path} is not a readable segeig training state ({err}); "
                         "start a new run in another --out directory") from err
    if meta.get("version", 0) > _VERSION:
        raise ValueError(f"{path} was written by a newer segeig; upgrade to resume it")
    p = meta["progress"]
    progress = Progress(step=p["step"], phase=p["phase"], eig_sum=tensors.get("progress.eig_sum"),
                        eig_count=p["eig_count"], loss_sum=p["loss_sum"],
                        eigenvalues=p["eigenvalues"], kmeans_k=p["kmeans_k"],
                        extra=p.get("extra", {}))
    head = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    optimizer = None
    if meta["optimizer"] is not None:
        om = meta["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        for pid, scalars in om["scalars"].items():
            state.setdefault(int(pid), {}).update(scalars)
        groups = om["param_groups"]
        for group in groups:
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
        optimizer = {"state": state, "param_groups": groups}
    r = meta["rng"]
    numpy_keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    rng = {
        "torch": tensors["rng.torch"],
        "numpy": (r["numpy"][0], numpy_keys, *r["numpy"][1:]),
        "python": (r["python"][0], tuple(r["python"][1]), r["python"][2]),
        "cuda": [tensors[f"rng.cuda.{i}"] for i in range(r["cuda"])],
    }
    return TrainState(config=train_config_from_dict(meta["config"]), progress=progress, head=head,
                      optimizer=optimizer, scaler=meta["scaler"], rng=rng)


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
            write_text(self.path, "")  # replaces (never writes through) a link there

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(self.elapsed(), 3), **fields}
        # Never through a link out of the folder; after a crash, on a fresh line.
        with open_append(self.path, self.path.parent) as handle:
            handle.write((json.dumps(record) + "\n").encode("utf-8"))

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
