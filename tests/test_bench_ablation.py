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
