"""The protocol statement in every report, the stego default method, and per-image
Hungarian matching kept apart from the dataset-level numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from segeig.evaluation.evaluator import evaluate
from segeig.evaluation.protocols import PROTOCOLS, load_eval_dataset
from segeig.evaluation.report import format_table, write_report
from segeig.predictor import Segmenter
from tests.test_evaluation import PATCH, OracleSegmenter, _stripe_dataset


@pytest.fixture
def oracle(tiny_model) -> OracleSegmenter:
    return OracleSegmenter(tiny_model)


STATED = ("protocol", "resolution", "crop", "n_clusters", "matching", "matching_note", "crf",
          "checkpoint_selection")


def test_every_report_states_the_protocol(tmp_path, oracle):
    protocol = dataclasses.replace(PROTOCOLS["stego", "custom"], short_side=40, crop=40)
    root = _stripe_dataset(tmp_path, ignore=False, width=3 * PATCH)
    result = evaluate(oracle, load_eval_dataset(protocol, root), protocol, match="hungarian",
                      crf=False)
    data = result.to_dict()
    assert all(key in data for key in STATED)
    assert (data["protocol"], data["crop"], data["n_clusters"], data["matching"],
            data["crf"]) == ("stego", "centre 40x40", 7, "hungarian", "off")
    assert data["resolution"] == ("image, label and prediction resized to short side 40 "
                                  "(nearest neighbour); scored at 40x40")
    assert data["checkpoint_selection"] == "no checkpoint chosen with labels"
    table = format_table(result)
    for text in ("no checkpoint chosen with labels", "centre 40x40", "dataset-level Hungarian"):
        assert text in table
    report = write_report(result, tmp_path / "rep")["report"].read_text()
    assert "## Protocol statement" in report and "no checkpoint chosen with labels" in report
    full = evaluate(oracle, load_eval_dataset(PROTOCOLS["native", "custom"], root), "native",
                    crf=False).to_dict()
    assert full["crop"] is None and "original label resolution" in full["resolution"]


def test_per_image_matching_is_labelled_and_never_mixed(tmp_path, tiny_model):
    protocol = PROTOCOLS["native", "custom"]
    dataset = load_eval_dataset(protocol, _stripe_dataset(tmp_path, n=4))
    # Clusters swap meaning between images: per-image matching scores them perfect,
    # dataset-level matching cannot.
    segmenter = OracleSegmenter(tiny_model)
    images = iter([(0, 1, 2, 3), (1, 0, 3, 2)] * 2)
    forward = segmenter.forward

    def swapping(batch, method=None):
        segmenter.clusters = list(next(images))
        return forward(batch, method)

    segmenter.forward = swapping
    per = evaluate(segmenter, dataset, protocol, match="hungarian-per-image", crf=False)
    assert per.scores.miou == pytest.approx(100.0) and per.match_used == "hungarian-per-image"
    data = per.to_dict()
    assert data["mapping"] is None and "inflates" in data["matching_note"]
    assert data["by_match"]["hungarian-per-image"]["miou"] == pytest.approx(100.0)
    assert data["by_match"]["hungarian"]["miou"] < 60  # the honest number, its own row
    assert "[inflated: one matching per image]" in format_table(per)
    assert all(ex.mapping is not None for ex in per.examples)
    write_report(per, tmp_path / "rep")  # pictures use each image's own map


def test_stego_defaults_to_the_class_count_method(tmp_path, tiny_model, caplog):
    root = _stripe_dataset(tmp_path)
    protocol = dataclasses.replace(PROTOCOLS["stego", "custom"], short_side=32, crop=32)
    dataset = load_eval_dataset(protocol, root)
    torch.manual_seed(0)
    tiny_model.set_centroids("eigen+kmeans", torch.randn(4, tiny_model.head.hidden_dim))
    segmenter = Segmenter(tiny_model, device="cpu")
    assert segmenter.methods[0] == "eigen" and segmenter.num_segments("eigen") == 12
    result = evaluate(segmenter, dataset, protocol, crf=False)
    assert (result.method, result.n_segments, result.match_used) == (
        "eigen+kmeans", 4, "hungarian")
    # Other protocols keep the checkpoint's default method.
    assert evaluate(segmenter, load_eval_dataset(PROTOCOLS["native", "custom"], root),
                    "native", crf=False).method == "eigen"
    # No class-count method: the default one, with a warning that says what to do.
    tiny_model.set_centroids("eigen+kmeans", torch.randn(6, tiny_model.head.hidden_dim))
    result = evaluate(Segmenter(tiny_model, device="cpu"), dataset, protocol, crf=False)
    assert result.method == "eigen" and "--kmeans-k 4" in caplog.text
