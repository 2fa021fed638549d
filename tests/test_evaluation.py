"""evaluate(): scores against known answers, CRF, batching/overlap paths, reports, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segeig.checkpoint import save_checkpoint
from segeig.cli import main
from segeig.data.synthetic import make_synthetic_dataset
from segeig.evaluation.evaluator import evaluate
from segeig.evaluation.protocols import PROTOCOLS, load_eval_dataset
from segeig.evaluation.report import REPORT_FILES, format_table, write_report
from segeig.evaluation.scoring import TIMING_KEYS, EvaluationResult
from segeig.model import ModelOutput
from segeig.predictor import Segmenter

COLOURS = np.array([[230, 30, 30], [30, 200, 40], [40, 60, 220], [220, 210, 40]], np.uint8)
PATCH = 8


class OracleSegmenter(Segmenter):
    """Scores each patch by its mean colour's closeness to the class colours.

    Class ``k`` is predicted as cluster ``clusters[k]`` (several classes may
    share one), and ``extra`` further clusters never win, so matching has real
    work to do. On vertical stripes of flat class colours aligned to the patch
    grid its predictions are exactly right: between two patch centres the
    bilinear mix of two one-sided scores flips exactly halfway, at the stripe edge.
    """

    def __init__(self, model, clusters=(2, 0, 3, 1), extra: int = 3) -> None:
        super().__init__(model, device="cpu")
        self.clusters = list(clusters)
        self.n_segments = max(self.clusters) + 1 + extra

    @property
    def methods(self):
        return ["eigen"]

    @property
    def patch_size(self):
        return PATCH

    def num_segments(self, method=None):
        return self.n_segments

    def forward(self, images, method=None):
        b, _, h, w = images.shape
        gh, gw = -(-h // PATCH), -(-w // PATCH)
        x = F.pad(images.float(), (0, gw * PATCH - w, 0, gh * PATCH - h), mode="replicate")
        means = F.avg_pool2d(x, PATCH)  # B×3×gh×gw in [0, 1]
        ref = torch.from_numpy(COLOURS).float().div(255)[:, :, None, None]  # C×3×1×1
        dist = ((means[:, None] - ref[None]) ** 2).sum(2)  # B×C×gh×gw
        scores = torch.full((b, self.n_segments, gh, gw), -100.0)
        for k, c in enumerate(self.clusters):
            scores[:, c] = torch.maximum(scores[:, c], -20.0 * dist[:, k])
        return ModelOutput(scores, None, None)


def _stripe_dataset(root: Path, n: int = 3, ignore: bool = True, width: int = PATCH,
                    seed: int = 0) -> Path:
    """Custom set of 48-px-high images of vertical flat-colour stripes, 8 stripes each."""
    rng = np.random.default_rng(seed)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("red\ngreen\nblue\nyellow\n")
    for i in range(n):
        stripes = rng.permutation(np.arange(8) % len(COLOURS))
        label = np.repeat(np.repeat(stripes, width)[None], 48, axis=0).astype(np.uint8)
        image = COLOURS[label]
        if ignore:
            label[:3, :5] = 255
        for sub, array in (("images", image), ("annotations", label)):
            (root / sub / "val").mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / sub / "val" / f"b{i}.png")
    return root


@pytest.fixture
def oracle(tiny_model) -> OracleSegmenter:
    return OracleSegmenter(tiny_model)


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path) -> Path:
    torch.manual_seed(1)
    tiny_model.set_centroids("eigen+kmeans", torch.randn(10, tiny_model.head.hidden_dim))
    tiny_model.set_centroids("kmeans", torch.randn(8, tiny_model.backbone.embed_dim))
    return save_checkpoint(tmp_path / "ckpt", tiny_model)


@pytest.fixture
def synth_root(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "synth", 0, 3, (40, 56), 5, seed=0,
                                  size_jitter=0.2)


# -- known answers ------------------------------------------------------------

@pytest.mark.parametrize("match", ["hungarian", "majority"])
def test_oracle_scores_100(tmp_path, oracle, match):
    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], _stripe_dataset(tmp_path))
    result = evaluate(oracle, dataset, "native", match=match, crf=False)
    assert result.scores.miou == pytest.approx(100.0)
    assert result.scores.pixel_acc == pytest.approx(100.0)
    assert result.scores.mapping[:4] == [1, 3, 0, 2]  # inverse of the permutation
    assert result.scores.mapping[4:] == [-1, -1, -1]
    # Ignored pixels are not counted.
    assert result.scores.confusion.sum() == 3 * (48 * 8 * PATCH - 15)


def test_oracle_with_crf_and_stego(tmp_path, oracle):
    root = _stripe_dataset(tmp_path, ignore=False, width=3 * PATCH)
    protocol = dataclasses.replace(PROTOCOLS["stego", "custom"], short_side=40, crop=40)
    result = evaluate(oracle, load_eval_dataset(protocol, root), protocol, crf=True,
                      crf_workers=0)
    # Resizing by 5/6 moves stripe edges off the patch grid: near, not exactly, 100.
    assert 85 < result.scores.miou <= 100
    assert result.scores_crf is not None and result.scores_crf.miou > 85
    assert all(ex.pred_crf is not None and ex.pred_crf.shape == (40, 40)
               for ex in result.examples)


def test_scrambled_predictions_score_low(tmp_path, oracle, monkeypatch):
    # Same oracle, but every patch's scores shuffled at random: chance level.
    root = _stripe_dataset(tmp_path)
    forward = oracle.forward
    gen = torch.Generator().manual_seed(0)

    def scrambled(images, method=None):
        out = forward(images, method)
        flat = out.scores.flatten(2)
        out.scores = flat[:, :, torch.randperm(flat.shape[-1], generator=gen)].view_as(out.scores)
        return out

    monkeypatch.setattr(oracle, "forward", scrambled)
    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], root)
    result = evaluate(oracle, dataset, crf=False)
    assert result.scores.miou < 50


# -- inputs that must be refused ---------------------------------------------

def test_hungarian_needs_enough_segments(tmp_path, tiny_model):
    oracle = OracleSegmenter(tiny_model, clusters=(0, 1, 2, 2), extra=0)  # 3 for 4 classes
    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], _stripe_dataset(tmp_path))
    with pytest.raises(ValueError, match="--match majority"):
        evaluate(oracle, dataset, match="hungarian", crf=False)
    result = evaluate(oracle, dataset, crf=False)  # auto: majority, as segments != classes
    assert (result.match, result.match_used) == ("auto", "majority")
    # Blue and yellow share cluster 2, which majority gives to one of them;
    # the other is never predicted.
    assert result.scores.mapping[:2] == [0, 1] and result.scores.mapping[2] in (2, 3)
    ious = result.scores.per_class_iou
    assert min(ious[:2]) > 80 and min(ious[2:]) == 0.0 and max(ious[2:]) > 30


def test_wrong_class_count_and_method(tmp_path, oracle):
    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], _stripe_dataset(tmp_path))
    with pytest.raises(ValueError, match="scores 60 classes"):
        evaluate(oracle, dataset, dataclasses.replace(PROTOCOLS["native", "custom"],
                                                      num_classes=60), crf=False)
    with pytest.raises(ValueError, match="not in this checkpoint"):
        evaluate(oracle, dataset, method="kmeans", crf=False)
    with pytest.raises(ValueError, match="match must be"):
        evaluate(oracle, dataset, match="greedy", crf=False)
    with pytest.raises(ValueError, match="defined for pascal_context"):
        evaluate(oracle, dataset, PROTOCOLS["stego", "pascal_context"], crf=False)


# -- a real (tiny) checkpoint, all methods, all code paths -------------------

def test_all_methods_and_json(synth_root, tiny_checkpoint):
    from segeig.predictor import load

    segmenter = load(tiny_checkpoint, device="cpu")
    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], synth_root)
    seen = []
    for method, segments in (("eigen", 12), ("eigen+kmeans", 10), ("kmeans", 8)):
        result = evaluate(segmenter, dataset, method=method, crf=True, max_images=2,
                          progress=lambda it, total: (seen.append(total), it)[1])
        assert (result.method, result.n_segments, result.n_images) == (method, segments, 2)
        data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
        for key in ("miou", "pixel_acc", "per_class_iou", "miou_crf", "pixel_acc_crf",
                    "n_images", "protocol", "method", "match", "timing", "seconds"):
            assert key in data
        assert 0 <= data["miou"] <= 100 and 0 <= data["miou_crf"] <= 100
        assert list(data["per_class_iou"]) == dataset.class_names
        assert set(TIMING_KEYS) <= set(data["timing"])
        assert np.array(data["confusion"]).shape == (segments, 5)
        assert sum(result.timing[k] for k in TIMING_KEYS) <= result.timing["total"] + 1e-6
    assert seen == [2, 2, 2]


def test_no_crf_gives_nulls(synth_root, tiny_checkpoint):
    from segeig.predictor import load

    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], synth_root)
    result = evaluate(load(tiny_checkpoint, device="cpu"), dataset, crf=False)
    data = result.to_dict()
    assert data["miou_crf"] is None and data["pixel_acc_crf"] is None
    assert data["per_class_iou_crf"] is None
    assert "off" in format_table(result)
    assert all(ex.pred_crf is None for ex in result.examples)


def test_paths_agree(tmp_path, tiny_model):
    # Batched forward, DataLoader workers and a CRF process pool must give the
    # same numbers as the plain inline path.
    root = make_synthetic_dataset(tmp_path, 0, 4, (40, 50), 4, seed=2)
    protocol = dataclasses.replace(PROTOCOLS["stego", "custom"], short_side=32, crop=32)
    dataset = load_eval_dataset(protocol, root)
    segmenter = Segmenter(tiny_model, device="cpu")
    plain = evaluate(segmenter, dataset, protocol, crf=True, crf_workers=0)
    other = evaluate(segmenter, dataset, protocol, crf=True, crf_workers=1, batch_size=3,
                     loader_workers=1)
    # Batched matmuls may round differently: allow a handful of flipped pixels.
    diff = np.abs(plain.scores.confusion - other.scores.confusion).sum()
    assert diff <= 0.002 * plain.scores.confusion.sum()
    diff_crf = np.abs(plain.scores_crf.confusion - other.scores_crf.confusion).sum()
    assert diff_crf <= 0.01 * plain.scores_crf.confusion.sum()
    assert [ex.name for ex in plain.examples] == [ex.name for ex in other.examples]


# -- reports and CLI ----------------------------------------------------------

@pytest.mark.parametrize(("extra", "used"), [(0, "hungarian"), (3, "majority")])
def test_auto_match_follows_the_segment_count(tmp_path, tiny_model, extra, used):
    # Clusters 0..3 predict the four classes; `extra` further clusters never win.
    oracle = OracleSegmenter(tiny_model, clusters=(2, 0, 3, 1), extra=extra)
    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], _stripe_dataset(tmp_path))
    result = evaluate(oracle, dataset, crf=False)
    assert (result.match, result.match_used, result.scores.match) == ("auto", used, used)
    data = result.to_dict()
    assert (data["match"], data["match_used"], data["class_map"]) == ("auto", used, None)
    # Both matchings are reported for the same predictions.
    assert set(data["by_match"]) == {"hungarian", "majority"}
    assert data["by_match"]["majority"]["miou"] == pytest.approx(100.0)
    assert data["by_match"]["hungarian"]["miou"] == pytest.approx(100.0)
    assert data["by_match"]["majority"]["miou_crf"] is None


def test_report_shows_both_matchings(tmp_path, tiny_model):
    # 3 clusters for 4 classes: majority scores, hungarian is undefined (and says so).
    oracle = OracleSegmenter(tiny_model, clusters=(0, 1, 2, 2), extra=0)
    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], _stripe_dataset(tmp_path / "d"))
    result = evaluate(oracle, dataset, crf=False)
    text = write_report(result, tmp_path / "r")["report"].read_text()
    assert "| matching | auto → majority |" in text
    majority = result.scores
    assert (f"| majority (used) | {majority.miou:.1f} | {majority.pixel_acc:.1f} | off | off |"
            in text)
    assert "| hungarian | n/a: fewer segments than classes |" in text
    table = format_table(result)
    assert "auto → majority matching" in table and "majority (used)" in table
    assert result.to_dict()["by_match"]["hungarian"] is None


def test_report_files(tmp_path, oracle):
    dataset = load_eval_dataset(PROTOCOLS["native", "custom"], _stripe_dataset(tmp_path / "d"))
    result: EvaluationResult = evaluate(oracle, dataset, crf=True, crf_workers=0)
    paths = write_report(result, tmp_path / "report", meta={"checkpoint": "oracle"},
                         n_examples=2)
    assert set(paths) == set(REPORT_FILES)
    text = paths["report"].read_text()
    for name in ("confusion.png", "confusion_crf.png", "examples.png", "legend.png",
                 "results.json"):
        assert f"({name})" in text
    assert "| 0 | red | 100.0 | 100.0 |" in text
    with Image.open(paths["examples"]) as grid:
        assert grid.width > 4 * 100 and grid.height > 2 * 80  # 4 columns, 2 rows
    assert json.loads(paths["json"].read_text())["checkpoint"] == "oracle"


def test_cli_end_to_end(synth_root, tiny_checkpoint, tmp_path, capsys):
    out_json = tmp_path / "out" / "r.json"
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "custom",
                 "--root", str(synth_root), "--method", "eigen+kmeans", "--crf-workers", "0",
                 "--json", str(out_json), "--report-dir", str(tmp_path / "rep"),
                 "--device", "cpu", "--crf-backend", "torch"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "time split" in printed
    data = json.loads(out_json.read_text())
    # auto: 10 segments for 5 classes, so majority (hungarian would score 5 clusters wrong).
    assert (data["method"], data["protocol"], data["match"], data["match_used"]) == (
        "eigen+kmeans", "native", "auto", "majority")
    assert data["n_images"] == 3 and data["miou_crf"] is not None
    assert data["crf_backend"] == "torch"
    assert (tmp_path / "rep" / "report.md").is_file()


def test_cli_errors(synth_root, tiny_checkpoint, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "custom",
                 "--root", str(synth_root), "--method", "kmeans", "--no-crf",
                 "--max-images", "0"])
    assert code == 2 and "--max-images must be >= 1" in capsys.readouterr().err
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset",
                 "pascal_context", "--root", str(synth_root), "--no-crf"])
    assert code == 2 and "VOCdevkit" in capsys.readouterr().err


def test_spectral_clusters_has_a_hidden_old_name(capsys):
    """``--spectral-clusters S`` was ``--clusters S``: the old spelling still parses to
    the same value but is not shown, so ``evaluate --help`` names one flag only."""
    from segeig.cli import build_parser

    parse = build_parser().parse_args
    base = ["evaluate", "--checkpoint", "c", "--dataset", "custom", "--root", "r"]
    assert parse(base).spectral_clusters is None
    assert parse([*base, "--spectral-clusters", "7"]).spectral_clusters == 7
    assert parse([*base, "--clusters", "7"]).spectral_clusters == 7
    # Both spellings are one option, as with a repeated flag: the last one wins.
    assert parse([*base, "--clusters", "3", "--spectral-clusters", "4"]).spectral_clusters == 4
    assert parse([*base, "--spectral-clusters", "4", "--clusters", "3"]).spectral_clusters == 3
    # Checked (and named by its new spelling) before the checkpoint is opened.
    assert main([*base, "--clusters", "0"]) == 2
    assert "--spectral-clusters must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    shown = capsys.readouterr().out
    assert "--spectral-clusters S" in shown and "--clusters" not in shown


def test_unique_names_key_json():
    from segeig.evaluation.scoring import unique_names

    assert unique_names(["wall", "sky", "wall"]) == ["0:wall", "sky", "2:wall"]
    assert unique_names(["a", "b"]) == ["a", "b"]


def test_cli_propagation_steps(synth_root, tiny_checkpoint, tmp_path, capsys):
    """``--propagation-steps`` reaches eigen's scoring and is recorded; 0 is the plain argmax."""
    figures = {}
    for steps in ("0", None):
        out_json = tmp_path / f"r{steps}.json"
        extra = ["--propagation-steps", steps] if steps else []
        code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "custom",
                     "--root", str(synth_root), "--method", "eigen", "--no-crf", "--device",
                     "cpu", "--json", str(out_json), *extra])
        assert code == 0
        figures[steps] = json.loads(out_json.read_text())
    assert figures["0"]["propagation_steps"] == 0 and figures[None]["propagation_steps"] == 5
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "custom",
                 "--root", str(synth_root), "--no-crf", "--propagation-steps", "-1"])
    assert code == 2 and "propagation steps must be an int ≥ 0" in capsys.readouterr().err
