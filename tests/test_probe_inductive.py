"""scripts/probe_inductive.py: the Nyström extension of exact eigenvectors to new patches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import segeig
from segeig.evaluation import load_eval_dataset, resolve_protocol
from segeig.kernel import feature_knn_graph, symmetric_normalize
from segeig.spectral import top_eigenvectors
from tests.test_bench_ablation import TINY
from tests.test_train_scripts import load_script


def blobs(generator: torch.Generator, n: int, centres: torch.Tensor) -> torch.Tensor:
    """``n`` points around each centre (rows of ``centres``), small spread."""
    return torch.cat([c + 0.1 * torch.randn(n, centres.shape[1], generator=generator)
                      for c in centres])


def test_nystrom_extends_each_cluster_to_new_points_of_that_cluster():
    probe = load_script("probe_inductive")
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 16, generator=generator), dim=1) * 3
    train, new = blobs(generator, 40, centres), blobs(generator, 10, centres)
    kernel = symmetric_normalize(feature_knn_graph(train, 8))
    values, vectors = top_eigenvectors(kernel, 3)
    extended = probe.nystrom(train, new, vectors, values, k_feat=8)
    assert extended.shape == (30, 3)
    # Each new point's row points the way its own cluster's training rows do.
    train_rows = F.normalize(torch.from_numpy(vectors).float(), dim=1)
    cluster_means = torch.stack([train_rows[i * 40:(i + 1) * 40].mean(0) for i in range(3)])
    nearest = (F.normalize(extended, dim=1) @ cluster_means.T).argmax(1)
    assert nearest.tolist() == [i for i in range(3) for _ in range(10)]
    # On a training point it reproduces the eigenvector up to the graph's
    # one-sided kNN (self included) against the symmetrised graph: close, not equal.
    again = probe.nystrom(train, train, vectors, values, k_feat=8)
    cosine = F.cosine_similarity(again, torch.from_numpy(vectors).float(), dim=0)
    assert (cosine > 0.9).all()


def test_nystrom_probe_runs_end_to_end_and_scores_kmeans_unpropagated(tmp_path, capsys):
    """The whole probe on a tiny texture set; its "plain" k-means line is the unpropagated one."""
    ablation = load_script("bench_ablation")
    work = tmp_path / "w"
    assert ablation.main([*TINY, "--references", "--workdir", str(work),
                          "--jsonl", str(tmp_path / "r.jsonl"),
                          "--variant", "base:k=8,steps=2"]) == 0
    capsys.readouterr()
    probe = load_script("probe_inductive")
    kmeans = work / "kmeans-0" / "checkpoint.safetensors"
    assert probe.main([str(work / "base-0" / "checkpoint.safetensors"), str(work / "texture-0"),
                       "--mode", "nystrom", "--kmeans", str(kmeans)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("exact spectral (val kernel): ")
    assert lines[1].startswith("nystrom head: val energy ")
    plain = float(lines[2].rsplit(" ", 1)[1])
    # The same figure recomputed from the k-means checkpoint with propagation off.
    segmenter = segeig.load(kmeans, device="cpu", propagation_steps=0)
    val = load_eval_dataset(resolve_protocol("native", "custom"), work / "texture-0", "val")
    _, _, _, grids = probe.patches(segmenter, [val.load(i).image for i in range(len(val))])
    with torch.no_grad():
        scores = torch.cat([segmenter.forward(x, "kmeans").scores[0].flatten(1).T
                            for x, _ in grids])
    assert plain == round(probe.score(scores.argmax(1), grids, val, 8), 1)
    assert [line.split(":")[0] for line in lines[4:]] == [
        f"propagation {n} steps" for n in (1, 3, 5)]
    assert all(", kmeans " in line for line in lines[4:])
