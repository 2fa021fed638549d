"""Where do the learned eigenfunctions lose against exact spectral clustering?

Trains one head per (variant, seed) on the texture proxy set
(:mod:`segeig.data.textures`, one set per seed) with the proxy backbone, scores
it next to the head-free references of the same seed, and measures how close
the learned outputs come to the exact eigenvectors of the same kernel over the
validation patches. One JSON line per (variant, seed) goes to ``--jsonl``
(appended, so runs can be split and resumed: a (variant, seed) already there
is skipped); ``--table`` prints mean ± spread (population std) per variant.

Scores: majority mIoU at S = K segments, no CRF, ``native`` protocol:

* ``eigen`` (argmax of the head), ``eigen+kmeans`` (the checkpoint's centroids);
* references per seed: ``kmeans`` (k-means with K centroids on the raw final
  backbone features of the train split) and ``exact`` (``spectral-dataset``:
  exact top-K eigenvectors of the training kernel over all validation patches,
  Ng–Jordan–Weiss clustering into K clusters).

Diagnostics on the validation patches, against the exact top-K eigenvectors V
of the same kernel (the one ``exact`` clusters):

* ``align``: ‖Q_Ψᵀ V‖²_F / K, the mean squared cosine of the principal angles
  between span(Ψ) (learned outputs, orthonormalised) and span(V), in [0, 1];
  ``align8``: the same for the top 8 eigenvectors only;
* ``energy``: tr(Q_Ψᵀ κ Q_Ψ) / Σ top-K exact eigenvalues, the share of the
  optimum the learned subspace reaches (≤ 1);
* ``nmi``: NMI between the head's argmax and the exact clustering;
* ``perplexity``: exp(entropy) of the segment sizes of the head's argmax.

    python scripts/bench_ablation.py --weights PROXY --variant base \\
        --variant epochs40:epochs=40 --variant bs16:batch_size=16 --seeds 0,1,2 \\
        --jsonl /tmp/ablation.jsonl --table

The same at a 224 px working resolution with the ``fit`` recipe (the
"where the gap sits" table of docs/method.md; references re-scored there):

    F=crop=224,resolution=224,scale=0.75/1.5,lr=3e-3,batch_size=4,steps=960
    python scripts/bench_ablation.py --weights PROXY --n-val 40 --seeds 0,1,2 \
        --references --k 16 --ref resolution=224,crop=224 \
        --variant f16:k=16,$F --jsonl /tmp/k16.jsonl --table
    python scripts/bench_ablation.py --weights PROXY --n-val 40 --seeds 0 \
        --references --k 64 --ref resolution=224,crop=224 --variant f64:k=64,$F \
        --variant kf32:k=64,$F,kernel.k_feat=32 --variant a0:k=64,$F,kernel.alpha=0.0 \
        --variant f16k64:k=16,kmeans_k=64,$F --jsonl /tmp/k64.jsonl --table
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import normalized_mutual_info_score

from segeig.cluster import fit_kmeans
from segeig.config import BackboneConfig, KernelConfig
from segeig.data import build_dataset
from segeig.data.textures import make_texture_dataset
from segeig.evaluation import evaluate, load_eval_dataset, resolve_protocol
from segeig.evaluation.metrics import ConfusionAccumulator, evaluate_confusion
from segeig.evaluation.spectral_dataset import evaluate_spectral_dataset, kernel_config_of
from segeig.kernel import pad_to_grid
from segeig.predictor import Segmenter, load
from segeig.spectral import embedding_scores, set_kernel, to_scipy, top_eigenvectors
from segeig.train import default_config, fit_images, train
from segeig.transforms import to_tensor

logger = logging.getLogger("bench_ablation")

PROXY_BACKBONE = "deit_tiny_patch16_224"


def parse_value(text: str):
    """``"40"`` → 40, ``"1e-3"`` → 0.001, ``"a/b"`` → tuple, else the string."""
    if "/" in text:
        return tuple(parse_value(t) for t in text.split("/"))
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name:key=value,key=value"`` → (name, overrides); ``"fit"`` trains as ``segeig fit``."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_value(value.strip())
    return name, overrides


def with_nested(config, nested: dict):
    """``config`` with ``"section.field"`` overrides (``head.tau_min``, ``objective.beta``)."""
    for key, value in nested.items():
        section, name = key.split(".", 1)
        config = replace(config, **{section: replace(getattr(config, section), **{name: value})})
    config.validate()
    return config


def val_patches(segmenter: Segmenter, images: list[np.ndarray]):
    """Kernel features, padded grid images and head logits of every val image."""
    features, smalls, logits = [], [], []
    backbone = segmenter.model.backbone
    with torch.no_grad():
        for image in images:
            x = to_tensor(segmenter.working_image(image))[None].to(segmenter.device)
            out = segmenter.forward(x, "eigen") if segmenter.model.head is not None else None
            f = (out.features if out is not None else backbone(x)).kernel.float()[0].cpu()
            features.append(f)
            padded = pad_to_grid(x.float(), f.shape[-2:], backbone.patch_size,
                                 tuple(backbone.mean))
            smalls.append(padded[0].cpu())
            if out is not None:
                logits.append(out.logits.float()[0].flatten(1).T.cpu())
    return features, smalls, logits


def diagnostics(segmenter: Segmenter, images: list[np.ndarray], k: int) -> dict:
    """Subspace alignment, captured energy, NMI and eigenvalues (see module docstring)."""
    features, smalls, logits = val_patches(segmenter, images)
    kernel = set_kernel(features, smalls, kernel_config_of(segmenter))
    values, vectors = top_eigenvectors(kernel, k)
    psi = torch.cat(logits).double().numpy()  # N×K learned outputs
    q, _ = np.linalg.qr(psi)
    overlap = q.T @ vectors
    matrix = to_scipy(kernel)
    energy = float(np.trace(q.T @ (matrix @ q)) / values.sum())
    learned = psi.argmax(1)
    exact = embedding_scores(vectors, k).argmax(1).numpy()
    sizes = np.bincount(learned, minlength=k) / len(learned)
    nz = sizes[sizes > 0]
    # Rayleigh quotients of the learned columns (unit-normalised), descending.
    cols = psi / np.linalg.norm(psi, axis=0, keepdims=True).clip(1e-12)
    rayleigh = np.sort(np.einsum("nk,nk->k", cols, matrix @ cols))[::-1]
    return {"align": float((overlap ** 2).sum() / k),
            "align8": float((overlap[:, :8] ** 2).sum() / 8),
            "energy": energy,
            "nmi": float(normalized_mutual_info_score(exact, learned)),
            "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
            "used": int((sizes > 0).sum()),
            "eig_exact": [round(float(v), 4) for v in values[:16]],
            "eig_learned": [round(float(v), 4) for v in rayleigh[:16]]}


def majority(segmenter: Segmenter, val, protocol, method: str) -> float:
    return evaluate(segmenter, val, protocol, method=method, match="majority",
                    crf=False).scores.miou


def references(seed: int, root: Path, backbone: BackboneConfig, k: int, kernel: KernelConfig,
               workdir: Path, overrides: dict | None = None) -> dict:
    """kmeans and exact spectral at K for this seed's set (cached in the JSONL).

    ``overrides`` are TrainConfig fields of the k-means checkpoint (``resolution``,
    ``crop``): the references are scored at that checkpoint's working resolution.
    """
    protocol = resolve_protocol("native", "custom")
    val = load_eval_dataset(protocol, root, "val")
    config = default_config("custom", root, backbone=backbone, method="kmeans", k=k,
                            kernel=kernel, workers=0, checkpoint_every=0, seed=seed,
                            feature_cache_dir=str(workdir / f"cache-{seed}"),
                            **(overrides or {}))
    tag = "".join(f"-{key}{value}" for key, value in sorted((overrides or {}).items()))
    checkpoint = train(config, workdir / f"kmeans{tag}-{seed}", device="cpu", overwrite=True)
    segmenter = load(checkpoint, device="cpu")
    out = {"kmeans": majority(segmenter, val, protocol, "kmeans")}
    exact = evaluate_spectral_dataset(segmenter, val, protocol, n_clusters=k,
                                      match="majority", crf=False, kernel_config=kernel,
                                      seed=seed)
    out["exact"] = exact.scores.miou
    return out


def run_variant(args, name: str, overrides: dict, seed: int, root: Path,
                backbone: BackboneConfig, workdir: Path) -> dict:
    protocol = resolve_protocol("native", "custom")
    val = load_eval_dataset(protocol, root, "val")
    start = time.perf_counter()
    if name.startswith("fit"):
        checkpoint = fit_images(root / "images" / "train", workdir / f"{name}-{seed}",
                                backbone=backbone, seed=seed, device="cpu", **overrides)
    else:
        flat = {k: v for k, v in overrides.items() if "." not in k}
        config = default_config("custom", root, backbone=backbone, workers=0,
                                checkpoint_every=0, seed=seed,
                                feature_cache_dir=str(workdir / f"cache-{seed}"), **flat)
        config = with_nested(config, {k: v for k, v in overrides.items() if "." in k})
        checkpoint = train(config, workdir / f"{name}-{seed}", device="cpu", overwrite=True)
    seconds = time.perf_counter() - start
    segmenter = load(checkpoint, device="cpu")
    row = {"variant": name, "seed": seed, "overrides": dict(overrides),
           "train_s": round(seconds, 1), "k": segmenter.model.head.k}
    for method in ("eigen", "eigen+kmeans"):
        row[method] = majority(segmenter, val, protocol, method)
    if args.kmeans_on_eigen:  # NJW-style clustering of the learned outputs, fitted on train
        row["eigen-njw"] = njw_on_learned(segmenter, root, val, seed)
    images = [val.load(i).image for i in range(len(val))]
    row.update(diagnostics(segmenter, images, segmenter.model.head.k))
    return row


def njw_on_learned(segmenter: Segmenter, root: Path, val, seed: int) -> float:
    """Majority mIoU of spherical k-means on the row-normalised learned outputs (K clusters)."""
    train_set = build_dataset("custom", root, "train", with_labels=False)
    rows = []
    with torch.no_grad():
        for i in range(len(train_set)):
            x = to_tensor(segmenter.working_image(train_set.load(i).image))[None]
            rows.append(segmenter.forward(x, "eigen").logits.float()[0].flatten(1).T)
    k = segmenter.model.head.k
    centroids = fit_kmeans(F.normalize(torch.cat(rows), dim=1), k, iters=20, seed=seed)
    accumulator = ConfusionAccumulator(k, val.num_classes)
    for i in range(len(val)):
        sample = val.load(i)
        x = to_tensor(segmenter.working_image(sample.image))[None]
        with torch.no_grad():
            logits = segmenter.forward(x, "eigen").logits.float()
            sim = torch.einsum("bkhw,sk->bshw", F.normalize(logits, dim=1), centroids)
            full = F.interpolate(sim, size=sample.label.shape, mode="bilinear",
                                 align_corners=False)
        accumulator.update(full.argmax(1)[0].numpy(), sample.label)
    return evaluate_confusion(accumulator.matrix, "majority")["miou"]


def table(rows: list[dict], k: int, ref: dict) -> str:
    """Mean ± spread per variant, beside the references computed at ``k`` with ``ref``."""
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        if "variant" in r:
            by_variant.setdefault(r["variant"], []).append(r)
    refs = {r["seed"]: r for r in rows if r.get("kind") == "reference" and r["k"] == k
            and r.get("ref", {}) == ref}
    cols = ["eigen", "eigen+kmeans", "eigen-njw", "align", "align8", "energy", "nmi",
            "perplexity", "train_s"]
    lines = ["| variant | seeds | " + " | ".join(cols) + " | kmeans | exact |",
             "|---" * (len(cols) + 4) + "|"]
    for name, rs in by_variant.items():
        cells = []
        for c in cols:
            vals = [r[c] for r in rs if c in r]
            if not vals:
                cells.append("–")
                continue
            scale = 100 if c in ("align", "align8", "energy", "nmi") else 1
            v = np.array(vals) * scale
            cells.append(f"{v.mean():.1f} ± {v.std():.1f}")
        ref = [refs[r["seed"]] for r in rs if r["seed"] in refs]
        km = np.array([r["kmeans"] for r in ref])
        ex = np.array([r["exact"] for r in ref])
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells)
                     + (f" | {km.mean():.1f} ± {km.std():.1f} | {ex.mean():.1f} ± {ex.std():.1f} |"
                        if len(ref) else " | – | – |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="proxy backbone file (make_proxy_backbone.py)")
    parser.add_argument("--backbone", default=PROXY_BACKBONE)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME[:key=value,...] (TrainConfig overrides; NAME 'fit*' trains "
                             "with fit_images and its overrides)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-val", type=int, default=80)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--nuisance", type=float, default=1.0,
                        help="within-class appearance variation of the texture set")
    parser.add_argument("--val-seed", type=int, default=0,
                        help="one validation set for every seed (-1: the seed's own)")
    parser.add_argument("--k", type=int, default=64, help="K of the references")
    parser.add_argument("--references", action="store_true", help="also compute kmeans/exact")
    parser.add_argument("--ref", default="",
                        help="key=value,... TrainConfig overrides of the references' k-means "
                             "checkpoint (e.g. resolution=224,crop=224)")
    parser.add_argument("--kmeans-on-eigen", action="store_true",
                        help="also score NJW k-means on the learned outputs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segeig-ablation"))
    parser.add_argument("--jsonl", type=Path, required=True)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logger.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    done = []
    if args.jsonl.exists():
        done = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    backbone = BackboneConfig(name=args.backbone, weights=args.weights or "random")
    variants = [parse_variant(v) for v in args.variant]
    ref = parse_variant(":" + args.ref)[1]
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        root = args.workdir / f"texture-{seed}"
        if not (root / "classes.txt").exists():
            make_texture_dataset(root, args.n_train, args.n_val, args.size, args.classes, seed,
                                 nuisance=args.nuisance,
                                 val_seed=None if args.val_seed < 0 else args.val_seed)
        if args.references and not any(r.get("kind") == "reference" and r["seed"] == seed
                                       and r["k"] == args.k and r.get("ref", {}) == ref
                                       for r in done):
            start = time.perf_counter()
            row = {"kind": "reference", "seed": seed, "k": args.k, **({"ref": ref} if ref else {}),
                   **references(seed, root, backbone, args.k, KernelConfig(),
                                args.workdir, ref)}
            row["seconds"] = round(time.perf_counter() - start, 1)
            logger.info("references seed %d: %s", seed, row)
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
        for name, overrides in variants:
            if any(r.get("variant") == name and r["seed"] == seed for r in done):
                continue
            row = run_variant(args, name, overrides, seed, root, backbone, args.workdir)
            logger.info("%s seed %d: eigen %.1f eigen+kmeans %.1f align %.2f energy %.2f "
                        "(%.0f s)", name, seed, row["eigen"], row["eigen+kmeans"], row["align"],
                        row["energy"], row["train_s"])
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
    if args.table:
        print(table(done, args.k, ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
