"""Segmenting folders of images: inputs, the decode → model → CRF → write
pipeline, output files, and resumable runs with a summary.

Modules: ``run`` (:func:`segment_inputs`: a whole run, resumable, with
``summary.json``), ``pipeline`` (:func:`segment_files`: the streaming work),
``options`` (:class:`SegmentOptions`: a run's settings, the method they pick),
``inputs`` (files, folders and globs → :class:`InputFile`, shards, decoding),
``outputs`` (safe output paths, overlays, scores), ``manifest`` (which
checkpoint and settings produced each output).
"""

from segeig.batch.inputs import InputFile, expand_inputs, parse_shard, select_shard
from segeig.batch.options import SegmentOptions
from segeig.batch.outputs import OutputPathError, output_folders, read_scores
from segeig.batch.pipeline import segment_files
from segeig.batch.run import SegmentSummary, segment_inputs, summary_path

__all__ = [
    "InputFile",
    "OutputPathError",
    "SegmentOptions",
    "SegmentSummary",
    "expand_inputs",
    "output_folders",
    "parse_shard",
    "read_scores",
    "segment_files",
    "segment_inputs",
    "select_shard",
    "summary_path",
]
