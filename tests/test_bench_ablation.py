"""scripts/bench_ablation.py: variants × seeds on the texture set, resumable JSONL, table."""

from __future__ import annotations

import json

from tests.test_train_scripts import load_script

TINY = ["--seeds", "0", "--n-train", "4", "--n-val", "2", "--size", "64", "--k", "8",
        "--threads", "1"]


def test_rows_references_diagnostics_and_resume(tmp_path, capsys):
    script = load_script("bench_ablation")
    jsonl = tmp_path / "r.jsonl"
    args = [*TINY, "--references", "--kmeans-on-eigen", "--workdir", str(tmp_path / "w"),
            "--jsonl", str(jsonl), "--variant", "base:k=8,steps=2",
            "--variant", "fit:k=8,steps=2", "--table"]
    assert script.main(args) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r.get("kind", r.get("variant")) for r in rows] == ["reference", "base", "fit"]
    for r in rows[1:]:
        assert r["k"] == 8 and r["seed"] == 0
        for key in ("eigen", "eigen+kmeans", "eigen-njw"):
            assert 0 <= r[key] <= 100
        for key in ("align", "align8", "energy", "nmi"):
            assert 0 <= r[key] <= 1 + 1e-6
        assert 1 <= r["used"] <= 8 and len(r["eig_learned"]) == len(r["eig_exact"]) == 8
    assert 0 <= rows[0]["kmeans"] <= 100 and 0 <= rows[0]["exact"] <= 100
    table = capsys.readouterr().out
    assert "| base | 1 |" in table and "| fit | 1 |" in table
    # Done (variant, seed) pairs are skipped: a second call adds nothing.
    assert script.main(args) == 0
    assert len(jsonl.read_text().splitlines()) == 3


def test_parse_variant():
    script = load_script("bench_ablation")
    assert script.parse_variant("ep60:epochs=60,lr=3e-3,scale=1.0/1.0,head.tau_min=0.5") == (
        "ep60", {"epochs": 60, "lr": 0.003, "scale": (1.0, 1.0), "head.tau_min": 0.5})
    assert script.parse_variant("base") == ("base", {})


def test_references_at_another_resolution_are_kept_apart(tmp_path):
    script = load_script("bench_ablation")
    jsonl = tmp_path / "r.jsonl"
    common = [*TINY, "--references", "--workdir", str(tmp_path / "w"), "--jsonl", str(jsonl)]
    assert script.main(common) == 0
    assert script.main([*common, "--ref", "resolution=48,crop=48"]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r.get("ref") for r in rows] == [None, {"resolution": 48, "crop": 48}]
    # Each reference setting has its own k-means checkpoint, at its own resolution.
    assert (tmp_path / "w" / "kmeans-0").is_dir()
    assert (tmp_path / "w" / "kmeans-crop48-resolution48-0").is_dir()
    assert script.main([*common, "--ref", "resolution=48,crop=48"]) == 0  # cached: no new row
    assert len(jsonl.read_text().splitlines()) == 2


def test_collapse_probes_run_and_report(tmp_path, capsys):
    probe = load_script("probe_collapse")
    jsonl = tmp_path / "p.jsonl"
    args = [*TINY, "--workdir", str(tmp_path / "w"), "--jsonl", str(jsonl)]
    assert probe.main(["--gumbel", "hard", "--normalize", "all", *args,
                       "--variant", "hard:k=8,steps=2"]) == 0
    assert probe.main(["--warm-kmeans", "20", "--refine-kernel-kmeans", "3", *args,
                       "--variant", "warm:k=8,steps=1,lr=1e-9,lr_min=0"]) == 0
    out = capsys.readouterr().out
    assert "kernel k-means: objective" in out
    agreement = float(out.split("agreement with k-means ")[1].split()[0])
    assert 0.0 <= agreement <= 1.0
    assert probe.main(["--gumbel", "none", "--normalize", "all", "--kmeans-on-eigen", *args,
                       "--variant", "continuous:k=8,steps=2"]) == 0
    # 32 outputs on 4 tiny images: some are unused, and get re-seeded.
    assert probe.main(["--reseed-every", "2", *args, "--variant", "reseed:k=32,steps=6"]) == 0
    assert "dead output(s)" in capsys.readouterr().out
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["hard", "warm", "continuous", "reseed"]
    assert 0 <= rows[2]["eigen-njw"] <= 100  # k-means rounding of the raw outputs
    assert all(0 <= r["eigen"] <= 100 for r in rows)
    # The patches end with each run: training is segeig's own again.
    from segeig.head import gumbel_probs
    from segeig.train import step, trainer

    assert step.gumbel_probs is gumbel_probs
    assert probe.objective_module.normalize_columns is not probe.normalize_all
    assert trainer.Trainer.__init__.__module__ == "segeig.train.trainer"
    assert step.TrainStep.__call__.__module__ == "segeig.train.step"
    checkpoint = tmp_path / "w" / "warm-0" / "checkpoint.safetensors"
    assert probe.main(["--ratio-association", str(checkpoint),
                       "--root", str(tmp_path / "w" / "texture-0")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["learned", "exact", "kmeans"]
    for line in lines:
        values = [float(v) for v in line.split()[-5::2] if v.replace(".", "").isdigit()]
        assert values and all(v >= 0 for v in values)


def test_kernel_kmeans_recovers_blocks_and_raises_the_trace():
    import torch

    probe = load_script("probe_collapse")
    blocks = torch.block_diag(torch.ones(10, 10), torch.ones(6, 6), torch.ones(8, 8))
    kernel = (blocks - torch.eye(24)).to_sparse()
    truth = torch.tensor([0] * 10 + [1] * 6 + [2] * 8)
    start = truth.clone()
    start[[0, 1, 11, 20]] = torch.tensor([1, 2, 0, 1])  # four patches in the wrong block
    refined = probe.kernel_kmeans(kernel, start, 3, iters=10)
    assert torch.equal(refined, truth)
    assert probe.ratio(kernel, refined) > probe.ratio(kernel, start)


def test_table_uses_the_references_of_the_asked_setting():
    script = load_script("bench_ablation")
    row = {"variant": "v", "seed": 0, "eigen": 50.0, "eigen+kmeans": 51.0}
    refs = [{"kind": "reference", "seed": 0, "k": 64, "kmeans": 58.0, "exact": 65.0},
            {"kind": "reference", "seed": 0, "k": 64, "ref": {"resolution": 224},
             "kmeans": 66.0, "exact": 70.0},
            {"kind": "reference", "seed": 0, "k": 16, "kmeans": 53.0, "exact": 55.0}]
    for k, ref, cells in ((64, {}, "58.0 ± 0.0 | 65.0 ± 0.0"),
                          (64, {"resolution": 224}, "66.0 ± 0.0 | 70.0 ± 0.0"),
                          (16, {}, "53.0 ± 0.0 | 55.0 ± 0.0")):
        assert script.table([*refs, row], k, ref).splitlines()[-1].endswith(f"| {cells} |")
