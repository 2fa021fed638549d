"""Pictures: palettes, label colouring, overlays, eigenfunction maps, plots.

Functions return uint8 RGB arrays or write PNGs; nothing opens a window.
Matplotlib is driven through ``Figure`` + ``FigureCanvasAgg`` (never ``pyplot``),
so no global backend state changes and everything works headless. Files are
written atomically (temp file in the target directory, then ``os.replace``).
"""

from __future__ import annotations

import colorsys
import logging
import os
from collections.abc import Sequence

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from segeig.atomic import atomic_write
from segeig.config import IGNORE_INDEX

logger = logging.getLogger(__name__)

# Kelly's colours of maximum contrast, without white and black (black is
# reserved for ignored pixels, white for segment boundaries).
_BASE_RGB = bytes.fromhex(
    "F3C300 875692 F38400 A1CAF1 BE0032 C2B280 848482 008856 E68FAC 0067A5 "
    "F99379 604E97 F6A600 B3446C DCD300 882D17 8DB600 654522 E25822 2B3D26"
)
_BASE_COLOURS = [tuple(_BASE_RGB[i : i + 3]) for i in range(0, len(_BASE_RGB), 3)]
_GOLDEN = 0.618033988749895
_SV_LEVELS = [(0.85, 0.95), (0.55, 0.85), (0.95, 0.65), (0.40, 0.95), (0.70, 0.75)]


def make_palette(n: int) -> np.ndarray:
    """``n`` distinct, deterministic colours.

    The first 20 are Kelly's high-contrast colours; further ones step the hue
    by the golden ratio (so neighbours in id order differ strongly) while
    cycling saturation/value levels. No entry is pure black.

    Returns:
        uint8 ``(n, 3)`` RGB, rows pairwise distinct.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    colours: list[tuple[int, int, int]] = list(_BASE_COLOURS[:n])
    seen = set(colours) | {(0, 0, 0)}
    i = 0
    while len(colours) < n:
        s, v = _SV_LEVELS[i % len(_SV_LEVELS)]
        r, g, b = colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, s, v)
        rgb = (round(r * 255), round(g * 255), round(b * 255))
        i += 1
        if rgb not in seen:  # rounding can collide for very large n; just skip
            seen.add(rgb)
            colours.append(rgb)
    return np.array(colours, dtype=np.uint8).reshape(n, 3)


def _valid_mask(labels: np.ndarray, ignore_index: int | None) -> np.ndarray:
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer (H, W) array, got {labels.dtype} {labels.shape}"
        )
    valid = labels >= 0
    if ignore_index is not None:
        valid &= labels != ignore_index
    return valid


def colorize(
    labels: np.ndarray, palette: np.ndarray, ignore_index: int | None = IGNORE_INDEX
) -> np.ndarray:
    """Paint a label map.

    Args:
        labels: integer ``(H, W)`` ids.
        palette: uint8 ``(N, 3)`` RGB; ``labels`` must be ``< N`` except ignored ones.
        ignore_index: id rendered black (default 255). Pass None when 255 is a
            real cluster id (e.g. K = 512 cluster maps).

    Returns:
        uint8 ``(H, W, 3)``; negative ids and ``ignore_index`` are black.
    """
    labels = np.asarray(labels)
    palette = np.asarray(palette, dtype=np.uint8)
    valid = _valid_mask(labels, ignore_index)
    if valid.any() and int(labels[valid].max()) >= len(palette):
        raise ValueError(
            f"label {int(labels[valid].max())} has no colour in a palette of {len(palette)}"
        )
    out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    out[valid] = palette[labels[valid]]
    return out


def _boundaries(labels: np.ndarray) -> np.ndarray:
    # A pixel is on a boundary if its right or lower neighbour differs: one
    # pixel thick, cheap, no morphology needed.
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    alpha: float = 0.5,
    draw_boundaries: bool = True,
    ignore_index: int | None = IGNORE_INDEX,
    boundary_colour: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Blend segment colours onto an image.

    Args:
        image: uint8 ``(H, W, 3)`` RGB.
        labels: integer ``(H, W)`` ids, same size as ``image``.
        palette: uint8 ``(N, 3)`` RGB.
        alpha: colour weight in ``[0, 1]`` (0 = image only, 1 = colours only).
        draw_boundaries: draw 1-pixel segment boundaries in ``boundary_colour``.
        ignore_index: see :func:`colorize`; ignored (and negative) pixels keep
            the plain image.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} != image size {image.shape[:2]}")
    colours = colorize(labels, palette, ignore_index)
    valid = _valid_mask(labels, ignore_index)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    out = np.where(valid[..., None], np.rint(blend), image).astype(np.uint8)
    if draw_boundaries:
        out[_boundaries(labels)] = boundary_colour
    return out


def eigenfunction_maps(
    values: np.ndarray,
    n: int = 8,
    size: tuple[int, int] | None = None,
    cmap: str = "RdBu_r",
) -> list[np.ndarray]:
    """Heatmaps of the first ``n`` eigenfunctions.

    Eigenfunctions are signed with arbitrary scale, so each map is divided by
    its own max ``|value|`` and drawn with a diverging colormap: zero is the
    neutral middle colour, sign is hue.

    Args:
        values: float ``(K, h, w)`` eigenfunction values on the patch grid.
        n: number of maps (the first ``min(n, K)``).
        size: output ``(height, width)``; values are bilinearly resized before
            colouring. None keeps ``(h, w)``.
        cmap: any matplotlib colormap name.

    Returns:
        list of uint8 ``(H, W, 3)`` RGB images.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 3:
        raise ValueError(f"values must be (K, h, w), got shape {values.shape}")
    colour_map = colormaps[cmap]
    maps = []
    for v in values[: max(n, 0)]:
        if size is not None:
            v = cv2.resize(v, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        scale = float(np.abs(v).max())
        unit = v / scale if scale > 0 else np.zeros_like(v)
        rgba = colour_map((unit + 1.0) / 2.0, bytes=True)
        maps.append(np.ascontiguousarray(rgba[..., :3]))
    return maps


def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    FigureCanvasAgg(fig)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _tile(images: list[np.ndarray], ncols: int, titles: list[str], tile_w: float) -> Figure:
    # Row height follows the first image's aspect ratio, plus room for a title.
    nrows = -(-len(images) // ncols)
    h, w = images[0].shape[:2]
    fig = Figure(figsize=(ncols * tile_w, nrows * (tile_w * h / w + 0.35)), dpi=100)
    for i, img in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(img)
        ax.set_axis_off()
        if i < len(titles) and titles[i]:
            ax.set_title(titles[i], fontsize=10)
    fig.tight_layout(pad=0.3)
    return fig


def eigenfunction_grid(
    values: np.ndarray,
    eigenvalues: Sequence[float] | np.ndarray | None = None,
    n: int = 8,
    size: tuple[int, int] | None = None,
    cols: int = 4,
    cmap: str = "RdBu_r",
) -> np.ndarray:
    """Tile :func:`eigenfunction_maps` with titles ``ψ1 (λ=0.93)``, ``ψ2 …``.

    Args:
        values, n, size, cmap: as in :func:`eigenfunction_maps`.
        eigenvalues: optional ``(K,)`` estimates; titles show them when given.
        cols: tiles per row.

    Returns:
        uint8 ``(H_grid, W_grid, 3)`` RGB image (size set by matplotlib at 100 dpi).
    """
    maps = eigenfunction_maps(values, n=n, size=size, cmap=cmap)
    if not maps:
        raise ValueError("no eigenfunction maps to draw")
    titles = [f"ψ{i + 1}" for i in range(len(maps))]
    if eigenvalues is not None:
        for i, lam in enumerate(list(eigenvalues)[: len(maps)]):
            titles[i] += f" (λ={float(lam):.2f})"
    return _render(_tile(maps, max(1, min(cols, len(maps))), titles, tile_w=2.4))


def confusion_plot(
    class_conf: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str | None = None,
    max_tick_labels: int = 40,
) -> None:
    """Write a row-normalised confusion heatmap PNG.

    Args:
        class_conf: counts ``(C, C)`` or ``(C, C + 1)`` from
            ``segeig.evaluation.metrics.class_confusion`` (rows = ground truth, columns =
            prediction, optional last column = unmatched clusters). Rows are
            divided by their totals: cells read "fraction of class g predicted as p".
        class_names: ``C`` names.
        path: output PNG path (parent directories are created).
        title: optional figure title.
        max_tick_labels: more classes than this (e.g. ADE20K's 150) hide tick labels.
    """
    cc = np.asarray(class_conf, dtype=np.float64)
    n = cc.shape[0]
    if cc.ndim != 2 or cc.shape[1] not in (n, n + 1):
        raise ValueError(f"class_conf must be (C, C) or (C, C+1), got {cc.shape}")
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} classes")
    totals = cc.sum(axis=1, keepdims=True)
    norm = np.divide(cc, totals, out=np.zeros_like(cc), where=totals > 0)
    side = float(np.clip(3.0 + 0.22 * n, 4.0, 16.0))
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_ylabel("ground truth")
    ax.set_xlabel("prediction")
    if n <= max_tick_labels:
        xnames = list(class_names) + (["unmatched"] if cc.shape[1] > n else [])
        ax.set_xticks(range(len(xnames)), xnames, rotation=90, fontsize=7)
        ax.set_yticks(range(n), list(class_names), fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)


def comparison_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike[str],
    titles: Sequence[str] = ("image", "ground truth", "prediction"),
) -> None:
    """Write a PNG with one row per sample, e.g. (image, gt colour, prediction colour).

    Args:
        rows: each a tuple of uint8 ``(H, W, 3)`` images, one per column, with
            as many entries as ``titles`` (sizes may differ between rows).
        path: output PNG path.
        titles: column titles shown above the first row.
    """
    if not rows:
        raise ValueError("comparison_grid needs at least one row")
    if any(len(r) != len(titles) for r in rows):
        raise ValueError(f"every row needs {len(titles)} images, one per title")
    images = [np.asarray(img) for r in rows for img in r]
    _save_figure(_tile(images, len(titles), list(titles), tile_w=3.0), path)


def legend_image(names: Sequence[str], palette: np.ndarray, max_rows: int = 30) -> np.ndarray:
    """A small legend: colour swatch + name per entry, in columns of ``max_rows``.

    Args:
        names: entry names; ``names[i]`` gets ``palette[i]``.
        palette: uint8 ``(N, 3)`` RGB with ``N >= len(names)``.

    Returns:
        uint8 ``(H, W, 3)`` RGB on white.
    """
    palette = np.asarray(palette, dtype=np.uint8)
    if not 0 < len(names) <= len(palette):
        raise ValueError(f"need 1 to {len(palette)} names for this palette, got {len(names)}")
    per_col = min(max_rows, len(names))
    ncols = -(-len(names) // per_col)
    fig = Figure(figsize=(2.2 * ncols, 0.22 * per_col + 0.1), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, ncols)
    ax.set_ylim(per_col, 0)
    ax.set_axis_off()
    for i, name in enumerate(names):
        col, row = divmod(i, per_col)
        ax.add_patch(Rectangle((col + 0.03, row + 0.15), 0.12, 0.7, color=palette[i] / 255.0))
        ax.text(col + 0.19, row + 0.5, str(name), va="center", fontsize=8)
    return _render(fig)


def with_legend(image: np.ndarray, legend: np.ndarray) -> np.ndarray:
    """``image`` above ``legend`` on white (the narrower one padded on the right).

    Args:
        image, legend: uint8 ``(H, W, 3)`` RGB (e.g. an overlay and :func:`legend_image`).

    Returns:
        uint8 ``(H1 + H2, max(W1, W2), 3)``.
    """
    width = max(image.shape[1], legend.shape[1])
    out = np.full((image.shape[0] + legend.shape[0], width, 3), 255, dtype=np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    out[image.shape[0]:, : legend.shape[1]] = legend
    return out
