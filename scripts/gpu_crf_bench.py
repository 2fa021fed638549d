"""GPU check of the dense CRF: torch backend on CUDA vs pydensecrf on CPU, one table.

For photos with a short side of 448 and 1024 px (the bundled examples, resized)
and M = 32 segments (``bench_crf.proxy_scores``), it reports milliseconds per
image of ``crf_from_scores`` — at the default working size and at full size —
for the torch backend on CUDA, on CPU, and pydensecrf on CPU; the pixel
agreement of CUDA with pydensecrf at the same settings; and
``Segmenter.predict`` with and without CRF on CUDA (ViT-S/16, random weights:
DINO's cost; ``mlp`` head, K = 256). Prepared for a lent GPU machine:

    python scripts/gpu_crf_bench.py --out "$OUT/gpu_crf.md"      # about 2-4 minutes

Exits 2 without CUDA (``--device cpu`` runs the same steps on the CPU: a dry run
for tests). Timing: CUDA synchronised around each call, one warm-up, median of
``--repeats``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_crf import _median_times, photos, proxy_scores  # noqa: E402

from segeig.backbone import Backbone  # noqa: E402
from segeig.config import BackboneConfig, HeadConfig  # noqa: E402
from segeig.crf import CRFParams, crf_from_scores, pydensecrf_available  # noqa: E402
from segeig.model import build_model  # noqa: E402
from segeig.predictor import Segmenter  # noqa: E402


def _agreement(a: list[np.ndarray], b: list[np.ndarray] | None) -> str:
    if b is None:
        return "–"
    return f"{100 * np.mean([np.mean(x == y) for x, y in zip(a, b, strict=True)]):.2f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", default="448,1024")
    parser.add_argument("--labels", type=int, default=32)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the table (Markdown) here")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu: dry run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("segeig.backbone").setLevel(logging.ERROR)
    cuda = torch.device(args.device)
    if cuda.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(cuda) if cuda.type == "cuda" else "none (dry run)"
    sync = torch.cuda.synchronize if cuda.type == "cuda" else (lambda: None)
    lines = [f"GPU {gpu}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} CPU threads; M = {args.labels} segments; default CRF: "
             f"{CRFParams().iterations} iterations at ≤ {CRFParams().reference_side} px",
             "", "| photos | configuration | ms / image | speed vs pydensecrf (same settings) "
             "| agreement with pydensecrf |", "|---|---|---:|---:|---:|"]
    configs = {"torch, cpu": dict(backend="torch", device="cpu"),
               f"torch, {cuda.type}": dict(backend="torch", device=cuda)}
    if pydensecrf_available():
        configs["densecrf, cpu"] = dict(backend="densecrf")
    for side in [int(s) for s in args.sides.split(",") if s]:
        images = photos(side)[: args.images]
        grids = [proxy_scores(im, args.labels) for im in images]
        for where, extra in (("working size", {}), ("full size", {"side": None})):
            calls, labels = {}, {}
            for name, kwargs in configs.items():
                if name == "torch, cpu" and extra and cuda.type == "cuda":
                    continue  # the CPU point is the default pipeline
                kw = {**kwargs, **extra}
                labels[name] = [crf_from_scores(im, g, 16, **kw)
                                for im, g in zip(images, grids, strict=True)]
                calls[name] = (lambda kw=kw, ims=images, gs=grids: [
                    crf_from_scores(im, g, 16, **kw) for im, g in zip(ims, gs, strict=True)])
            repeats = 1 if extra and side > 448 else args.repeats  # pydensecrf: minutes
            times = _median_times(calls, repeats, sync)
            ref_time = times.get("densecrf, cpu")
            for name, seconds in times.items():
                ms = 1000 * seconds / len(images)
                speed = f"{ref_time / seconds:.2f}×" if ref_time else "–"
                agree = _agreement(labels[name], labels.get("densecrf, cpu"))
                lines.append(f"| {side} px, {where} | {name} | {ms:.1f} | {speed} | {agree} |")
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(weights="random")).eval()
    segmenter = Segmenter(build_model(backbone, HeadConfig(kind="mlp", k=256)).eval(),
                          device=cuda, crf_backend="torch")
    lines += ["", f"| photos | predict() on {cuda} | ms / image | relative |",
              "|---|---|---:|---:|"]
    for side in [int(s) for s in args.sides.split(",") if s]:
        images = photos(side)[: args.images]
        times = _median_times({"no CRF": lambda im=images: [segmenter.predict(i) for i in im],
                               f"CRF (torch, {cuda.type})": lambda im=images: [
                                   segmenter.predict(i, crf=True) for i in im]},
                              args.repeats, sync)
        for name, seconds in times.items():
            rel = seconds / times["no CRF"]
            lines.append(f"| {side} px | {name} | {1000 * seconds / len(images):.1f} | "
                         f"{rel:.2f}× |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(f"done at {time.strftime('%H:%M:%S')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
