"""The command line's one progress display: tqdm bars on stderr.

The library reports progress through callbacks and never draws anything; this
class is the callback every command passes:

* ``bars(step, total, info)`` is the library's ``progress`` signature for
  training, fitting and the centroid pass; ``info["phase"]`` (``"train"`` by
  default, ``"kmeans"`` for the centroid pass) starts a new bar when it changes,
  and the training numbers in ``info`` show beside the bar;
* ``bars.items(desc, total)`` returns a per-item callback for work on files
  (``segeig segment``), counting failures beside the bar;
* ``bars.wrap(iterable, total, desc)`` for loops the library runs over an
  iterable it is handed (``segeig evaluate``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: What each training-phase number is called beside the bar, and its format.
_TRAIN_FIELDS = (("loss", "loss", ".5f"), ("trace", "trace", ".5f"), ("penalty", "pen", ".2e"),
                 ("tau", "tau", ".2f"), ("lr", "lr", ".1e"))
_PHASES = {"train": ("train", "step"), "kmeans": ("k-means pass", "batch"),
           "cache": ("feature cache", "img")}


class ProgressBars:
    """One bar at a time; closes the previous one when a new phase starts.

    Args:
        disable: draw nothing (``-q``).
        label: text appended to each bar's description (e.g. the shard).
    """

    def __init__(self, disable: bool = False, label: str = "") -> None:
        self.disable, self.label = disable, label
        self.bar: Any = None
        self.phase: str | None = None

    def _open(self, phase: str, desc: str, unit: str, total: int, initial: int = 0) -> Any:
        from tqdm import tqdm  # imported on first use: `--help` stays light

        self.close()
        self.phase = phase
        self.bar = tqdm(total=total, initial=initial, desc=f"{desc}{self.label}", unit=unit,
                        dynamic_ncols=True, file=sys.stderr, disable=self.disable)
        return self.bar

    def __call__(self, step: int, total: int, info: dict) -> None:
        phase = info.get("phase", "train")
        if phase != self.phase:
            desc, unit = _PHASES.get(phase, (phase, "step"))
            self._open(phase, desc, unit, total, initial=max(0, step - 1))
        self.bar.total = total
        shown = {name: format(info[key], fmt) for key, name, fmt in _TRAIN_FIELDS
                 if isinstance(info.get(key), (int, float))}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(step - self.bar.n)

    def items(self, desc: str, total: int) -> Callable[[Any], None]:
        """A callback taking one result per finished item (with a ``status``)."""
        bar = self._open(desc, desc, "img", total)
        failed = 0

        def done(result: Any) -> None:
            nonlocal failed
            if getattr(result, "status", None) == "failed":
                failed += 1
                bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)

        return done

    def wrap(self, iterable: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
        """``iterable``, advancing a bar by one per item (the evaluation's loop)."""
        bar = self._open(desc, desc, "img", total or 0)
        try:
            for item in iterable:
                yield item
                bar.update(1)
        finally:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.phase = None, None

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
