"""The demo's logic, free of any web framework so it can be unit-tested.

Every function takes numpy arrays / a :class:`segeig.predictor.Segmenter` and
returns numpy arrays, text or file paths; :mod:`segeig.app.ui` only wires them to
Gradio components. Errors meant for the user are raised as :class:`UserError`
with a message that never names a server path.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segeig.checkpoint import MAX_NAME_CHARS, UNASSIGNED
from segeig.cluster import MergeResult, merge_label_map, segment_profiles
from segeig.imageio import ImageReadError, image_size, read_image
from segeig.labelmaps import save_segments
from segeig.predictor import Segmenter
from segeig.viz import eigenfunction_grid, legend_image, make_palette, overlay

logger = logging.getLogger(__name__)

#: Refuse uploads with more pixels than this before decoding them (~67 MP).
MAX_PIXELS = 1 << 26
#: At most this many segments get a legend entry (the largest ones).
LEGEND_ENTRIES = 24
#: Preferred order of methods in the UI; the paper's best row first.
METHOD_ORDER = ("eigen+kmeans", "eigen", "kmeans")


class UserError(Exception):
    """A problem to show to the user as is (short, actionable, no server paths)."""


# -- messages ---------------------------------------------------------------
_ABS_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\:]+[/\\])+([^\s'\"/\\:,;)]*)")


def safe_message(text: str, limit: int = 300) -> str:
    """``text`` with absolute paths cut to their last component, on one short line.

    Library errors name files for command-line users; a web user must not
    learn the server's directory layout, so ``/tmp/gradio/ab12/cat.png``
    becomes ``cat.png``.
    """
    text = _ABS_PATH.sub(lambda m: m.group(1) or "<path>", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_escape(text: str) -> str:
    """``text`` with Markdown and HTML punctuation backslash-escaped, shown literally
    (class names come from a checkpoint: no links, no markup)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~<>&])", r"\\\1", text)


def display_name(path: str | Path) -> str:
    """The name a user gave an uploaded file (its last path component)."""
    return Path(str(path)).name or "image"


def safe_stem(name: str, limit: int = 60) -> str:
    """A file-name stem made of ``[A-Za-z0-9._-]`` only (never empty, never a path)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "image"
    return stem[:limit]


# -- inputs -------------------------------------------------------------------
class PixelBudget:
    """Bounds the pixels that the demo's request threads decode at once.

    Decoding needs memory in proportion to the pixels decoded (about 7 bytes
    per pixel at the peak of :func:`segeig.imageio.read_image`), so the server
    bounds its memory with one budget shared by all requests.
    A single image larger than the whole budget still gets decoded, alone.

    Args:
        max_pixels: pixels that may be in decoding at once (>= 1).

    Example::

        budget = PixelBudget(2**27)
        with budget.hold(width * height, timeout=30):
            image = read_image(path)
    """

    def __init__(self, max_pixels: int) -> None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.max_pixels = int(max_pixels)
        self.in_use = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, timeout: float | None = None) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the ``with`` block.

        Raises:
            TimeoutError: the pixels did not become free within ``timeout`` seconds.
        """
        want = min(max(int(pixels), 1), self.max_pixels)
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + want <= self.max_pixels, timeout):
                raise TimeoutError(f"{want} pixels of decoding budget not free within "
                                   f"{timeout} s ({self.in_use} of {self.max_pixels} in use)")
            self.in_use += want
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= want
                self._cond.notify_all()


#: Pixels decoded at once by all requests together. Decoding holds ~7 bytes per
#: pixel until the image is downscaled, so two 67 MP PNG bombs arriving together
#: take turns instead of needing ~1 GB at once; JPEGs decode at reduced size.
DECODE_BUDGET = PixelBudget(MAX_PIXELS)
#: A request waiting longer than this for the decoding budget is turned away.
DECODE_WAIT_S = 60.0


def read_upload(path: str | Path, max_side: int,
                budget: PixelBudget | None = None) -> tuple[np.ndarray, str | None]:
    """Read an uploaded image, downscaled so its longer side is at most ``max_side``.

    The image is decoded straight to that size where the format allows (JPEG)
    and otherwise reduced right after decoding, while holding its pixels of
    ``budget`` (default :data:`DECODE_BUDGET`, shared by all requests).

    Returns:
        ``(image H×W×3 uint8, notice)``; ``notice`` says how the image was
        downscaled, or is None when it was not.

    Raises:
        UserError: the file is not a readable image (the message names the
            upload by its own name only), or the server is too busy decoding.
    """
    name = display_name(path)
    budget = budget or DECODE_BUDGET
    try:
        width, height = image_size(path)
        if width * height > MAX_PIXELS:  # refused from the header, before any decoding
            raise UserError(f"{name}: {width}×{height} pixels is more than this demo reads "
                            f"({MAX_PIXELS} pixels); downscale it first")
        with budget.hold(width * height, timeout=DECODE_WAIT_S):
            image = read_image(path, max_pixels=MAX_PIXELS, max_side=max_side)
    except ImageReadError as err:
        raise UserError(f"{name}: {safe_message(err.reason)}") from err
    except TimeoutError:
        raise UserError(f"{name}: the server is busy reading other images; try again in a "
                        "minute.") from None
    small_h, small_w = image.shape[:2]
    if (small_w > small_h) != (width > height) and width != height:
        width, height = height, width  # EXIF orientation turned it
    if max(height, width) <= max_side:
        return image, None
    notice = (f"{name} was downscaled from {width}×{height} to "
              f"{small_w}×{small_h} (max side {max_side} px)")
    return image, notice


def available_methods(seg: Segmenter) -> list[str]:
    """The checkpoint's methods, in :data:`METHOD_ORDER`."""
    return [m for m in METHOD_ORDER if m in seg.methods]


# -- segmentation ----------------------------------------------------------------
@dataclass
class SegmentedImage:
    """Everything the UI shows for one image, computed once per "Segment" click.

    Attributes:
        name: the uploaded file's own name.
        image: ``H×W×3`` uint8 RGB, as segmented (after any downscaling).
        labels: ``H×W`` int32 segment ids in ``[0, S)`` (after CRF if on).
        ids, profiles, sizes: segments present, their ``M×S`` score profiles
            and pixel counts (:func:`segeig.cluster.segment_profiles`).
        method: scoring method used; ``crf``: whether CRF refined the labels.
        notice: downscaling notice or None.
        eigen: ``K×h×w`` eigenfunction values (sorted by eigenvalue), filled
            lazily by :func:`eigenfunctions_of`.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    profiles: np.ndarray
    sizes: np.ndarray
    method: str
    crf: bool
    notice: str | None = None
    eigen: np.ndarray | None = None


def segment_image(seg: Segmenter, image: np.ndarray, name: str, method: str, crf: bool,
                  notice: str | None = None,
                  lock: AbstractContextManager | None = None) -> SegmentedImage:
    """Segment one image with one forward pass.

    ``image`` (whose side the caller has already bounded) is brought to the
    checkpoint's working resolution and processed in a single pass, so no
    sliding window is used; labels come back at the image's size. The same pass
    gives the eigenfunction values for the eigenfunctions tab when the method
    runs the head. ``lock`` (e.g. a ``threading.Lock``) is held around the
    model's forward pass only, so concurrent requests run the CRF and
    rendering in parallel but never two model runs at once.
    """
    if method not in seg.methods:
        raise UserError(f"method {method!r} is not available; this model has "
                        f"{', '.join(available_methods(seg))}")
    # The head runs at the checkpoint's working resolution; labels come back
    # at the (already bounded) upload's own size.
    work = seg.working_image(image)
    with lock or nullcontext():
        scores, values = seg.patch_maps(work, method)
    labels = seg.labels_from_scores(image, scores, crf, in_size=work.shape[:2])
    eigen = None if values is None else _sorted_eigen(seg, values)
    ids, profiles, sizes = segment_profiles(labels, scores, seg.patch_size, work.shape[:2])
    return SegmentedImage(name, image, labels, ids, profiles, sizes, method, crf, notice, eigen)


def merge(result: SegmentedImage, n_segments: int | None) -> MergeResult:
    """The result's labels merged to at most ``n_segments`` (0 or None: keep all)."""
    n = int(n_segments) if n_segments else None
    return merge_label_map(result.labels, result.ids, result.profiles, result.sizes, n)


def palette_for(seg: Segmenter, method: str) -> np.ndarray:
    """One colour per segment id of ``method``, the same in every image."""
    return make_palette(seg.num_segments(method))


@dataclass
class LabelMapView:
    """One result as shown: a label map (merged segments, or classes) with colours and names.

    Attributes:
        merged: the label map shown (``H×W`` int32) and, per shown id, the
            model's segment ids it covers.
        palette: uint8 colours indexed by shown id.
        names: shown id → class name (255 → ``"unassigned"``) when ``classes``;
            None for segment ids.
        classes: ids are class indices of the checkpoint's class map (merging
            does not apply).
    """

    merged: MergeResult
    palette: np.ndarray
    names: dict[int, str] | None = None
    classes: bool = False

    def name(self, shown_id: int) -> str:
        """``"sky"`` for a class, ``"segment 12"`` for a segment id."""
        if self.names is not None:
            return self.names.get(shown_id, f"class {shown_id}")
        return f"segment {shown_id}"


def has_classes(seg: Segmenter, method: str) -> bool:
    """Whether the checkpoint names ``method``'s clusters (a class map from `segeig label`)."""
    return seg.class_map is not None and method in seg.class_map.maps


def view_of(seg: Segmenter, result: SegmentedImage, n_segments: int | None) -> LabelMapView:
    """How to show ``result``: its classes when the method has a class map, else its
    segments merged to at most ``n_segments``."""
    if not has_classes(seg, result.method):
        return LabelMapView(merge(result, n_segments), palette_for(seg, result.method))
    class_map = seg.class_map
    table = class_map.lookup(result.method)
    members: dict[int, list[int]] = {}
    for cluster in result.ids.tolist():
        members.setdefault(int(table[cluster]), []).append(int(cluster))
    names = dict(enumerate(class_map.names))
    names[UNASSIGNED] = "unassigned"
    return LabelMapView(MergeResult(table[result.labels].astype(np.int32), members),
                class_map.label_palette(), names, classes=True)


def render_overlay(result: SegmentedImage, view: LabelMapView, opacity: float) -> np.ndarray:
    """``H×W×3`` uint8 image with segment colours blended at ``opacity`` ∈ [0, 1].

    Pixels of unassigned clusters (class views) keep the plain image.
    """
    alpha = float(np.clip(opacity, 0.0, 1.0))
    return overlay(result.image, view.merged.labels, view.palette, alpha=alpha,
                   ignore_index=UNASSIGNED if view.classes else None)


def segment_table(merged: MergeResult) -> list[tuple[int, float, int]]:
    """``(segment id, fraction of the image, number of merged ids)``, largest first."""
    ids, counts = np.unique(merged.labels, return_counts=True)
    total = merged.labels.size
    rows = [(int(i), c / total, len(merged.members.get(int(i), [i])))
            for i, c in zip(ids, counts, strict=True)]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def _share(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.01 else "<1%"


def segment_caption(seg_id: int, fraction: float, merged_count: int) -> str:
    """``"segment 12 · 34%"`` (``"(+2 merged)"`` appended when merged)."""
    text = f"segment {seg_id} · {_share(fraction)}"
    return text + (f" (+{merged_count - 1} merged)" if merged_count > 1 else "")


def caption(view: LabelMapView, seg_id: int, fraction: float, merged_count: int) -> str:
    """``"sky · 34%"`` in a class view, else :func:`segment_caption`."""
    if view.classes:
        return f"{view.name(seg_id)} · {_share(fraction)}"
    return segment_caption(seg_id, fraction, merged_count)


def legend_for(view: LabelMapView, max_entries: int = LEGEND_ENTRIES
               ) -> tuple[list[tuple[str, np.ndarray]], int]:
    """``(caption, RGB colour)`` of the largest segments or classes (unassigned pixels,
    drawn uncoloured, are left out), and how many smaller ones it leaves out."""
    rows = [r for r in segment_table(view.merged) if not (view.classes and r[0] == UNASSIGNED)]
    shown = rows[:max_entries]
    return [(caption(view, *row), view.palette[row[0]]) for row in shown], len(rows) - len(shown)


def legend_html(entries: list[tuple[str, np.ndarray]]) -> str:
    """The legend as HTML: a colour swatch and a caption per entry (captions escaped:
    class names come from a checkpoint and are untrusted)."""
    items = []
    for text, (r, g, b) in entries:
        swatch = (f'<span style="display:inline-block;width:14px;height:14px;'
                  f'background:#{int(r):02x}{int(g):02x}{int(b):02x};margin-right:6px;'
                  f'vertical-align:middle;border:1px solid #8888"></span>')
        items.append(f'<li style="list-style:none;margin:2px 10px 2px 0;display:inline-block">'
                     f'{swatch}<span class="legend-name">{html.escape(text)}</span></li>')
    return f'<ul class="segeig-legend" style="padding:0;margin:0">{"".join(items)}</ul>'


def legend_picture(entries: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """The legend as an ``H×W×3`` uint8 picture (for downloads)."""
    if not entries:
        return legend_image(["(none)"], np.zeros((1, 3), np.uint8))
    return legend_image([e[0] for e in entries], np.array([e[1] for e in entries]), max_rows=12)


def clean_name(text: str | None) -> str:
    """A segment name typed by a user, checked like the names ``segeig label`` accepts."""
    name = " ".join(str(text or "").split())
    if not name:
        raise UserError("Type a name for the segment first.")
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise UserError(f"Names are printable text of at most {MAX_NAME_CHARS} characters.")
    return name


# -- downloads -----------------------------------------------------------------
def write_downloads(out_dir: Path, index: int, result: SegmentedImage, view: LabelMapView,
                    overlay_image: np.ndarray) -> list[Path]:
    """Write ``NN_<name>_labels.png`` and ``NN_<name>_overlay.png`` into ``out_dir``.

    Class views write class label maps (pixel = class index, 255 =
    unassigned, class colours) as `segeig segment` does with a labelled
    checkpoint. File names come from :func:`safe_stem`, so nothing is written
    outside ``out_dir``.
    """
    stem = f"{index + 1:02d}_{safe_stem(result.name)}"
    labels_path = out_dir / f"{stem}_labels.png"
    overlay_path = out_dir / f"{stem}_overlay.png"
    # The same format as `segeig segment` (palette PNG up to 256 segments,
    # 16-bit beyond), chosen by the method's segment count, not by this image.
    save_segments(view.merged.labels, labels_path, len(view.palette), view.palette)
    Image.fromarray(overlay_image).save(overlay_path, format="PNG")
    return [labels_path, overlay_path]


# -- eigenfunctions and segment explanation ----------------------------------------
def eigen_order(seg: Segmenter) -> tuple[np.ndarray | None, list[float] | None]:
    """Channel order sorting eigenfunctions by recorded eigenvalue (largest first).

    Returns ``(order, sorted eigenvalues)``, or ``(None, None)`` when the
    checkpoint records no measured eigenvalues (older checkpoints): the head's
    own output order is shown then, with no claim about eigenvalues (with
    t = 0.01 and the softmax the outputs form a soft partition, and training
    order is not eigenvalue order).
    """
    values = seg.eigenvalues
    if not values:
        return None, None
    lam = np.asarray(values, dtype=np.float64)
    order = np.argsort(-lam, kind="stable")
    return order, [float(v) for v in lam[order]]


def eigenfunctions_of(seg: Segmenter, result: SegmentedImage,
                      lock: AbstractContextManager | None = None) -> np.ndarray:
    """``K×h×w`` eigenfunction values of the result's image, sorted by eigenvalue (cached).

    ``lock``: held around the forward pass (see :func:`segment_image`).
    """
    if result.eigen is None:  # the segmenting pass ran no head (e.g. method kmeans)
        if seg.num_eigenfunctions is None:
            raise UserError("this checkpoint has no eigenfunction head (k-means baseline only)")
        with lock or nullcontext():
            values = seg.eigenfunctions(result.image)  # at the working resolution
        result.eigen = _sorted_eigen(seg, values)
    return result.eigen


def _sorted_eigen(seg: Segmenter, values: np.ndarray) -> np.ndarray:
    """``K×h×w`` eigenfunction values reordered by recorded eigenvalue (largest first)."""
    order, _ = eigen_order(seg)
    return values[order] if order is not None and len(order) == len(values) else values


def eigen_grid_image(seg: Segmenter, result: SegmentedImage, n: int, tile_width: int = 240,
                     lock: AbstractContextManager | None = None) -> np.ndarray:
    """Heatmaps of the top ``n`` eigenfunctions, titled ``ψi (λ=…)``, as one RGB image."""
    values = eigenfunctions_of(seg, result, lock)
    _, lam = eigen_order(seg)
    height, width = result.image.shape[:2]
    size = (max(1, round(tile_width * height / width)), tile_width)
    return eigenfunction_grid(values, lam, n=max(1, int(n)), size=size, cols=4)


def segment_at(merged: MergeResult, x: int, y: int) -> int:
    """Segment id under pixel ``(x, y)`` (column, row), clamped to the image."""
    height, width = merged.labels.shape
    return int(merged.labels[int(np.clip(y, 0, height - 1)), int(np.clip(x, 0, width - 1))])


def mask_view(image: np.ndarray, labels: np.ndarray, seg_id: int,
              colour: tuple[int, int, int] = (255, 64, 64)) -> np.ndarray:
    """The image with everything outside segment ``seg_id`` dimmed and its outline drawn."""
    mask = labels == seg_id
    if not mask.any():
        raise UserError(f"segment {seg_id} is not in this image")
    out = image.astype(np.float32)
    out[~mask] = out[~mask] * 0.25 + 40.0
    view = np.rint(out).astype(np.uint8)
    edge = np.zeros_like(mask)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    view[edge] = colour
    return view


def explain_segment(seg: Segmenter, result: SegmentedImage, view: LabelMapView, seg_id: int,
                    top: int = 3, lock: AbstractContextManager | None = None) -> str:
    """Markdown describing a segment or class: area, model segments, distinctive eigenfunctions.

    An eigenfunction is distinctive for a segment when the segment's mean
    value of it lies far from the image mean, in units of the function's
    standard deviation over the image.
    """
    merged = view.merged
    mask = merged.labels == seg_id
    if not mask.any():
        raise UserError(f"{view.name(seg_id)} is not in this image")
    members = merged.members.get(seg_id, [seg_id])
    if view.classes:
        title = md_escape(view.name(seg_id))
        lines = [f"**{title}** covers {mask.mean():.1%} of *{result.name}*.",
                 f"The model's segment{'s' if len(members) > 1 else ''} "
                 f"{', '.join(map(str, members))} "
                 + ("have no class in the checkpoint's class map." if seg_id == UNASSIGNED
                    else "map to this class in the checkpoint's class map.")]
    else:
        lines = [f"**Segment {seg_id}** covers {mask.mean():.1%} of *{result.name}*."]
        if len(members) > 1:
            lines.append(f"It merges the model's segments {', '.join(map(str, members))}.")
    if seg.num_eigenfunctions is not None:
        values = eigenfunctions_of(seg, result, lock)
        ids, profiles, _ = segment_profiles(mask.astype(np.int64), values, seg.patch_size)
        if 1 in ids:
            mean, std = values.mean(axis=(1, 2)), values.std(axis=(1, 2)) + 1e-8
            z = (profiles[list(ids).index(1)] - mean) / std
            best = np.argsort(-np.abs(z), kind="stable")[:top]
            parts = [f"ψ{i + 1} ({'high' if z[i] > 0 else 'low'}, {z[i]:+.1f}σ)" for i in best]
            lines.append("Most distinctive eigenfunctions: " + ", ".join(parts) + ".")
    return "\n\n".join(lines)
