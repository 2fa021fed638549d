"""Dense CRF section of ``scripts/benchmark.py``: time per backend, agreement, mIoU.

Measured in one process, configurations interleaved repeat by repeat (see
``bench_parts.interleaved_medians``):

* **time per image** of the CRF alone (``segeig.crf.crf_from_scores``: inputs
  at the working size, mean field, labels at full size) for each backend on
  photos with a short side of 320/448/1024 px, plus the pipeline as it was
  before (pydensecrf at full size, 10 iterations) for reference;
* **predict ratio**: ``Segmenter.predict(crf=True)`` / ``predict(crf=False)``
  with each backend, ViT-S/16 (random weights: DINO's cost) and an ``mlp``
  head of K = 256;
* **iterations**: pixel agreement with 10 iterations, and time, for 1–10;
* **agreement with pydensecrf** on the bundled photos (same settings, and
  against the old full-size 10-iteration pipeline);
* **mIoU with CRF** on a synthetic labelled set (head trained briefly on a
  random ViT, as the quality section) with each backend and the old pipeline.

The photos' probabilities come from a *proxy* of a model's patch scores
(:func:`proxy_scores`: k-means of patch colours and positions, soft-assigned),
so they have a ViT's blocky 16 px structure and M = ``labels`` segments; the
mIoU rows use a real (briefly trained) head.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segeig.backbone import Backbone
from segeig.config import BackboneConfig, HeadConfig, KernelConfig
from segeig.crf import CRFParams, crf_from_scores, pydensecrf_available
from segeig.data.synthetic import make_synthetic_dataset
from segeig.model import build_model
from segeig.predictor import Segmenter, load
from segeig.train import default_config, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ITERATIONS = (1, 2, 3, 5, 7, 10)


@dataclass
class CRFSettings:
    """What the CRF section measures (see ``benchmark.py --help``)."""

    sides: tuple[int, ...] = (320, 448, 1024)
    labels: int = 32
    repeats: int = 3
    images: int = 2
    predict_side: int = 448
    train_size: int = 128
    val_side: int = 448
    n_train: int = 48
    n_val: int = 12
    classes: int = 6
    k: int = 24
    steps: int = 150
    batch: int = 8
    k_feat: int = 32
    head_k: int = 256


@dataclass
class CRFBench:
    """Everything the CRF section reports (seconds, fractions in [0, 1], mIoU in [0, 100])."""

    times: dict[tuple[int, str], float] = field(default_factory=dict)  # (side, config)
    labels: int = 0
    predict: dict[str, float] = field(default_factory=dict)  # config → seconds per image
    predict_side: int = 0
    sweep: dict[int, tuple[float, float]] = field(default_factory=dict)  # T → (agree, s)
    agreement: dict[str, list[float]] = field(default_factory=dict)  # name → per photo
    miou: dict[tuple[str, str], float] = field(default_factory=dict)  # (method, config)
    miou_note: str = ""


def photos(short_side: int, folder: Path = EXAMPLES) -> list[np.ndarray]:
    """The bundled photos, resized (bicubic) to ``short_side``."""
    out = []
    for path in sorted(folder.glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        scale = short_side / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        out.append(np.asarray(image.resize(size, Image.BICUBIC)).copy())
    return out


def proxy_scores(image: np.ndarray, labels: int = 32, patch: int = 16, seed: int = 0,
                 temperature: float = 0.01) -> torch.Tensor:
    """Patch-grid scores standing in for a model's: ``labels×h×w`` float32.

    k-means (20 rounds) of each patch's mean colour and (weighted) position,
    then ``-distance² / temperature``: soft, blocky evidence like a ViT's.
    """
    h, w = -(-image.shape[0] // patch), -(-image.shape[1] // patch)
    rgb = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    cells = F.adaptive_avg_pool2d(rgb, (h, w))[0]
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    feats = torch.cat([cells, 0.3 * yy[None], 0.3 * xx[None]]).reshape(5, -1).T
    gen = torch.Generator().manual_seed(seed)
    centres = feats[torch.randperm(len(feats), generator=gen)[:labels]].clone()
    for _ in range(20):
        assign = torch.cdist(feats, centres).argmin(1)
        for j in range(len(centres)):
            if (assign == j).any():
                centres[j] = feats[assign == j].mean(0)
    return (-torch.cdist(feats, centres) ** 2 / temperature).T.reshape(-1, h, w).contiguous()


def _median_times(calls: dict, repeats: int, sync) -> dict:
    for call in calls.values():
        call()  # warm-up
    seen: dict = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            seen[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in seen.items()}


def backend_configs(device: torch.device) -> dict[str, dict]:
    """Name → keyword arguments of ``crf_from_scores``, for what this machine can run."""
    configs = {"torch, cpu": dict(backend="torch", device="cpu")}
    if device.type == "cuda":
        configs[f"torch, {device}"] = dict(backend="torch", device=device)
    if pydensecrf_available():
        configs["densecrf, cpu"] = dict(backend="densecrf")
        configs["densecrf, full size, 10 it. (before)"] = dict(
            backend="densecrf", side=None, params=CRFParams(iterations=10))
    return configs


def crf_times(sides: list[int], labels: int, repeats: int, device: torch.device,
              out: CRFBench, max_images: int = 2) -> None:
    """Seconds per image of the CRF alone per backend and photo size (interleaved)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out.labels = labels
    for side in sides:
        images = photos(side)[:max_images]
        grids = [proxy_scores(im, labels) for im in images]
        calls = {}
        for name, kwargs in backend_configs(device).items():
            if "before" in name and side > 448:
                continue  # minutes per image at full size; the point is made at 448
            calls[name] = (lambda kw=kwargs, ims=images, gs=grids: [
                crf_from_scores(im, g, 16, **kw) for im, g in zip(ims, gs, strict=True)])
        for name, seconds in _median_times(calls, repeats, sync).items():
            out.times[side, name] = seconds / len(images)


def predict_ratio(segmenter: Segmenter, side: int, repeats: int, out: CRFBench,
                  max_images: int = 2) -> None:
    """``predict`` without and with CRF per backend, on photos with this short side."""
    images = photos(side)[:max_images]
    sync = torch.cuda.synchronize if segmenter.device.type == "cuda" else (lambda: None)
    backends = ["auto", "torch"] + (["densecrf"] if pydensecrf_available() else [])

    def run(crf: bool, backend: str = "auto") -> None:
        segmenter.crf_backend = backend
        for image in images:
            segmenter.predict(image, crf=crf)

    calls = {"no CRF": lambda: run(False)}
    calls.update({f"CRF, {b}": (lambda b=b: run(True, b)) for b in backends})
    times = _median_times(calls, repeats, sync)
    segmenter.crf_backend = "auto"
    out.predict = {name: t / len(images) for name, t in times.items()}
    out.predict_side = side


def iteration_sweep(side: int, labels: int, out: CRFBench, max_images: int = 4) -> None:
    """Per iteration count: pixel agreement with 10 iterations, and seconds (torch, CPU)."""
    images = photos(side)[:max_images]
    grids = [proxy_scores(im, labels) for im in images]
    ref = [crf_from_scores(im, g, 16, CRFParams(iterations=10), backend="torch")
           for im, g in zip(images, grids, strict=True)]
    for steps in ITERATIONS:
        agree, start = [], time.perf_counter()
        for im, g, r in zip(images, grids, ref, strict=True):
            got = crf_from_scores(im, g, 16, CRFParams(iterations=steps), backend="torch")
            agree.append(float(np.mean(got == r)))
        out.sweep[steps] = (float(np.mean(agree)), (time.perf_counter() - start) / len(images))


def photo_agreement(side: int, labels: int, out: CRFBench) -> None:
    """Pixel agreement on the bundled photos: torch vs pydensecrf (same settings), the
    default pipeline vs the old one (pydensecrf, full size, 10 iterations), and the
    torch backend's marginals vs pydensecrf's at the CRF's size (mean |ΔQ|)."""
    if not pydensecrf_available():
        return
    old = dict(backend="densecrf", side=None,
               params=CRFParams(iterations=10, reference_side=side))
    for image in photos(side):
        grid = proxy_scores(image, labels)
        torch_labels = crf_from_scores(image, grid, 16, backend="torch")
        dense_labels = crf_from_scores(image, grid, 16, backend="densecrf")
        before = crf_from_scores(image, grid, 16, **old)
        plain = crf_from_scores(image, grid, 16, CRFParams(iterations=0), backend="torch")
        for name, a, b in (("torch vs densecrf, same settings", torch_labels, dense_labels),
                           ("default vs before (densecrf, full size, 10 it.)", torch_labels,
                            before),
                           ("no CRF vs before", plain, before)):
            out.agreement.setdefault(name, []).append(float(np.mean(a == b)))


def labelled_miou(segmenter: Segmenter, root: Path, out: CRFBench, val_side: int) -> None:
    """mIoU with CRF per backend on a labelled set (``custom`` layout, ``native`` protocol).

    ``before`` is the old pipeline: pydensecrf at full size, 10 iterations, the
    bilateral std 67 px of the image (the val images are ``val_side`` square).
    """
    from segeig.evaluation import evaluate, load_eval_dataset, resolve_protocol

    protocol = resolve_protocol("native", "custom")
    val = load_eval_dataset(protocol, root, "val")
    configs = {"torch": dict(crf_backend="torch")}
    if pydensecrf_available():
        configs["densecrf"] = dict(crf_backend="densecrf")
        configs["before"] = dict(crf_backend="densecrf", crf_side=None,
                                 crf_params=CRFParams(iterations=10, reference_side=val_side))
    for method, match in (("eigen+kmeans", "hungarian"), ("eigen", "majority")):
        for name, kwargs in configs.items():
            result = evaluate(segmenter, val, protocol, method=method, match=match, **kwargs)
            out.miou[method, "no CRF"] = result.scores.miou
            out.miou[method, name] = result.scores_crf.miou


def trained_segmenter(s: CRFSettings, backbone: BackboneConfig, workdir: Path,
                      device: torch.device) -> tuple[Segmenter, Path]:
    """A head trained briefly on synthetic data, and a labelled val set of ``val_side`` px."""
    root = make_synthetic_dataset(workdir / "synth", s.n_train, 0, s.train_size, s.classes)
    val = make_synthetic_dataset(workdir / "val", 0, s.n_val, s.val_side, s.classes, seed=1)
    config = default_config(
        "custom", root, backbone=backbone, head_kind="mlp", k=s.k, steps=s.steps,
        batch_size=s.batch, crop=s.train_size, resolution=s.train_size, scale=(1.0, 1.5),
        kmeans_k=s.classes, workers=0, checkpoint_every=0, log_every=max(1, s.steps),
        kernel=KernelConfig(k_feat=s.k_feat), seed=0)
    checkpoint = train(config, workdir / "head", device=str(device), overwrite=True)
    return load(checkpoint, device=device), val


def run_crf(s: CRFSettings, backbone: Backbone, backbone_config: BackboneConfig, workdir: Path,
            device: torch.device, say=print) -> CRFBench:
    """Every measurement of the section (see the module docstring)."""
    out = CRFBench()
    say(f"CRF: time per image at {', '.join(map(str, s.sides))} px ...")
    crf_times(list(s.sides), s.labels, s.repeats, device, out, s.images)
    say(f"CRF: predict with and without CRF at {s.predict_side} px ...")
    torch.manual_seed(0)
    model = build_model(backbone, HeadConfig(kind="mlp", k=s.head_k)).eval()
    predict_ratio(Segmenter(model, device=device), s.predict_side, s.repeats, out, s.images)
    say("CRF: iterations and agreement on the bundled photos ...")
    iteration_sweep(s.predict_side, s.labels, out)
    photo_agreement(s.predict_side, s.labels, out)
    say(f"CRF: training a head ({s.steps} steps) for the labelled set ...")
    segmenter, val = trained_segmenter(s, backbone_config, workdir, device)
    labelled_miou(segmenter, val, out, s.val_side)
    out.miou_note = (f"{s.n_val} synthetic val images of {s.val_side} px, {s.classes} classes; "
                     f"mlp head K={s.k} trained {s.steps} steps on a random ViT")
    return out
