"""Pretrain the benchmark's proxy backbone: a ViT-Tiny/16 that has learned to tell
synthetic colour-and-texture classes apart, none of which the benchmark evaluates.

Why: the quality rows of ``scripts/benchmark.py`` need a backbone whose patch
features carry class information, or every method scores within noise of the
others (a random ViT), and nothing may be downloaded. This script trains
``deit_tiny_patch16_224`` (timm, random init) for a few CPU minutes with dense
supervision: a linear classifier on every final (normed) patch token, soft
cross-entropy against the class fractions of that 16×16 patch, on synthetic
images rendered on the fly (:func:`segeig.data.synthetic.render_sample`) with
the appearance ids from :data:`~segeig.data.synthetic.PRETRAIN_CLASS_OFFSET`
(64) on. The benchmark evaluates ids 0..7, so its classes are never seen.
Each image is zoomed by a random factor in ``--zoom`` (default 0.5–2, log-uniform)
so the features work across scales. Inputs are normalised with the mean/std of
the timm config the file is loaded under (ImageNet for ``deit_*``), as
:class:`segeig.backbone.Backbone` will feed it.

What it is not: DINO, self-supervised, or trained on photos. It ranks methods
on synthetic data; it says nothing about absolute scores on real benchmarks.

The output is the backbone's ``state_dict`` (no classifier) as safetensors,
outside the repository and never committed; load it with
``--backbone deit_tiny_patch16_224 --backbone-weights FILE``. Deterministic for
a given seed and thread count.

    python scripts/make_proxy_backbone.py   # → ~/.cache/segeig/proxy/deit_tiny_proxy.safetensors
    python scripts/make_proxy_backbone.py --force --steps 50 --out /tmp/proxy.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save

from segeig.atomic import atomic_write
from segeig.data.synthetic import PRETRAIN_CLASS_OFFSET, render_sample
from segeig.data.textures import PRETRAIN_TEXTURE_OFFSET, render_texture_sample

logger = logging.getLogger("make_proxy_backbone")

#: The architecture the proxy is trained as and must be loaded under.
PROXY_BACKBONE = "deit_tiny_patch16_224"


#: Pretraining image families: the texture-statistics classes of
#: :mod:`segeig.data.textures` (the benchmark's proxy) or the older
#: colour-and-texture classes of :mod:`segeig.data.synthetic`.
FAMILIES = {"texture": (render_texture_sample, PRETRAIN_TEXTURE_OFFSET),
            "colour": (render_sample, PRETRAIN_CLASS_OFFSET)}


def default_proxy_path(family: str = "texture") -> Path:
    """``$XDG_CACHE_HOME/segeig/proxy/deit_tiny_<family>_proxy.safetensors`` (``~/.cache``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "segeig" / "proxy" / f"deit_tiny_{family}_proxy.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="texture",
                        help="pretraining images: texture-statistics classes (the benchmark's "
                             "proxy, default) or the older colour-and-texture classes")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output file (default {default_proxy_path()} for texture)")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out exists")
    parser.add_argument("--steps", type=int, default=900, help="optimisation steps")
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--size", type=int, default=192,
                        help="network input side in pixels (a multiple of 16)")
    parser.add_argument("--zoom", type=float, nargs=2, default=(0.5, 2.0),
                        help="range of the random zoom applied to the rendered image")
    parser.add_argument("--classes", type=int, default=64,
                        help="pretraining classes (appearance ids from the family's pretraining "
                             f"offset: {PRETRAIN_TEXTURE_OFFSET} texture, "
                             f"{PRETRAIN_CLASS_OFFSET} colour)")
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    parser.add_argument("--no-gabor-init", dest="gabor_init", action="store_false",
                        help="start the patch embedding at random instead of as a Gabor bank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all CPUs)")
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    if args.size % 16 or args.size < 16:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    if not 0 < args.zoom[0] <= args.zoom[1]:
        parser.error(f"--zoom must be 0 < min <= max, got {args.zoom}")
    return args


def gabor_patch_embedding(conv: torch.nn.Conv2d) -> None:
    """Start the patch embedding as a luminance Gabor filter bank.

    Why: a ViT trained from scratch for a few CPU minutes learns colour at once
    but texture (orientation, frequency, regularity) very slowly; oriented
    band-pass filters of every phase give the first block quadrature pairs to
    build phase-invariant texture energy from. Filters are spread over
    orientations × periods × phases (cycled to fill the embedding width), the
    same weight on R, G and B, unit L2 norm per filter. Training then changes
    them freely.
    """
    out_channels, _, size, _ = conv.weight.shape
    yy, xx = torch.meshgrid(torch.arange(size) - (size - 1) / 2,
                            torch.arange(size) - (size - 1) / 2, indexing="ij")
    banks = [(o, p, f) for p in (3.0, 4.5, 6.5, 9.0, 13.0, 19.0)
             for o in range(8) for f in range(4)]
    weights = []
    for index in range(out_channels):
        orientation, period, phase = banks[index % len(banks)]
        theta = math.pi * orientation / 8
        u = xx * math.cos(theta) + yy * math.sin(theta)
        sigma = min(0.55 * period, size / 3)
        envelope = torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
        kernel = envelope * torch.cos(2 * math.pi * u / period + phase * math.pi / 2)
        kernel = kernel - kernel.mean()
        weights.append(kernel / kernel.norm().clamp_min(1e-6))
    with torch.no_grad():
        conv.weight.copy_(torch.stack(weights)[:, None].expand_as(conv.weight) / math.sqrt(3))
        if conv.bias is not None:
            conv.bias.zero_()


def make_batch(rng: np.random.Generator, batch: int, size: int, classes: int,
               zoom: tuple[float, float], patch: int = 16,
               family: str = "texture") -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``batch`` zoomed synthetic images and their per-patch class fractions.

    Returns:
        ``(images B×3×size×size float in [0, 1], targets B×g×g×C float)``, with
        ``g = size // patch`` and each target row the fraction of the patch's
        pixels in each class (ignore-free, so rows sum to 1).
    """
    grid = size // patch
    images, labels = [], []
    for _ in range(batch):
        factor = math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1])))
        side = max(16, round(size / factor))
        render, offset = FAMILIES[family]
        image, label = render(rng, (side, side), classes, class_offset=offset)
        shrink = side > size
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink
                                 else cv2.INTER_LINEAR))
        labels.append(cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(np.stack(labels)).long()  # B×size×size
    # Class histogram of every patch by one bincount over (image, row, column, class).
    b_idx = torch.arange(batch).view(-1, 1, 1)
    rows = (torch.arange(size) // patch).view(1, -1, 1)
    cols = (torch.arange(size) // patch).view(1, 1, -1)
    flat = ((b_idx * grid + rows) * grid + cols) * classes + y
    counts = torch.bincount(flat.flatten(), minlength=batch * grid * grid * classes)
    return x, counts.view(batch, grid, grid, classes).float() / (patch * patch)


def patch_logits(vit: torch.nn.Module, classifier: torch.nn.Linear, x: torch.Tensor,
                 mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``B×g×g×C`` logits of the linear classifier on the final normed patch tokens."""
    tokens = vit.forward_features((x - mean) / std)[:, vit.num_prefix_tokens:]
    grid = x.shape[-1] // 16
    return classifier(tokens).view(x.shape[0], grid, grid, -1)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of patches whose predicted class is the patch's majority class."""
    return float((logits.argmax(-1) == targets.argmax(-1)).float().mean())


def train_proxy(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train the proxy; return the backbone's state dict and the final accuracies."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vit = timm.create_model(PROXY_BACKBONE, pretrained=False, num_classes=0,
                            dynamic_img_size=True)
    if args.gabor_init:
        gabor_patch_embedding(vit.patch_embed.proj)
    classifier = torch.nn.Linear(vit.embed_dim, args.classes)
    cfg = vit.pretrained_cfg  # the normalisation segeig.backbone.Backbone applies
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    params = list(vit.parameters()) + list(classifier.parameters())
    # No weight decay on norms, biases, position embedding and class token.
    decay = [p for p in params if p.ndim >= 2 and p.shape[0] != 1]
    other = [p for p in params if not (p.ndim >= 2 and p.shape[0] != 1)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=args.lr)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 1e-6 + 0.5 * (args.lr - 1e-6) * (1 + math.cos(math.pi * progress))

    vit.train()
    started, recent = time.perf_counter(), []
    for step in range(args.steps):
        x, targets = make_batch(rng, args.batch, args.size, args.classes, tuple(args.zoom),
                                family=args.family)
        logits = patch_logits(vit, classifier, x, mean, std)
        loss = F.cross_entropy(logits.flatten(0, 2), targets.flatten(0, 2))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        recent = (recent + [accuracy(logits.detach(), targets)])[-max(1, args.steps // 10):]
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            logger.info("step %d/%d  loss %.3f  patch accuracy %.3f  (%.0f s)", step + 1,
                        args.steps, loss.item(), recent[-1], time.perf_counter() - started)
    vit.eval()
    # Held out: fresh images of the same (pretraining) classes at zoom 1.
    held_rng = np.random.default_rng([args.seed, 1])
    with torch.no_grad():
        held = []
        for _ in range(4):
            x, targets = make_batch(held_rng, args.batch, args.size, args.classes, (1.0, 1.0),
                                    family=args.family)
            held.append(accuracy(patch_logits(vit, classifier, x, mean, std), targets))
    stats = {"train_patch_accuracy": float(np.mean(recent)),
             "heldout_patch_accuracy": float(np.mean(held)),
             "seconds": time.perf_counter() - started}
    return {k: v.detach().contiguous() for k, v in vit.state_dict().items()}, stats


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = args.out or default_proxy_path(args.family)
    if out.exists() and not args.force:
        print(f"{out} exists (use --force to rebuild)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    state, stats = train_proxy(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "force", "log_every")}
    metadata = {"format": "pt", "segeig_proxy": json.dumps(
        {"backbone": PROXY_BACKBONE, "family": args.family,
         "class_offset": FAMILIES[args.family][1],
         "settings": settings, "torch_threads": torch.get_num_threads(), **stats})}
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = save(state, metadata=metadata)
    atomic_write(out, lambda f: f.write(payload))
    print(f"wrote {out}: {PROXY_BACKBONE}, {args.steps} steps in {stats['seconds']:.0f} s; "
          f"patch accuracy (pretraining classes) train {100 * stats['train_patch_accuracy']:.1f} %"
          f" (mean of the last {max(1, args.steps // 10)} steps), held out "
          f"{100 * stats['heldout_patch_accuracy']:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
