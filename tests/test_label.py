"""Class maps: `segeig label`, stored maps in checkpoints, class outputs of segment/evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import segeig
from segeig.backbone import Backbone
from segeig.checkpoint import (
    UNASSIGNED,
    CheckpointError,
    ClassMap,
    read_config,
    save_checkpoint,
    save_class_map,
)
from segeig.cli import main
from segeig.config import HeadConfig
from segeig.data.synthetic import make_synthetic_dataset
from segeig.evaluation import (
    class_map_from_names,
    evaluate,
    fit_class_map,
    format_names,
    load_eval_dataset,
    parse_names,
    resolve_protocol,
)
from segeig.labelmaps import read_label, read_segments
from segeig.model import build_model
from tests.conftest import random_image, tiny_backbone_config

K, CENTROIDS, CLASSES = 12, 6, 5
OLD = Path(__file__).parent / "data" / "checkpoint-0.1.0"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=K)).eval()
    model.set_centroids("eigen+kmeans", torch.randn(CENTROIDS, model.head.hidden_dim))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), model)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), 0, 3, (48, 64), CLASSES,
                                  seed=0)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _pixel_accuracy(labels_dir: Path, root: Path) -> float:
    ok = total = 0
    for path in sorted(labels_dir.glob("*.png")):
        gt = read_label(root / "annotations" / "val" / path.name)
        valid = gt != 255
        ok += int((read_segments(path)[valid] == gt[valid]).sum())
        total += int(valid.sum())
    return 100.0 * ok / total


# -- the two-step workflow, end to end -----------------------------------------

@pytest.mark.parametrize("method", ["eigen", "eigen+kmeans"])
def test_label_evaluate_fixed_segment(checkpoint, synth, tmp_path, capsys, method):
    out = tmp_path / "labelled"
    code, printed, err = _cli(capsys, "label", "--checkpoint", str(checkpoint), "--dataset",
                              "custom", "--root", str(synth), "--method", method,
                              "--out", str(out), "--device", "cpu")
    assert code == 0, err
    assert f"{method}: " in printed and "majority matching" in printed  # auto: S != C
    source = read_config(out)["classes"]["source"]
    assert (source["kind"], source["split"], source["match_used"]) == (
        "dataset", "val", {method: "majority"})

    # evaluate --match fixed on the same split reproduces the fitted map's mIoU exactly.
    report = tmp_path / "fixed.json"
    code, printed, err = _cli(capsys, "evaluate", "--checkpoint", str(out), "--dataset",
                              "custom", "--root", str(synth), "--method", method, "--match",
                              "fixed", "--no-crf", "--json", str(report), "--device", "cpu")
    assert code == 0, err
    data = json.loads(report.read_text())
    assert (data["match"], data["match_used"]) == ("fixed", "fixed")
    assert data["class_map"]["source"]["kind"] == "dataset"
    assert data["miou"] == pytest.approx(source["miou"][method], abs=1e-6)
    assert "stored class map: fitted on custom val" in printed

    # segment's class label maps reach the pixel accuracy of majority matching.
    majority = tmp_path / "majority.json"
    assert _cli(capsys, "evaluate", "--checkpoint", str(checkpoint), "--dataset", "custom",
                "--root", str(synth), "--method", method, "--match", "majority", "--no-crf",
                "--json", str(majority), "--device", "cpu")[0] == 0
    seg = tmp_path / "seg"
    code, printed, err = _cli(capsys, "segment", str(synth / "images" / "val"), "--checkpoint",
                              str(out), "--method", method, "--out", str(seg), "--overlay",
                              "--workers", "0", "--device", "cpu")
    assert code == 0, err
    assert "class label maps" in printed
    accuracy = _pixel_accuracy(seg / "labels", synth)
    assert abs(accuracy - json.loads(majority.read_text())["pixel_acc"]) <= 1.0
    summary = json.loads((seg / "summary.json").read_text())
    assert summary["classes"] == [f"c{c:02d}-" + n for c, n in
                                  enumerate(("flat", "stripes", "checker", "dots", "grain"))]
    assert summary["unassigned"] == UNASSIGNED and summary["settings"]["clusters"] is False
    # Overlays carry a legend below the picture: taller than the input.
    from PIL import Image

    with Image.open(next((seg / "overlays").glob("*.jpg"))) as overlay:
        assert overlay.height > 48


def test_segment_clusters_flag_and_unlabelled_run_unchanged(checkpoint, synth, tmp_path, capsys):
    seg = segeig.load(checkpoint, device="cpu")
    class_map, _ = fit_class_map(seg, load_eval_dataset(resolve_protocol("native", "custom"),
                                                        synth), methods=["eigen+kmeans"])
    labelled = save_class_map(checkpoint, tmp_path / "l", class_map)
    images = str(synth / "images" / "val")
    args = ["segment", images, "--workers", "0", "--device", "cpu"]
    assert _cli(capsys, *args, "--checkpoint", str(labelled), "--clusters",
                "--out", str(tmp_path / "c"))[0] == 0
    assert _cli(capsys, *args, "--checkpoint", str(checkpoint),
                "--out", str(tmp_path / "u"))[0] == 0
    for run in ("c", "u"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert "classes" not in summary and summary["settings"]["method"] == "eigen"
    # Raw cluster ids, the same as the unlabelled checkpoint's.
    for path in sorted((tmp_path / "u" / "labels").glob("*.png")):
        clusters = read_segments(path)
        assert np.array_equal(read_segments(tmp_path / "c" / "labels" / path.name), clusters)
        assert clusters.max() < K  # eigen: the head argmax
    # Class maps into the cluster run's folder are refused (settings guard).
    code, _, err = _cli(capsys, *args, "--checkpoint", str(labelled), "--out",
                        str(tmp_path / "c"))
    assert code == 2 and "clusters" in err


# -- maps: many-to-one, unassigned, predictor API ------------------------------

def test_names_map_many_to_one_and_unassigned(checkpoint, rng):
    names = parse_names('{"0": "sky", "3": " sky ", "5": "road", "11": "tree"}', K)
    assert names == {0: "sky", 3: "sky", 5: "road", 11: "tree"}
    class_map = class_map_from_names(names, K, "eigen", {"file": "n.json"})
    assert class_map.names == ["sky", "road", "tree"]
    table = class_map.maps["eigen"]
    assert table[[0, 3, 5, 11]].tolist() == [0, 0, 1, 2]
    assert (np.delete(table, [0, 3, 5, 11]) == UNASSIGNED).all()
    assert json.loads(format_names(names)) == {"0": "sky", "3": "sky", "5": "road", "11": "tree"}

    seg = segeig.load(checkpoint, device="cpu")
    seg.class_map = class_map
    image = random_image(rng, 40, 56)
    clusters = seg.predict(image, method="eigen")
    classes = seg.predict(image, method="eigen", classes=True)
    assert classes.dtype == np.int32 and np.array_equal(classes, table[clusters])
    assert seg.class_names == ["sky", "road", "tree"] and seg.class_palette.shape == (3, 3)
    with pytest.raises(ValueError, match="methods with one: eigen"):
        seg.predict(image, method="eigen+kmeans", classes=True)


def test_hungarian_map_leaves_extra_clusters_unassigned(checkpoint, synth):
    seg = segeig.load(checkpoint, device="cpu")
    dataset = load_eval_dataset(resolve_protocol("native", "custom"), synth)
    class_map, results = fit_class_map(seg, dataset, methods=["eigen"], match="hungarian")
    table = class_map.maps["eigen"]
    assert (table == UNASSIGNED).sum() == K - CLASSES  # one-to-one: 5 of 12 clusters used
    assert sorted(table[table != UNASSIGNED].tolist()) == list(range(CLASSES))
    assert results["eigen"].match_used == "hungarian"
    with pytest.raises(ValueError, match="not 'fixed'"):
        fit_class_map(seg, dataset, match="fixed")


@pytest.mark.parametrize(("text", "message"), [
    ('{"0": "sky",', "not valid JSON"),
    ("[1, 2]", "must be a non-empty JSON object"),
    ("{}", "must be a non-empty JSON object"),
    ('{"sky": "0"}', "keys must be integer cluster ids"),
    ('{"1.0": "sky"}', "keys must be integer cluster ids"),
    ('{"-1": "sky"}', "keys must be integer cluster ids"),
    ('{"12": "sky", "40": "road"}', r"unknown cluster ids \[12, 40\]"),
    ('{"3": ""}', "non-blank string"),
    ('{"3": 7}', "non-blank string"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_names_file_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_names(text, K)


def test_names_cli_errors_and_overwrite_policy(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": "sky"}')
    base = ["label", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]
    code, _, err = _cli(capsys, *base, "--names", str(bad))
    assert code == 2 and "bad.json: keys must be integer cluster ids" in err
    good = tmp_path / "names.json"
    good.write_text('{"1": "sky"}')
    code, _, err = _cli(capsys, *base, "--names", str(good), "--method", "eigen+kmeans",
                        "--method", "eigen")
    assert code == 2 and "one --method" in err
    code, _, err = _cli(capsys, *base, "--names", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read the names file" in err
    # The input checkpoint is never replaced without --overwrite.
    before = checkpoint.read_bytes()
    code, _, err = _cli(capsys, "label", "--checkpoint", str(checkpoint), "--out",
                        str(checkpoint.parent), "--names", str(good))
    assert code == 2 and "is the input checkpoint" in err and checkpoint.read_bytes() == before
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / checkpoint.name).write_bytes(before)
    code, printed, err = _cli(capsys, "label", "--checkpoint", str(copy), "--out", str(copy),
                              "--names", str(good), "--overwrite")
    assert code == 0, err
    assert "1 of 12 clusters named" in printed
    assert segeig.load(copy, device="cpu").class_names == ["sky"]


def test_method_without_a_map_is_a_clear_error(checkpoint, tmp_path, capsys, rng):
    names = tmp_path / "n.json"
    names.write_text('{"0": "sky", "2": "grass"}')
    out = tmp_path / "l"
    assert _cli(capsys, "label", "--checkpoint", str(checkpoint), "--names", str(names),
                "--method", "eigen+kmeans", "--out", str(out))[0] == 0
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(random_image(rng, 40, 56)).save(image)
    code, _, err = _cli(capsys, "segment", str(image), "--checkpoint", str(out), "--method",
                        "eigen", "--out", str(tmp_path / "s"), "--workers", "0")
    assert code == 2 and "'eigen' has no class map" in err and "with one: eigen+kmeans" in err
    # Without --method the mapped method is chosen.
    code, _, err = _cli(capsys, "segment", str(image), "--checkpoint", str(out), "--out",
                        str(tmp_path / "s2"), "--workers", "0")
    assert code == 0, err
    labels = read_segments(tmp_path / "s2" / "labels" / "img.png")
    assert set(np.unique(labels).tolist()) <= {0, 1, UNASSIGNED}


def test_info_lists_classes(checkpoint, tmp_path, capsys):
    names = tmp_path / "n.json"
    names.write_text('{"0": "sky", "4": "sky", "2": "grass"}')
    out = tmp_path / "l"
    _cli(capsys, "label", "--checkpoint", str(checkpoint), "--names", str(names), "--out", str(out))
    code, printed, _ = _cli(capsys, "info", str(out))
    assert code == 0
    assert "classes  : 2, named by hand (n.json)" in printed
    assert "eigen: 12 clusters -> 2 classes, 9 unassigned" in printed
    assert "  0 sky" in printed and "  1 grass" in printed


# -- untrusted sections and old checkpoints ----------------------------------------

def _section(**changes):
    section = {"names": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]],
               "maps": {"eigen": [0, 1, 255] + [0] * (K - 3)}, "source": {}}
    section.update(changes)
    return section


@pytest.mark.parametrize(("changes", "message"), [
    ({"names": []}, "non-empty list"),
    ({"names": ["a", "b\n"]}, "printable"),
    ({"names": "ab"}, "non-empty list"),
    ({"palette": [[1, 2, 3]]}, "one per class"),
    ({"palette": [[1, 2, 300], [0, 0, 0]]}, "in 0..255"),
    ({"palette": [[1, 2, 3.5], [0, 0, 0]]}, "integers"),
    ({"maps": {"eigen": [0, 2] + [0] * (K - 2)}}, "class index 2 is outside 0..1"),
    ({"maps": {"eigen": [True] * K}}, "lists of integers"),
    ({"maps": {"eigen": [0, 1]}}, "has 2 entries but the method predicts 12"),
    ({"maps": {"kmeans": [0] * 8}}, "does not have"),
    ({"maps": {}}, "at least one method"),
    ({"extra": 1}, "unknown keys"),
    ({"source": {"dataset": "x\x1b[2J"}}, "printable strings"),
    ({"source": [1]}, "must be a JSON object"),
])
def test_malformed_class_sections_are_refused(tiny_model, tmp_path, changes, message):
    path = save_checkpoint(tmp_path / "c", tiny_model, extra={"classes": _section(**changes)})
    with pytest.raises(CheckpointError, match=message):
        segeig.load(path, device="cpu")


def test_save_class_map_checks_the_checkpoint(checkpoint, tmp_path):
    class_map = ClassMap(["a"], np.zeros((1, 3), np.uint8), {"eigen": np.zeros(K + 1, int)})
    with pytest.raises(CheckpointError, match="13 entries but the method predicts 12"):
        save_class_map(checkpoint, tmp_path / "x", class_map)
    assert not (tmp_path / "x").exists()


def test_old_checkpoint_can_be_labelled(tmp_path, capsys, rng):
    old = segeig.load(OLD, device="cpu")
    assert old.class_map is None and old.class_names is None
    with pytest.raises(ValueError, match="no class map"):
        old.predict(random_image(rng, 32, 32), classes=True)
    names = tmp_path / "n.json"
    names.write_text('{"0": "person", "1": "sky", "2": "sky"}')
    out = tmp_path / "old-labelled"
    code, _, err = _cli(capsys, "label", "--checkpoint", str(OLD), "--names", str(names),
                        "--out", str(out))
    assert code == 0, err
    labelled = segeig.load(out, device="cpu")
    assert labelled.class_names == ["person", "sky"]
    image = random_image(rng, 64, 64)
    clusters = old.predict(image)
    assert np.array_equal(labelled.predict(image), clusters)  # the same model
    assert np.array_equal(labelled.predict(image, classes=True),
                          labelled.class_map.maps["eigen"][clusters])
    # Everything but the new section is copied as it was.
    before, after = read_config(OLD), read_config(out)
    assert {k: v for k, v in after.items() if k != "classes"} == before


def test_evaluate_fixed_needs_a_map_and_known_classes(checkpoint, synth, tmp_path):
    seg = segeig.load(checkpoint, device="cpu")
    dataset = load_eval_dataset(resolve_protocol("native", "custom"), synth)
    with pytest.raises(ValueError, match="has none; fit one with `segeig label`"):
        evaluate(seg, dataset, match="fixed", crf=False)
    seg.class_map = class_map_from_names({0: "sky"}, K, "eigen")
    with pytest.raises(ValueError, match="not among the dataset's: 'sky'"):
        evaluate(seg, dataset, match="fixed", crf=False)
    # Names are matched to the dataset's classes by name, in any order.
    seg.class_map = class_map_from_names({0: "c02-checker", 1: "c00-flat"}, K, "eigen")
    result = evaluate(seg, dataset, match="fixed", crf=False)
    assert result.scores.mapping[:3] == [2, 0, -1] and result.match_used == "fixed"
