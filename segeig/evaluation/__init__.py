"""Scoring a checkpoint on a labelled dataset: protocols, matching, reports.

Modules: ``evaluator`` (:func:`evaluate`: one pass, with and without CRF),
``spectral_dataset`` (exact spectral clustering of the whole evaluated set),
``protocols`` (how each dataset is prepared: stego / full / native),
``scoring`` (confusion matrices over a grid of settings, results),
``metrics`` (matching clusters to classes, mIoU), ``report`` (JSON, Markdown
and pictures), ``statement`` (the protocol statement every report carries),
``predictions`` (:func:`evaluate_predictions`: any method's saved label maps),
``labelling`` (cluster → class maps stored in checkpoints).
"""

from segeig.evaluation.evaluator import evaluate
from segeig.evaluation.labelling import (
    class_map_from_names,
    fit_class_map,
    format_names,
    parse_names,
    read_names,
)
from segeig.evaluation.predictions import PredictionError, evaluate_predictions
from segeig.evaluation.protocols import Protocol, load_eval_dataset, resolve_protocol
from segeig.evaluation.report import format_table, write_json, write_report
from segeig.evaluation.scoring import EvaluationResult, Scores
from segeig.evaluation.spectral_dataset import evaluate_spectral_dataset

__all__ = [
    "EvaluationResult",
    "PredictionError",
    "Protocol",
    "Scores",
    "class_map_from_names",
    "evaluate",
    "evaluate_predictions",
    "evaluate_spectral_dataset",
    "fit_class_map",
    "format_names",
    "format_table",
    "load_eval_dataset",
    "parse_names",
    "read_names",
    "resolve_protocol",
    "write_json",
    "write_report",
]
