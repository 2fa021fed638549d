"""The protocol statement every evaluation report carries.

Numbers from unsupervised segmentation are only comparable when the protocol
is stated in full: how images, labels and predictions were sized, how many
clusters were matched to classes and how, whether a CRF ran, and how the
checkpoint was chosen. :func:`report_fields` states all of it; the JSON report
(:meth:`segeig.evaluation.EvaluationResult.to_dict`), the terminal table and
the Markdown report (:mod:`segeig.evaluation.report`) show the same fields.
"""

from __future__ import annotations

from typing import Any

from segeig.evaluation.metrics import PER_IMAGE
from segeig.evaluation.protocols import Protocol

__all__ = ["CHECKPOINT_SELECTION", "MATCH_NOTES", "report_fields", "statement_rows"]

#: segeig never keeps the checkpoint with the best validation score (STEGO, EAGLE
#: and HP do); every report says so.
CHECKPOINT_SELECTION = "no checkpoint chosen with labels"

#: What each matching means, in words (reports quote it next to the numbers).
MATCH_NOTES = {
    "hungarian": "one dataset-level Hungarian (one-to-one) matching of clusters to classes "
                 "on the confusion matrix of all evaluated images",
    "majority": "many-to-one: each cluster goes to the class it has the highest IoU with "
                "over all evaluated images (the NeuralEF paper's over-clustering protocol)",
    PER_IMAGE: "a separate Hungarian matching for every image (the zero-shot papers' "
               "protocol: DiffSeg, DiffCut); it inflates scores and is not comparable "
               "with dataset-level matching",
    "fixed": "the checkpoint's stored cluster-to-class map (no matching fitted on these "
             "images)",
}


def _resolution(protocol: Protocol, working: dict[str, int] | None) -> str:
    if not protocol.score_at_original:
        what = ("image, label and prediction" if protocol.resample == "nearest"
                else "image and label")
        how = "nearest neighbour" if protocol.resample == "nearest" else (
            "image area/bilinear, label nearest neighbour")
        sized = (f"{what} resized to short side {protocol.short_side} ({how})"
                 if protocol.short_side else f"{what} at their own size")
        side = protocol.crop
        return f"{sized}; scored at {f'{side}x{side}' if side else 'that size'}"
    if protocol.working_resolution and working and working.get("short", 0) > 0:
        net = f"network input at working resolution short side {working['short']}"
    elif protocol.short_side:
        net = f"network input at short side {protocol.short_side}"
    else:
        net = "network input at the image's own size"
    if protocol.window:
        net += f", sliding window {protocol.window} / stride {protocol.stride}"
    return f"{net}; scored at the original label resolution (labels never resized)"


def report_fields(protocol: Protocol, n_clusters: int, match_used: str, crf: bool, *,
                  working_resolution: dict[str, int] | None = None,
                  predictions: bool = False) -> dict[str, Any]:
    """The statement, JSON-ready: every key is also a top-level key of the JSON report.

    Args:
        protocol: the protocol scored.
        n_clusters: segment ids matched to classes (the number of clusters).
        match_used: ``hungarian``, ``majority``, ``hungarian-per-image`` or ``fixed``.
        crf: whether CRF-refined scores are reported too.
        working_resolution: the checkpoint's (``short``, ``max_long``), if used.
        predictions: scores of saved predictions (``evaluate --predictions``).

    Returns:
        ``protocol``, ``resolution`` (str), ``crop`` (str or None), ``n_clusters``,
        ``matching``, ``matching_note``, ``crf`` (``"on"``/``"off"`` with why),
        ``checkpoint_selection``.
    """
    if crf:
        crf_text = "on (scores with and without CRF, each with its own matching)"
    elif predictions:
        crf_text = "off (saved label maps carry no scores for a CRF)"
    else:
        crf_text = "off"
    selection = CHECKPOINT_SELECTION if not predictions else (
        f"{CHECKPOINT_SELECTION} by segeig; the saved predictions came from elsewhere, "
        "so how their model was chosen is the producer's to state")
    return {
        "protocol": protocol.name,
        "resolution": _resolution(protocol, working_resolution),
        "crop": (f"centre {protocol.crop}x{protocol.crop}"
                 if protocol.crop and not protocol.score_at_original else None),
        "n_clusters": int(n_clusters),
        "matching": match_used,
        "matching_note": MATCH_NOTES.get(match_used, match_used),
        "crf": crf_text,
        "checkpoint_selection": selection,
    }


def statement_rows(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` rows of :func:`report_fields` for tables."""
    return [
        ("protocol", str(fields["protocol"])),
        ("resolution", str(fields["resolution"])),
        ("crop", fields["crop"] or "none"),
        ("clusters", str(fields["n_clusters"])),
        ("matching", f"{fields['matching']}: {fields['matching_note']}"),
        ("CRF", str(fields["crf"])),
        ("checkpoint selection", str(fields["checkpoint_selection"])),
    ]
