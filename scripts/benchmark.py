"""What the neural eigenfunctions buy: one Markdown table, measured in one run.

Sections (all on the same backbone; timing on the same images):

* inference per image at ``--size`` for ``eigen``, ``eigen+kmeans`` (both
  heads), ``kmeans`` and ``spectral`` (exact per-image eigenvectors), each
  without and with dense CRF, as a ratio to the backbone forward alone;
* the work after the backbone (head or clustering, upsampling, argmax) as a
  percentage of the backbone's time — target for the ``mlp`` head: < 10 %;
* quality of both heads, trained briefly on a synthetic custom set (a proxy:
  synthetic classes, and the offline-pretrained proxy backbone of
  ``scripts/make_proxy_backbone.py`` when its file exists, else random ViT
  weights): Hungarian mIoU at S = classes and majority mIoU at S = K
  (over-clustering), plus the baselines and the exact ``spectral-dataset``
  clustering, and how well each head's argmax agrees with the exact
  clustering of the same kernel (NMI/ARI);
* graph-kernel build time and peak memory vs tokens per batch; exact
  dataset-level spectral clustering time and peak memory vs tokens (with the
  dense ``eigh`` matrix size as the naive reference and clearly labelled
  extrapolations to full training sets);
* one training step split into backbone / kernel / head / loss / backward,
  for both heads (constant in the dataset size);
* the dense CRF (``bench_crf.py``): time per image per backend at 320/448/1024
  px, ``predict`` with/without CRF, iterations vs agreement, agreement with
  pydensecrf on the bundled photos, mIoU with CRF per backend on a labelled set.
* the same step from the feature cache (read / kernel / head / loss /
  backward, steps/s with and without), the time to fill the cache and its
  size per image.

The timing backbone is ViT-S/16 with random weights (``--backbone-weights
random`` is implied: nothing is downloaded), which costs exactly what DINO
costs. The quality rows use the proxy backbone file (``--proxy-backbone``,
default in the user cache; ``none`` for the random ViT) and then default to its
evaluation set (:data:`bench_quality.PROXY_SETTINGS`).

    PYTHONPATH=. python scripts/benchmark.py                      # CPU, < 10 min
    PYTHONPATH=. python scripts/benchmark.py --device cuda --plots docs/img
    python scripts/make_proxy_backbone.py && \
        python scripts/benchmark.py --only quality --quality-heads mlp --quality-defaults
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_crf import CRFSettings, run_crf  # noqa: E402
from bench_parts import (  # noqa: E402
    cached_step_split,
    inference_times,
    synthetic_crops,
    train_step_split,
)
from bench_probe import run_probe  # noqa: E402
from bench_quality import (  # noqa: E402
    HEADS,
    PROXY_SETTINGS,
    QualitySettings,
    merge,
    run_quality,
    summary_line,
)
from bench_report import Table, machine_line, plot_memory, plot_times  # noqa: E402
from make_proxy_backbone import PROXY_BACKBONE, default_proxy_path  # noqa: E402

from segeig.atomic import atomic_write  # noqa: E402
from segeig.backbone import Backbone  # noqa: E402
from segeig.cli.common import parse_arch  # noqa: E402
from segeig.config import DEFAULT_BACKBONE, BackboneConfig, HeadConfig, KernelConfig  # noqa: E402
from segeig.data.synthetic import render_sample  # noqa: E402
from segeig.feature_cache import View  # noqa: E402
from segeig.model import (
    build_model,  # noqa: E402
    resolve_device,  # noqa: E402
)
from segeig.predictor import Segmenter


def _sizes(text: str) -> list[tuple[int, int]]:
    """``"4x14,16x30"`` → ``[(4, 14), (16, 30)]`` (images × grid side)."""
    out = []
    for part in filter(None, text.split(",")):
        batch, _, grid = part.partition("x")
        out.append((int(batch), int(grid)))
    return out


QUALITY_FLAGS = ("n_train", "n_val", "size", "classes", "k", "steps", "epochs", "batch",
                 "k_feat")


def quality_backbone(args: argparse.Namespace, timing: BackboneConfig) -> BackboneConfig:
    """The proxy backbone when ``--proxy-backbone`` names an existing file, else ``timing``."""
    path = args.proxy_backbone
    if path and path.lower() != "none" and Path(path).expanduser().is_file():
        return BackboneConfig(name=PROXY_BACKBONE, weights=str(Path(path).expanduser()))
    return timing


def quality_settings(args: argparse.Namespace, proxy: bool) -> QualitySettings:
    """Flags given on the command line over the defaults of the backbone in use."""
    base = QualitySettings(**PROXY_SETTINGS) if proxy else \
        QualitySettings(custom_defaults=args.quality_defaults)
    given = {name: getattr(args, f"quality_{name}") for name in QUALITY_FLAGS
             if getattr(args, f"quality_{name}") is not None}
    if "steps" in given and "epochs" not in given:
        given["epochs"] = 0  # an explicit step count wins over the default epochs
    return replace(base, **given)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all CPUs)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--backbone-arch", action="append", metavar="KEY=VALUE",
                        help="timm architecture override (tests shrink the ViT)")
    inf = parser.add_argument_group("inference timing")
    inf.add_argument("--size", type=int, default=320, help="image side for the main rows")
    inf.add_argument("--sizes", default="224,320,448",
                     help="image sides for the time-vs-size plot (comma-separated)")
    inf.add_argument("--images", type=int, default=2, help="images timed per size")
    inf.add_argument("--repeats", type=int, default=3, help="repeats (median reported)")
    inf.add_argument("--k", type=int, default=256, help="eigenfunctions of the timed heads")
    inf.add_argument("--segments", type=int, default=32, help="centroids of the timed methods")
    qual = parser.add_argument_group(
        "quality (synthetic proxy); settings left unset take the proxy backbone's defaults "
        f"({', '.join(f'{k}={v}' for k, v in PROXY_SETTINGS.items())}) when it is used, "
        "else the random ViT's")
    qual.add_argument("--no-quality", dest="quality", action="store_false")
    qual.add_argument("--proxy-backbone", default=str(default_proxy_path()), metavar="PATH",
                      help=f"{PROXY_BACKBONE} weights from scripts/make_proxy_backbone.py, used "
                           "for the quality rows when the file exists; 'none': always the "
                           "random ViT (default %(default)s)")
    qual.add_argument("--quality-defaults", action="store_true",
                      help="train with the 'custom' preset as it is (only K and the length "
                           "set here); --quality-batch/--quality-k-feat are then unused")
    qual.add_argument("--quality-seeds", type=int, default=1,
                      help="repeat with this many seeds (data and training); mean ± sd")
    qual.add_argument("--quality-heads", default=",".join(HEADS),
                      help="heads to train (default mlp,transformer; the baselines are "
                           "fitted with the first)")
    parser.add_argument("--only", choices=("quality", "crf"),
                        help="run only this section (supplementary measurements)")
    defaults = QualitySettings()
    for name in QUALITY_FLAGS:
        qual.add_argument(f"--quality-{name.replace('_', '-')}", type=int, default=None,
                          dest=f"quality_{name}",
                          help=f"random ViT default {getattr(defaults, name)}"
                               + (f", proxy {PROXY_SETTINGS[name]}" if name in PROXY_SETTINGS
                                  else ""))
    mem = parser.add_argument_group("kernel and exact spectral clustering (batch x grid side)")
    mem.add_argument("--kernel-sizes", default="4x14,16x14,16x20,16x30",
                     help="batches timed for the kernel build (default up to 16 crops of "
                          "480 px = 14400 tokens)")
    mem.add_argument("--exact-sizes", default="4x14,16x14,16x20,16x30",
                     help="sets decomposed exactly")
    mem.add_argument("--k-feat", type=int, default=256, help="feature neighbours (paper: 256)")
    mem.add_argument("--exact-clusters", type=int, default=32)
    crf = parser.add_argument_group("dense CRF")
    crf.add_argument("--no-crf", dest="crf", action="store_false")
    crf_defaults = CRFSettings()
    crf.add_argument("--crf-sides", default=",".join(map(str, crf_defaults.sides)),
                     help="photo short sides timed (comma-separated)")
    for name in ("labels", "predict_side", "train_size", "val_side", "n_train", "n_val",
                 "classes", "k", "steps", "batch", "k_feat", "head_k"):
        crf.add_argument(f"--crf-{name.replace('_', '-')}", type=int,
                         default=getattr(crf_defaults, name), dest=f"crf_{name}",
                         help=f"default {getattr(crf_defaults, name)}")
    step = parser.add_argument_group("training step")
    step.add_argument("--train-batch", type=int, default=8)
    step.add_argument("--train-crop", type=int, default=224)
    step.add_argument("--train-k", type=int, default=256)
    step.add_argument("--cache-scales", default="1,0.75,1.5",
                      help="views cached per image for the feature-cache rows (scales; the "
                           "default is what training caches for the paper's 0.5-2.0 range)")
    parser.add_argument("--plots", metavar="DIR", help="write time_vs_size.png and "
                                                        "memory_vs_tokens.png here")
    parser.add_argument("--out", metavar="FILE", help="also write the table (Markdown) here")
    return parser.parse_args(argv)


def describe_backbone(config: BackboneConfig, proxy: bool) -> str:
    """One line naming the quality rows' backbone and where its weights come from."""
    if proxy:
        return (f"{config.name} pretrained offline by scripts/make_proxy_backbone.py on "
                f"synthetic classes disjoint from the evaluated ones ({config.weights})")
    return (f"{config.name} with random weights (no proxy backbone; a random ViT cannot rank "
            "methods)")


def timing_models(backbone: Backbone, k: int, segments: int, device: torch.device
                  ) -> dict[str, tuple[Segmenter, str]]:
    """Random heads of both kinds and random centroids for every method (cost only)."""
    gen = torch.Generator().manual_seed(1)
    variants = {}
    for kind in HEADS:
        model = build_model(backbone, HeadConfig(kind=kind, k=k)).eval()
        model.set_centroids("eigen+kmeans", torch.randn(segments, model.head.hidden_dim,
                                                        generator=gen))
        if kind == "mlp":
            model.set_centroids("kmeans", torch.randn(segments, backbone.embed_dim,
                                                      generator=gen))
            model.set_centroids("spectral", torch.randn(segments, backbone.embed_dim,
                                                        generator=gen))
        segmenter = Segmenter(model, device=device)
        variants[f"eigen · {kind}"] = (segmenter, "eigen")
        variants[f"eigen+kmeans · {kind}"] = (segmenter, "eigen+kmeans")
        if kind == "mlp":
            baselines = {"kmeans": (segmenter, "kmeans"),
                         "spectral (exact, per image)": (segmenter, "spectral")}
    return {**variants, **baselines}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("segeig.backbone").setLevel(logging.ERROR)  # the random-weights warning
    logging.getLogger("segeig.checkpoint").setLevel(logging.ERROR)
    device = resolve_device(args.device)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else os.cpu_count() or 1)
    torch.set_num_threads(threads)
    started, load_start = time.perf_counter(), os.getloadavg()
    backbone_config = BackboneConfig(name=args.backbone, weights="random",
                                     arch_overrides=parse_arch(args.backbone_arch) or {})
    torch.manual_seed(0)  # the same random ViT as the quality runs (trainer seed 0)
    backbone = Backbone(backbone_config).to(device).eval()
    variants = timing_models(backbone, args.k, args.segments, device)
    table = Table()
    everything = args.only is None

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {text}", file=sys.stderr, flush=True)

    by_size: dict[int, dict[str, float]] = {}
    if everything:
        for size in sorted({int(s) for s in args.sizes.split(",") if s} | {args.size}):
            say(f"inference timing at {size} px ...")
            rng = np.random.default_rng(size)
            images = [render_sample(rng, (size, size), 6)[0] for _ in range(args.images)]
            by_size[size] = inference_times(backbone, variants, images, args.repeats,
                                            full=size == args.size, device=device)
        table.inference(by_size[args.size], args.size, list(variants))

    quality_text = ""
    if args.quality and args.only in (None, "quality"):
        qbackbone = quality_backbone(args, backbone_config)
        proxy = qbackbone is not backbone_config
        settings = quality_settings(args, proxy)
        heads = tuple(h for h in args.quality_heads.split(",") if h)
        say(f"quality backbone: {describe_backbone(qbackbone, proxy)}")
        results = []
        for seed in range(args.quality_seeds):
            length = (f"{settings.epochs} epochs" if settings.epochs > 0
                      else f"{settings.steps} steps")
            say(f"quality (seed {seed}): training {', '.join(heads)} for {length} each ...")
            with tempfile.TemporaryDirectory(prefix="segeig-bench-") as tmp:
                results.append(run_quality(replace(settings, seed=seed), qbackbone,
                                           Path(tmp), device, heads))
        merged = merge(results)
        table.quality(merged, settings, "proxy ViT-Tiny" if proxy else "random ViT")
        quality_text = (f"\n\nQuality backbone: {describe_backbone(qbackbone, proxy)}.\n\n"
                        f"{summary_line(merged, settings)}")

    if args.crf and args.only in (None, "crf"):
        settings = CRFSettings(
            sides=tuple(int(x) for x in args.crf_sides.split(",") if x), repeats=args.repeats,
            images=args.images, **{name: getattr(args, f"crf_{name}") for name in (
                "labels", "predict_side", "train_size", "val_side", "n_train", "n_val",
                "classes", "k", "steps", "batch", "k_feat", "head_k")})
        with tempfile.TemporaryDirectory(prefix="segeig-bench-crf-") as tmp:
            table.crf(run_crf(settings, backbone, backbone_config, Path(tmp), device, say),
                      settings)

    probes: dict[str, list[dict]] = {"kernel": [], "exact": []}
    steps: dict[str, dict[str, float]] = {}
    tokens_per_step = args.train_batch * (-(-args.train_crop // backbone.patch_size)) ** 2
    if everything:
        for kind, spec in (("kernel", args.kernel_sizes), ("exact", args.exact_sizes)):
            for batch, grid in _sizes(spec):
                say(f"{kind}: {batch} x {grid}x{grid} tokens in a fresh process ...")
                probes[kind].append(run_probe(kind, batch, grid, backbone.embed_dim,
                                              args.k_feat, args.exact_clusters, str(device),
                                              threads))
        say("training step split ...")
        crops = synthetic_crops(args.train_batch, args.train_crop)
        steps = {kind: train_step_split(backbone, kind, args.train_k, crops,
                                        KernelConfig(k_feat=args.k_feat), args.repeats, device)
                 for kind in HEADS}
        table.memory(probes, args.k_feat, steps, tokens_per_step)
        table.training(steps, args.train_batch, args.train_crop, args.train_k)
        say("training step from the feature cache ...")
        views = [View(float(v)) for v in args.cache_scales.split(",") if v]
        with tempfile.TemporaryDirectory(prefix="segeig-cache-") as tmp:
            cached = cached_step_split(backbone, HEADS, args.train_k, crops,
                                       KernelConfig(k_feat=args.k_feat), args.repeats, device,
                                       tmp, views)
        table.feature_cache(steps, cached, args.train_batch, args.train_crop, args.train_k)

    elapsed = time.perf_counter() - started
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = machine_line(device, threads, backbone_config, load_start, os.getloadavg(), elapsed)
    text = f"{header}\n\nCommand: `{command.strip()}`\n\n{table.markdown()}{quality_text}"
    print(text)
    if args.out:
        atomic_write(args.out, lambda f: f.write((text + "\n").encode("utf-8")))
    if args.plots and everything:
        folder = Path(args.plots)
        for path in (plot_times(by_size, list(variants), folder / "time_vs_size.png"),
                     plot_memory(probes, steps, tokens_per_step, args.k_feat,
                                 folder / "memory_vs_tokens.png")):
            say(f"wrote {path}")
    say(f"done in {elapsed:.0f} s on {platform.node()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
