"""The batch segmentation engine: decode in workers, score on the device, CRF and write in parallel.

Stages, overlapped so the device rarely waits:

1. **decode** — :func:`segeig.imageio.read_image` in worker processes
   (``workers``; :func:`segeig.batch.inputs.decode_images`: no shared memory,
   at most 2^27 pixels in flight, a dead worker stops the run with an error);
   an unreadable file becomes a failure record.
2. **score** — on the device, in the main process: each image is brought to
   the checkpoint's working resolution (:meth:`Segmenter.working_image`);
   images of the same working size are stacked into batches of up to
   ``batch_size``; those with a side still above ``max_side`` go alone through
   :meth:`Segmenter.patch_scores` (sliding windows, bounded memory). Labels
   come back at each image's original size.
3. **refine** (``crf``) — :class:`segeig.crf.CRFPool`: worker processes, or
   inline for the torch backend on an accelerator; at the working size
   (``crf_side``), marginals resampled to the image's size.
4. **write** — label map, overlay and scores in a thread pool, each file
   atomically (see :mod:`segeig.batch.outputs`).

Images whose requested outputs all exist are skipped before decoding (resume),
unless ``overwrite``. The settings named here are those of
:class:`segeig.batch.options.SegmentOptions`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segeig.batch.inputs import InputFile, decode_images
from segeig.batch.options import SegmentOptions, resolve_method, uses_classes
from segeig.batch.outputs import OutputPathError, output_paths, save_overlay, save_scores
from segeig.checkpoint import UNASSIGNED
from segeig.crf import CRFParams, CRFPool, prepare_crf
from segeig.labelmaps import MAX_SEGMENTS, save_segments
from segeig.predictor import Segmenter
from segeig.resample import pixel_labels
from segeig.transforms import to_tensor
from segeig.viz import legend_image, make_palette

logger = logging.getLogger(__name__)

__all__ = ["ImageResult", "segment_files"]


@dataclass
class ImageResult:
    """What happened to one input.

    Attributes:
        path: the input file (as given).
        key: its output key; outputs are ``DIR/labels/KEY.png`` etc.
        status: ``"segmented"``, ``"skipped"`` (outputs existed) or ``"failed"``.
        reason: why it failed (None otherwise).
        size: ``(H, W)`` of the decoded image, when decoded.
    """

    path: str
    key: str
    status: str
    reason: str | None = None
    size: tuple[int, int] | None = None


@dataclass
class _Job:
    index: int
    item: InputFile
    image: np.ndarray
    paths: dict[str, Path]
    scores: np.ndarray | None = None  # float16 S×h×w when save_probs
    work: np.ndarray | None = None  # the image at the working resolution


class _FutureQueue(deque[tuple[_Job, Future]]):
    """``(job, future)`` pairs of one stage (CRF, writing), in submission order.

    :meth:`take` pops from the front only, so images move on in the order they
    were submitted, and blocks on the oldest once more than ``bound`` are pending.
    """

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound

    def take(self, wait: bool = False) -> Iterator[tuple[_Job, Future]]:
        """Pop from the front while ``wait`` (all), over ``bound``, or the oldest is done."""
        while self and (wait or len(self) > self.bound or self[0][1].done()):
            yield self.popleft()


class _Run:
    """State of one :func:`segment_files` call (kept out of the function for readability)."""

    def __init__(self, segmenter: Segmenter, options: SegmentOptions,
                 emit: Callable[[ImageResult], None], crf_pool: CRFPool | None,
                 writer: ThreadPoolExecutor | None) -> None:
        self.seg, self.opt, self.emit = segmenter, options, emit
        self.classes = segmenter.class_map if uses_classes(segmenter, options) else None
        self.method = resolve_method(segmenter, options.method, self.classes is not None)
        self.num_segments = segmenter.num_segments(self.method)
        if self.num_segments > MAX_SEGMENTS:
            raise ValueError(f"{self.num_segments} segments do not fit a 16-bit label PNG")
        self.palette = make_palette(self.num_segments)
        self.legends: dict[tuple[int, ...], np.ndarray] = {}
        if self.classes is not None:
            # Class label maps: pixel = class index, 255 = unassigned; one
            # palette PNG for any class count (at most 255 classes).
            self.lookup = self.classes.lookup(self.method)
            self.palette = self.classes.label_palette()
        self.crf_pool, self.writer = crf_pool, writer
        bound = 2 * max(1, options.workers)
        self.crf_jobs = _FutureQueue(bound)
        self.write_jobs = _FutureQueue(bound)
        self.groups: dict[tuple[int, int], list[_Job]] = {}

    # -- results ---------------------------------------------------------
    def fail(self, job: _Job, reason: str) -> None:
        logger.warning("failed: %s: %s", job.item.path, reason)
        size = tuple(job.image.shape[:2]) if job.image.size else None
        self.emit(ImageResult(str(job.item.path), job.item.key, "failed", reason, size))

    # -- scoring ---------------------------------------------------------
    def add(self, job: _Job) -> None:
        job.work = self.seg.working_image(job.image, self.opt.resolution)
        height, width = job.work.shape[:2]
        big = self.opt.max_side is not None and max(height, width) > self.opt.max_side
        if self.opt.batch_size <= 1 or big:
            self.score([job])
            return
        group = self.groups.setdefault((height, width), [])
        group.append(job)
        if len(group) >= self.opt.batch_size:
            self.score(self.groups.pop((height, width)))
        elif sum(len(g) for g in self.groups.values()) >= 4 * self.opt.batch_size:
            # Bound the images held back waiting for same-size partners.
            oldest = min(self.groups, key=lambda s: self.groups[s][0].index)
            self.score(self.groups.pop(oldest))

    def flush(self) -> None:
        for size in sorted(self.groups, key=lambda s: self.groups[s][0].index):
            self.score(self.groups[size])
        self.groups.clear()

    def score(self, jobs: list[_Job]) -> None:
        if len(jobs) > 1:
            try:
                batch = torch.stack([to_tensor(j.work) for j in jobs])
                scores = self.seg.forward(batch, self.method).scores
            except (RuntimeError, ValueError) as err:  # e.g. out of device memory
                logger.warning("batch of %d failed (%s); retrying one by one", len(jobs), err)
                for job in jobs:
                    self.score([job])
                return
            for job, s in zip(jobs, scores, strict=True):
                self.finish_scores(job, s)
            return
        job = jobs[0]
        try:
            s = self.seg.patch_scores(job.work, self.method, max_side=self.opt.max_side)
        except (RuntimeError, ValueError) as err:
            self.fail(job, f"scoring failed ({err})")
            return
        self.finish_scores(job, s)

    def finish_scores(self, job: _Job, scores: torch.Tensor) -> None:
        """``scores``: ``S×h×w`` on the device → labels (now or via the CRF pool)."""
        size = job.image.shape[:2]
        in_size = job.work.shape[:2]
        job.work = None  # not needed any more; free it before the CRF queue
        try:
            if self.opt.save_probs:
                job.scores = scores.to(torch.float16).cpu().numpy()
            if self.crf_pool is None:
                # Banded, 1-2 bytes per pixel: a 121 MP image stays within memory.
                self.write(job, pixel_labels(scores, self.seg.patch_size, in_size,
                                             out_size=size))
                return
            side = self.opt.crf_side or self.seg.crf_side
            image, probs, ids = prepare_crf(job.image, scores, self.seg.patch_size,
                                            in_size=in_size, side=side,
                                            max_labels=self.opt.crf_max_labels)
            self.crf_jobs.append((job, self.crf_pool.submit(image, probs, ids, out_size=size)))
        except (RuntimeError, ValueError, MemoryError) as err:
            self.fail(job, f"scoring failed ({err})")
        self.drain_crf()

    # -- CRF and writing ----------------------------------------------------
    def drain_crf(self, wait: bool = False) -> None:
        for job, future in self.crf_jobs.take(wait):
            try:
                labels = future.result()
            except Exception as err:  # noqa: BLE001 - reported per image
                self.fail(job, f"CRF failed ({type(err).__name__}: {err})")
                continue
            self.write(job, labels.astype(np.int32))

    def legend(self, classes: np.ndarray) -> np.ndarray:
        """Legend picture of the classes present in a class label map (cached per set)."""
        present = np.flatnonzero(np.bincount(classes.ravel(), minlength=256)[:UNASSIGNED])
        key = tuple(int(c) for c in present)
        if key not in self.legends:
            names = [self.classes.names[c] for c in key] or ["(no class)"]
            colours = self.palette[list(key)] if key else np.zeros((1, 3), np.uint8)
            self.legends[key] = legend_image(names, colours, max_rows=12)
        return self.legends[key]

    def write(self, job: _Job, labels: np.ndarray) -> None:
        legend = None
        if self.classes is not None:
            labels = self.lookup[labels]
            # Drawn here, in the main thread: matplotlib is not thread-safe.
            legend = self.legend(labels) if self.opt.overlay else None
        if self.writer is None:
            self.emit(self.write_files(job, labels, legend))
            return
        self.write_jobs.append((job, self.writer.submit(self.write_files, job, labels, legend)))
        self.drain_writes()

    def drain_writes(self, wait: bool = False) -> None:
        for _, future in self.write_jobs.take(wait):
            self.emit(future.result())  # write_files never raises

    def write_files(self, job: _Job, labels: np.ndarray,
                    legend: np.ndarray | None = None) -> ImageResult:
        """Write the missing (or, with overwrite, all) outputs; the label map last.

        ``labels``: cluster ids, or class indices (255 = unassigned) with class maps.
        """
        size = tuple(job.image.shape[:2])
        paths, opt = job.paths, self.opt
        classes = self.classes is not None
        try:
            if "overlay" in paths and (opt.overwrite or not paths["overlay"].exists()):
                save_overlay(job.image, labels, paths["overlay"], self.palette,
                             opt.overlay_alpha, UNASSIGNED if classes else None, legend)
            if "probs" in paths and (opt.overwrite or not paths["probs"].exists()):
                save_scores(paths["probs"], job.scores, patch_size=self.seg.patch_size,
                            image_size=size, method=self.method)
            if opt.overwrite or not paths["labels"].exists():
                save_segments(labels, paths["labels"], 256 if classes else self.num_segments,
                              self.palette)
        except (OSError, ValueError) as err:
            logger.warning("failed to write outputs of %s: %s", job.item.path, err)
            return ImageResult(str(job.item.path), job.item.key, "failed",
                               f"writing outputs failed ({err})", size)
        return ImageResult(str(job.item.path), job.item.key, "segmented", None, size)


def segment_files(
    segmenter: Segmenter,
    files: Sequence[InputFile],
    out_dir: str | Path,
    options: SegmentOptions | None = None,
    progress: Callable[[ImageResult], None] | None = None,
    crf_params: CRFParams | None = None,
) -> list[ImageResult]:
    """Segment ``files`` into ``out_dir`` (layout: :mod:`segeig.batch.outputs`).

    Args:
        segmenter: a loaded model (:func:`segeig.load`).
        files: from :func:`segeig.batch.inputs.expand_inputs` (and maybe a shard of them).
        out_dir: output directory (created as needed).
        options: see :class:`segeig.batch.options.SegmentOptions`.
        progress: called in this thread once per input as soon as it is done
            (any order); raising from it (e.g. KeyboardInterrupt) stops the run
            cleanly: files already written stay complete, none is half-written.
        crf_params: dense CRF hyper-parameters (default :class:`CRFParams`).

    Returns:
        One :class:`ImageResult` per input, in the order of ``files``.

    Raises:
        ValueError: the method is not in the checkpoint. (Unreadable inputs, unsafe
            output paths and failed writes are per-image failures, not errors.)
    """
    options = options or SegmentOptions()
    if options.batch_size < 1 or options.workers < 0:
        raise ValueError("batch_size must be >= 1 and workers >= 0")
    fmt = options.overlay_format if options.overlay else None
    todo: list[_Job | None] = []
    results: dict[int, ImageResult] = {}
    order = {f.key: i for i, f in enumerate(files)}

    def emit(result: ImageResult) -> None:
        results[order[result.key]] = result
        if progress is not None:
            progress(result)

    empty = np.zeros((0, 0, 3), np.uint8)
    for i, item in enumerate(files):
        try:
            paths = output_paths(out_dir, item.key, fmt, options.save_probs)
        except OutputPathError as err:
            logger.warning("failed: %s: %s", item.path, err)
            emit(ImageResult(str(item.path), item.key, "failed", str(err)))
            todo.append(None)
            continue
        if not options.overwrite and all(p.exists() for p in paths.values()):
            emit(ImageResult(str(item.path), item.key, "skipped"))
            todo.append(None)
        else:
            todo.append(_Job(i, item, empty, paths))
    jobs = [j for j in todo if j is not None]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        crf_pool = None
        if options.crf and jobs:
            crf_pool = stack.enter_context(
                CRFPool(options.workers, params=crf_params, max_labels=None,
                        backend=options.crf_backend, device=segmenter.device))
        writer = None
        if options.workers > 0 and jobs:
            writer = ThreadPoolExecutor(max_workers=min(4, options.workers))
            # cancel_futures: on Ctrl-C, queued writes are dropped; running ones finish.
            stack.callback(writer.shutdown, wait=True, cancel_futures=True)
        run = _Run(segmenter, options, emit, crf_pool, writer)
        # Closed on the way out, also on Ctrl-C: the decoding processes stop then.
        decoded = stack.enter_context(contextlib.closing(
            decode_images([j.item.path for j in jobs], options.workers)))
        for index, image, reason in decoded:
            job = jobs[index]
            if image is None:
                run.fail(job, reason or "unreadable")
                continue
            job.image = image
            run.add(job)
            run.drain_crf()
            run.drain_writes()
        run.flush()
        run.drain_crf(wait=True)
        run.drain_writes(wait=True)
    if jobs:
        elapsed = time.perf_counter() - started
        logger.info("processed %d images in %.1f s", len(jobs), elapsed)
    return [results[i] for i in sorted(results)]
