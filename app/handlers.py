"""Event handlers of the web demo: thin adapters from Gradio values to :mod:`segeig.app.logic`
(and :mod:`segeig.app.uploads`, :mod:`segeig.app.legend`).

Every handler is wrapped by :func:`guard` when wired up, which turns any
failure into a short ``gr.Error`` toast: the user never sees a stack trace or
a server path. Results of one "Segment" click live in the session's
``gr.State`` as ``{"results": [SegmentedImage, ...], "notices": [str, ...]}``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image
from segeig.app import legend, logic, uploads

from segeig.checkpoint import UNASSIGNED
from segeig.evaluation import format_names
from segeig.predictor import Segmenter

logger = logging.getLogger(__name__)

#: Download folders older than this are removed when a new one is made.
DOWNLOAD_MAX_AGE_S = 3600


def guard(fn: Callable) -> Callable:
    """Run a handler; turn every failure into a short user message (details to the log)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except logic.UserError as err:
            raise gr.Error(logic.safe_message(str(err)), print_exception=False) from None
        except MemoryError:
            logger.exception("out of memory in %s", fn.__name__)
            raise gr.Error("The server ran out of memory; try fewer or smaller images.",
                           print_exception=False) from None
        except Exception:  # noqa: BLE001 - anything else is a bug: log it, say little
            logger.exception("handler %s failed", fn.__name__)
            raise gr.Error("Something went wrong while processing your request; the server "
                           "log has the details.", print_exception=False) from None

    return wrapper


class DownloadArea:
    """Per-request folders for every picture and file a handler returns.

    Handlers return image *files*, never arrays: gradio 6 writes arrays into
    its content-addressed cache without a temporary name, so two concurrent
    requests producing the same picture can serve each other a half-written
    file (seen in the load test). Files are copied into the cache atomically.
    Gradio keeps its own copy, so a folder is only needed until the response
    is sent; old folders are swept when new ones are made, and the whole area
    is removed by :meth:`cleanup`.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="segeig-demo-", dir=root))
        atexit.register(self.cleanup)  # also when the server is stopped with Ctrl-C

    def new(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            if now - old.stat().st_mtime > DOWNLOAD_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder

    @staticmethod
    def save(folder: Path, name: str, image: np.ndarray) -> str:
        """Write ``image`` (H×W×3 uint8) as ``folder/name`` (PNG); returns the path."""
        path = folder / name
        Image.fromarray(image).save(path, format="PNG", compress_level=3)
        return str(path)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def model_summary(seg: Segmenter, how: str | None = None) -> str:
    """Markdown line describing the served model (no file paths)."""
    backbone = seg.config.get("backbone", {})
    parts = [f"backbone `{backbone.get('name', '?')}`"]
    if seg.num_eigenfunctions is not None:
        parts.append(f"K = {seg.num_eigenfunctions} eigenfunctions")
    parts.append("methods: " + ", ".join(
        f"{m} ({seg.num_segments(m)} segments)" for m in logic.available_methods(seg)))
    if seg.class_map is not None:
        names = seg.class_map.names
        shown = ", ".join(map(logic.md_escape, names[:8])) + (", …" if len(names) > 8 else "")
        parts.append(f"{len(names)} named classes ({shown}) for "
                     f"{', '.join(seg.class_map.methods)}")
    if how:
        parts.append(how)
    text = "**Model:** " + " · ".join(parts)
    if backbone.get("weights_origin", backbone.get("weights")) == "random":
        text += ("\n\n⚠️ **This model's backbone has RANDOM weights: segments are meaningless.** "
                 "It is meant for tests and smoke runs only.")
    return text


class DemoHandlers:
    """The event handlers, bound to one segmenter and the demo's limits."""

    def __init__(self, seg: Segmenter, max_side: int, max_images: int,
                 downloads: DownloadArea) -> None:
        self.seg = seg
        self.max_side = max_side
        self.max_images = max_images
        self.downloads = downloads
        # One model run at a time (see logic.segment_image); the queue's
        # concurrency still overlaps CRF, rendering and file writing.
        self.model_lock = threading.Lock()

    # -- segmentation tab ----------------------------------------------------
    def segment(self, files: Sequence[str] | None, method: str, crf: bool, opacity: float,
                n_segments: float, progress: gr.Progress = gr.Progress()) -> tuple:
        """Read, segment and render every uploaded image."""
        paths = [f for f in (files or []) if f]
        if not paths:
            raise logic.UserError("Upload at least one image (or pick an example) first.")
        notices = []
        if len(paths) > self.max_images:
            notices.append(f"Only the first {self.max_images} of {len(paths)} images were "
                           "processed.")
            paths = paths[: self.max_images]
        results, failed = [], []
        for i, path in enumerate(paths):
            progress((i, len(paths)), desc=f"segmenting {logic.display_name(path)}")
            try:
                image, notice = uploads.read_upload(path, self.max_side)
            except logic.UserError as err:
                failed.append(str(err))
                continue
            results.append(logic.segment_image(
                self.seg, image, logic.display_name(path), method, bool(crf), notice,
                lock=self.model_lock))
        if not results:
            raise logic.UserError(" ".join(failed))
        for message in failed:
            gr.Warning(logic.safe_message(f"skipped {message}"))
        notices = [f"Skipped {m}" for m in failed] + notices
        state = {"results": results, "notices": notices}
        choices = [(f"{i + 1}. {r.name}", i) for i, r in enumerate(results)]
        selector = gr.Dropdown(choices=choices, value=0, interactive=len(results) > 1)
        return (state, selector, *self._view(state, 0, opacity, n_segments))

    def view(self, state: dict | None, selected: int | None, opacity: float,
             n_segments: float) -> tuple:
        """Re-render the results (opacity, number of segments or selection changed)."""
        if not state:
            return (gr.skip(),) * 9
        return self._view(state, selected, opacity, n_segments)

    def _view(self, state: dict, selected: int | None, opacity: float,
              n_segments: float) -> tuple:
        results: list[logic.SegmentedImage] = state["results"]
        index = _clamp_index(selected, len(results))
        folder = self.downloads.new()
        gallery, files = [], []
        current = None
        for i, result in enumerate(results):
            view = logic.view_of(self.seg, result, n_segments)
            shown = logic.render_overlay(result, view, opacity)
            labels_png, overlay_png = logic.write_downloads(folder, i, result, view, shown)
            files += [str(labels_png), str(overlay_png)]
            gallery.append((str(overlay_png), f"{i + 1}. {result.name}"))
            if i == index:
                current = (result, view, str(overlay_png))
        result, view, overlay_png = current
        entries, hidden = legend.legend_for(view)
        if any(logic.has_classes(self.seg, r.method) for r in results):
            # Class label maps are only readable with their names (and colours).
            files.append(_write_text(folder / "classes.txt",
                                     "".join(f"{n}\n" for n in self.seg.class_map.names)))
            files.append(self.downloads.save(folder, "legend.png", legend.legend_picture(entries)))
        views = folder / "view"
        views.mkdir()
        table = legend.segment_table(view.merged)
        choices = [(legend.caption(view, *row), row[0]) for row in table]
        count = sum(1 for row in table if not (view.classes and row[0] == UNASSIGNED))
        kind = ("class" if count == 1 else "classes") if view.classes else (
            "segment" if count == 1 else "segments")
        lines = [f"**{result.name}** ({result.image.shape[1]}×{result.image.shape[0]}): "
                 f"{count} {kind}, method *{result.method}*{', CRF on' if result.crf else ''}."]
        if view.classes:
            lines.append("Class names and colours come from the checkpoint's class map "
                         "(`segeig label`); *Number of segments* does not apply to them.")
        if hidden:
            lines.append(f"The legend lists the {len(entries)} largest; "
                         f"{hidden} smaller ones are not listed.")
        lines += [n for n in [result.notice] if n] + state["notices"]
        return (
            "\n\n".join(lines),
            (self.downloads.save(views, "before.png", result.image), overlay_png),
            legend.legend_html(entries),
            gallery,
            files,
            overlay_png,
            gr.Dropdown(choices=choices, value=None),
            None,
            "",
        )

    # -- eigenfunctions tab ----------------------------------------------------
    def eigen(self, state: dict | None, selected: int | None, n: float) -> tuple:
        """Heatmaps of the top eigenfunctions of the selected image."""
        if not state:
            return None, "Segment an image first."
        if self.seg.num_eigenfunctions is None:
            return None, "This checkpoint has no eigenfunction head (k-means baseline only)."
        result = state["results"][_clamp_index(selected, len(state["results"]))]
        grid = logic.eigen_grid_image(self.seg, result, int(n), lock=self.model_lock)
        grid = self.downloads.save(self.downloads.new(), "eigenfunctions.png", grid)
        _, lam = logic.eigen_order(self.seg)
        shown = f"First {min(int(n), len(result.eigen))} of {len(result.eigen)} head outputs"
        if lam is None:
            note = (f"{shown} of *{result.name}*, in the head's own order. This checkpoint "
                    "records no measured eigenvalues (it predates segeig 0.2), so the order "
                    "says nothing about their size.")
        else:
            note = (f"{shown} of *{result.name}*, ordered by eigenvalue λ (largest first), as "
                    "measured on the training images after training.")
        return grid, note

    def explain(self, state: dict | None, selected: int | None, n_segments: float,
                seg_id: int | None) -> tuple:
        """Mask and description of one segment (or class) of the selected image."""
        if not state or seg_id is None:
            return None, ""
        result = state["results"][_clamp_index(selected, len(state["results"]))]
        view = logic.view_of(self.seg, result, n_segments)
        mask = logic.mask_view(result.image, view.merged.labels, int(seg_id))
        mask = self.downloads.save(self.downloads.new(), f"segment_{int(seg_id)}.png", mask)
        return mask, logic.explain_segment(self.seg, result, view, int(seg_id),
                                           lock=self.model_lock)

    def click(self, state: dict | None, selected: int | None, n_segments: float,
              evt: gr.SelectData) -> tuple:
        """A click on the overlay selects the segment under the pointer."""
        if not state or evt is None or evt.index is None:
            return gr.skip(), None, ""
        result = state["results"][_clamp_index(selected, len(state["results"]))]
        view = logic.view_of(self.seg, result, n_segments)
        x, y = evt.index[:2]
        seg_id = logic.segment_at(view.merged, int(x), int(y))
        mask, text = self.explain(state, selected, n_segments, seg_id)
        return seg_id, mask, text

    def name_segment(self, state: dict | None, names: dict | None, selected: int | None,
                     n_segments: float, seg_id: int | None, text: str | None) -> tuple:
        """Name the selected segment; returns the names, the names file and a note.

        Names are kept per method, by the model's segment ids (a merged segment
        names all its members), in the format ``segeig label --names`` reads.
        """
        if not state or seg_id is None:
            raise logic.UserError("Click a segment (or pick one from the list) first.")
        result = state["results"][_clamp_index(selected, len(state["results"]))]
        if logic.has_classes(self.seg, result.method):
            raise logic.UserError(f"The checkpoint already names the classes of "
                                  f"{result.method}; choose a method without a class map to "
                                  "name segments.")
        name = logic.clean_name(text)
        view = logic.view_of(self.seg, result, n_segments)
        if int(seg_id) not in view.merged.members:
            raise logic.UserError(f"segment {int(seg_id)} is not in this image")
        names = dict(names or {})
        named = dict(names.get(result.method, {}))
        for member in view.merged.members[int(seg_id)]:
            named[member] = name
        names[result.method] = named
        path = self.downloads.new() / f"names-{logic.safe_stem(result.method)}.json"
        _write_text(path, format_names(named))
        listing = ", ".join(f"{k} → {logic.md_escape(v)}" for k, v in sorted(named.items()))
        note = (f"Named {len(named)} of {self.seg.num_segments(result.method)} segments of "
                f"*{result.method}*: {listing}.\n\nDownload the file and run "
                f"`segeig label --checkpoint CKPT --names {path.name} --method {result.method} "
                "--out DIR` to give the checkpoint these names.")
        return names, str(path), note


def _write_text(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _clamp_index(selected: Any, count: int) -> int:
    try:
        index = int(selected)
    except (TypeError, ValueError):
        index = 0
    return min(max(index, 0), count - 1)
