"""Captions and legends of a shown label map (:class:`segeig.app.logic.LabelMapView`).

The segment table (largest first), one caption per segment or class, and the
legend of the largest ones as HTML (captions escaped) and as a picture for
the downloads.
"""

from __future__ import annotations

import html

import numpy as np
from segeig.app.logic import LabelMapView

from segeig.checkpoint import UNASSIGNED
from segeig.cluster import MergeResult
from segeig.viz import legend_image

#: At most this many segments get a legend entry (the largest ones).
LEGEND_ENTRIES = 24


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
