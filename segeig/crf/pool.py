"""Refine many images: CRF jobs in worker processes, or inline on an accelerator."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from types import TracebackType

import numpy as np
import torch

from segeig.crf.params import CRFParams
from segeig.crf.refine import crf_labels, resolve_backend
from segeig.resample import topk_probs

logger = logging.getLogger(__name__)

__all__ = ["CRFPool"]


def _crf_worker(
    image: np.ndarray,
    probs: np.ndarray,
    class_ids: np.ndarray | None,
    params: CRFParams,
    backend: str = "densecrf",
    device: object = None,
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    # Top-level so it pickles under the "spawn" start method. The label subset
    # was already chosen in the parent to shrink what crosses the process pipe.
    labels = crf_labels(image, probs, params, max_labels=None, backend=backend, device=device,
                        out_size=out_size)
    return class_ids[labels] if class_ids is not None else labels


def _one_thread() -> None:
    # A torch CRF per worker process: one thread each, or N workers × all
    # cores of threads fight over the same cores.
    torch.set_num_threads(1)


def _is_cpu(device: object) -> bool:
    return device is None or str(device).split(":")[0] == "cpu"


class CRFPool:
    """Run :func:`~segeig.crf.refine.crf_labels` over many images.

    pydensecrf, and the torch backend on CPU, refine one image per core, so
    images are spread over worker processes (each running one torch thread).
    The torch backend on an accelerator runs inline in this process: the
    device, not the cores, does the work. Workers start with the ``spawn``
    method by default: forking a parent that already runs torch/OpenMP threads
    can deadlock. With spawn each worker re-imports ``segeig.crf`` (and the
    ``segeig`` package), so keep ``segeig/__init__.py`` light for fast start-up.

    Args:
        workers: number of processes; ``0`` runs everything inline in the caller.
        params: CRF hyper-parameters; ``CRFParams()`` if None.
        max_labels: passed to :func:`crf_labels`; the label subset is picked in
            the parent before sending, so only ``max_labels`` planes are pickled.
        start_method: multiprocessing start method for the workers.
        backend: ``auto``, ``torch`` or ``densecrf`` (:func:`resolve_backend`).
        device: device of the torch backend (default CPU).

    Example::

        with CRFPool(workers=4) as pool:
            labels = pool.map(images, probs_list)
    """

    def __init__(
        self,
        workers: int,
        params: CRFParams | None = None,
        max_labels: int | None = 32,
        start_method: str = "spawn",
        backend: str = "auto",
        device: object = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = int(workers)
        self.params = params or CRFParams()
        self.max_labels = max_labels
        self.start_method = start_method
        self.backend, self.device = backend, device
        self._resolved: str | None = None
        self._executor: Executor | None = None

    def resolved_backend(self) -> str:
        """The backend jobs run with (resolved once; raises as :func:`resolve_backend`)."""
        if self._resolved is None:
            self._resolved = resolve_backend(self.backend, self.device)
            if self._resolved == "torch" and not _is_cpu(self.device) and self.workers:
                logger.info("torch CRF on %s: refining in this process, not %d workers",
                            self.device, self.workers)
                self.workers = 0
        return self._resolved

    def __enter__(self) -> CRFPool:
        self._ensure_started()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ensure_started(self) -> None:
        if self.workers > 0 and self._executor is None:
            backend = self.resolved_backend()  # fails fast in the parent, with the fix
            if self.workers == 0:  # the torch backend on an accelerator runs inline
                return
            ctx = multiprocessing.get_context(self.start_method)
            init = _one_thread if backend == "torch" else None
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx,
                                                 initializer=init)

    def close(self) -> None:
        """Shut the worker processes down (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(
        self, image: np.ndarray, probs: np.ndarray, class_ids: np.ndarray | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> Future:
        """Refine one image asynchronously (inline when ``workers == 0``).

        Args:
            image: uint8 ``(H, W, 3)`` RGB.
            probs: float ``(M, H, W)`` softmax probabilities (reduced to
                ``max_labels`` here when larger).
            class_ids: int64 ``(M,)`` original ids of the planes of ``probs``
                (e.g. from :meth:`segeig.predictor.Segmenter.crf_inputs`), or None
                when plane i is label i.
            out_size: size of the returned labels (marginals resampled
                bilinearly, see :func:`crf_labels`); default ``(H, W)``.

        Returns:
            A future of the int64 ``out_size`` label map in original ids.
        """
        probs = np.asarray(probs)
        if self.max_labels is not None and probs.ndim == 3 and probs.shape[0] > self.max_labels:
            probs, kept = topk_probs(probs, self.max_labels)
            class_ids = kept if class_ids is None else np.asarray(class_ids)[kept]
        job = (np.asarray(image), probs, class_ids, self.params, self.resolved_backend(),
               self.device, out_size)
        if self.workers == 0:
            done: Future = Future()
            try:
                done.set_result(_crf_worker(*job))
            except Exception as exc:  # noqa: BLE001 - delivered through the future
                done.set_exception(exc)
            return done
        self._ensure_started()
        if self._executor is None:  # unreachable; keeps type checkers honest
            raise RuntimeError("CRF worker pool failed to start")
        return self._executor.submit(_crf_worker, *job)

    def map(
        self, images: Sequence[np.ndarray], probs_list: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """Refine each ``(image, probs)`` pair; output order follows input order.

        Args:
            images: uint8 ``(H_i, W_i, 3)`` RGB images.
            probs_list: float ``(K, H_i, W_i)`` softmax probabilities, one per image.

        Returns:
            int64 ``(H_i, W_i)`` label maps with original label ids.
        """
        if len(images) != len(probs_list):
            raise ValueError(f"{len(images)} images but {len(probs_list)} probability maps")
        jobs = []
        for image, probs in zip(images, probs_list, strict=True):
            probs = np.asarray(probs)
            class_ids = None
            if self.max_labels is not None and probs.ndim == 3 and probs.shape[0] > self.max_labels:
                probs, class_ids = topk_probs(probs, self.max_labels)
            jobs.append((np.asarray(image), probs, class_ids, self.params,
                         self.resolved_backend(), self.device))
        if self.workers == 0:
            return [_crf_worker(*job) for job in jobs]
        self._ensure_started()
        executor = self._executor
        if executor is None:  # unreachable; keeps type checkers honest
            raise RuntimeError("CRF worker pool failed to start")
        futures = [executor.submit(_crf_worker, *job) for job in jobs]
        return [f.result() for f in futures]
