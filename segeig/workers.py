"""Reading in worker processes without ever hanging: :func:`ordered_map`.

``torch.utils.data.DataLoader`` hands a worker's result to a background
"feeder" thread that pickles it into the pipe. When that fails (a tensor that
does not fit a small ``/dev/shm``: Docker's default is 64 MB, one 12 MP image
is 36 MB) the thread prints a traceback, drops the item, and the main process
waits for it forever. :func:`ordered_map` uses a
:class:`concurrent.futures.ProcessPoolExecutor` instead, where:

* results are pickled by the worker itself, so a result that cannot be sent
  becomes that item's exception, raised in the caller;
* results travel through a pipe as plain pickles (numpy arrays, never shared
  memory), so the size of ``/dev/shm`` does not matter;
* a worker that dies (killed for memory, a crashing decoder) breaks the pool,
  which is noticed at once and raised as :class:`WorkerError`.

It also bounds what is in flight by count and by an optional cost (pixels
being decoded), so memory stays bounded whatever the inputs.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["WorkerError", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")

#: The function a worker process applies, installed once per process.
_worker_fn: Callable[[Any], Any] | None = None


class WorkerError(RuntimeError):
    """A worker process died or its result could not be returned."""


def _install(fn: Callable[[Any], Any]) -> None:
    global _worker_fn
    _worker_fn = fn


def _call(item: Any) -> Any:
    assert _worker_fn is not None, "worker started without its function"
    return _worker_fn(item)


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    *,
    window: int | None = None,
    cost: Callable[[T], int] | None = None,
    budget: int | None = None,
    start_method: str = "fork",
    what: str = "worker",
) -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed in ``workers`` processes.

    Args:
        fn: a picklable function (module level, or a bound method of a
            picklable object); sent to each worker once. Exceptions it raises
            are raised here, in order — as is the exception of a result that
            could not be pickled back (e.g. a tensor that does not fit
            ``/dev/shm``): callers that report their own failures as results
            can treat any exception as a transport failure.
        items: the inputs (small: each is pickled to a worker).
        workers: processes; 0 computes everything in this process, in order.
        window: most items submitted and not yet returned (default ``2·workers``).
        cost: an item's cost (e.g. pixels to decode), computed here before
            submitting it. With ``budget``, items are submitted only while the
            costs of those in flight sum to at most ``budget``; an item dearer
            than the whole budget runs alone.
        budget: see ``cost``; None: no bound beyond ``window``.
        start_method: ``fork`` (fast start; workers inherit ``fn``) or
            ``spawn``/``forkserver`` (``fn`` is pickled to each worker).
        what: how messages name a worker (``"decoding worker"``).

    Yields:
        ``fn(item)`` for each item, in the order of ``items``.

    Raises:
        WorkerError: a worker process died, or a result could not be pickled
            back; raised as soon as it happens, never a hang.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    window = window or 2 * workers
    source = iter(items)
    pending: deque[tuple[Future, int]] = deque()
    upcoming: tuple[T, int] | None = None  # drawn from items, not yet submitted
    exhausted = False
    in_flight = held = 0  # cost submitted and not yet returned, plus the item handed out
    context = multiprocessing.get_context(start_method)
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                   initializer=_install, initargs=(fn,))
    try:
        while True:
            # Asking for the next result means the caller is done with the last one.
            in_flight -= held
            held = 0
            while len(pending) < window:
                if upcoming is None:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    upcoming = (item, 0 if cost is None else max(0, int(cost(item))))
                item, price = upcoming
                if budget is not None and in_flight > 0 and in_flight + price > budget:
                    break  # wait for what is in flight to come back first
                pending.append((executor.submit(_call, item), price))
                in_flight += price
                upcoming = None
            if not pending:
                if exhausted:
                    return
                continue  # only reachable with nothing in flight: submits next time
            future, held = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool as err:
                raise WorkerError(
                    f"a {what} process died unexpectedly (killed for lack of memory, or a "
                    f"crash in a library); rerun with fewer workers, or with 0 to work in "
                    f"this process and see the error ({err})") from err
            yield result
    finally:
        # Also on an exception or when the caller stops early: queued items are
        # dropped, running ones finish, and no process is left behind.
        executor.shutdown(wait=True, cancel_futures=True)

