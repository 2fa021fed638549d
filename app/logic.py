"""The demo's logic, free of any web framework so it can be unit-tested.

Every function takes numpy arrays / a :class:`segeig.predictor.Segmenter` and
returns numpy arrays, text or file paths; :mod:`segeig.app.ui` only wires them to
Gradio components. Errors meant for the user are raised as :class:`UserError`
with a message that never names a server path. Reading uploads lives in
:mod:`segeig.app.uploads`, captions and legends in :mod:`segeig.app.legend`.
"""

from __future__ import annotations

import logging
import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segeig.checkpoint import MAX_NAME_CHARS, UNASSIGNED
from segeig.cluster import MergeResult, merge_label_map, segment_profiles
from segeig.labelmaps import save_segments
from segeig.predictor import Segmenter
from segeig.viz import eigenfunction_grid, make_palette, overlay

logger = logging.getLogger(__name__)

#: Order of methods in the UI; the first one present is the default. ``eigen``
#: (the head's argmax) first: on the texture proxy it beat ``eigen+kmeans`` on
#: ``fit`` checkpoints and tied on ``custom`` ones (docs/method.md).
METHOD_ORDER = ("eigen", "eigen+kmeans", "kmeans")


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


#: ASCII characters other than letters, digits and spaces: each becomes an HTML
#: character reference in :func:`md_escape`.
_MD_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")


def md_escape(text: str) -> str:
    """``text`` as Markdown that renders as exactly that text: no markup, no HTML, no link.

    Class names come from a checkpoint or a user: every ASCII punctuation
    character becomes a numeric character reference (``.`` → ``&#46;``), so
    nothing can start emphasis, a heading, a tag or an explicit link, and no
    renderer can autolink a URL, ``www.`` name, bare domain or e-mail address
    in it (``http://2130706433/login`` no longer contains ``://``, ``www.`` or
    a dot for a linkifier to find; a Markdown renderer turns the references
    back into the characters only when writing HTML). Runs of whitespace
    become one space, so a name cannot open a new block.
    """
    text = " ".join(text.split())
    return _MD_PUNCTUATION.sub(lambda m: f"&#{ord(m.group())};", text)


def display_name(path: str | Path) -> str:
    """The name a user gave an uploaded file (its last path component)."""
    return Path(str(path)).name or "image"


def safe_stem(name: str, limit: int = 60) -> str:
    """A file-name stem made of ``[A-Za-z0-9._-]`` only (never empty, never a path)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "image"
    return stem[:limit]


# -- methods -----------------------------------------------------------------
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
