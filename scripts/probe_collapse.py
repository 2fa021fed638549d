"""Why does ``eigen`` not get finer with K? Probes of the training objective.

Runs :mod:`bench_ablation` (same arguments, same JSONL rows) with one part of
training swapped for a diagnostic alternative. None of these is a segeig
option; they exist to test explanations of the gap between the learned
eigenfunctions and exact spectral clustering at many segments
(docs/method.md, "Where the gap sits"):

* ``--gumbel hard``: straight-through Gumbel-softmax (one-hot forward, soft
  backward) instead of the soft relaxation; ``--gumbel none``: the raw
  outputs are the eigenfunctions (the original NeuralEF; with
  ``--normalize all`` and bench_ablation's ``--kmeans-on-eigen`` they are
  rounded by k-means, as exact spectral clustering rounds its eigenvectors);
* ``--normalize all``: every output column scaled to unit norm over the batch,
  not only those whose norm exceeds 1;
* ``--warm-kmeans STEPS``: before NeuralEF training the head is fitted by
  cross-entropy (STEPS Adam steps, 16 images each) to the assignments of
  k-means with K centroids on the training images' final backbone features,
  so training starts from the k-means partition (``steps=1,lr=1e-9,lr_min=0`` in the
  variant scores that start itself); with ``--refine-kernel-kmeans ITERS``
  that partition is first refined by kernel k-means on the kernel over all
  training patches (the same trace, optimised on the hard partition);
* ``--reseed-every STEPS``: every STEPS steps (until ``--reseed-until`` of
  training), an output that no patch chose in those steps has its bias
  raised until it wins 1/K of the batch (k-means' fix for empty clusters).

``--ratio-association CHECKPOINT --root SET`` instead prints the partition
objective Σ_k 1ᵀκ1/|C_k| (the NeuralEF trace of hard, unit-normalised
indicator columns) of three partitions of the set's val patches: the head's
argmax, exact spectral (NJW on the top-K eigenvectors) and k-means with K
centroids; on the kernel over all val patches and averaged over kernels of 8
images (a training batch).

    python scripts/probe_collapse.py --warm-kmeans 300 --weights PROXY --n-val 40 \\
        --seeds 0 --variant warm:k=64,crop=224,resolution=224,scale=0.75/1.5,lr=3e-3,\\
    batch_size=4,steps=960 --jsonl /tmp/probe.jsonl
    python scripts/probe_collapse.py --ratio-association RUN/checkpoint.safetensors \\
        --root /tmp/segeig-ablation/texture-0
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ablation  # noqa: E402

import segeig.objective as objective_module  # noqa: E402
import segeig.train.step as step_module  # noqa: E402
import segeig.train.trainer as trainer_module  # noqa: E402
from segeig import load  # noqa: E402
from segeig.cluster import fit_kmeans  # noqa: E402
from segeig.data import build_dataset  # noqa: E402
from segeig.evaluation import load_eval_dataset, resolve_protocol  # noqa: E402
from segeig.evaluation.spectral_dataset import kernel_config_of  # noqa: E402
from segeig.head import gumbel_probs  # noqa: E402
from segeig.kernel import pad_to_grid  # noqa: E402
from segeig.spectral import embedding_scores, set_kernel, top_eigenvectors  # noqa: E402
from segeig.transforms import resize_image, to_tensor  # noqa: E402


def straight_through(logits, tau, dim=-1, noise=None):
    """One-hot of the Gumbel-softmax sample forward, its soft gradient backward."""
    soft = gumbel_probs(logits, tau, dim=dim, noise=noise)
    hard = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return hard - soft.detach() + soft


def identity_outputs(logits, tau, dim=-1, noise=None):
    """The head's raw outputs as the eigenfunctions (no softmax, no noise)."""
    return logits.float()


def normalize_all(psi: torch.Tensor, t: float) -> torch.Tensor:
    """Every non-empty column to unit norm, then by √t."""
    return psi / psi.norm(dim=0, keepdim=True).clamp_min(1e-3) * math.sqrt(t)


def kernel_kmeans(kernel: torch.Tensor, labels: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Refine a partition to raise Σ_c 1_cᵀκ1_c/|c| (weighted kernel k-means, unit weights).

    Each iteration moves every patch to the segment c maximising
    2·(κ1_c)_i/|c| − 1_cᵀκ1_c/|c|², the kernel k-means assignment for the
    same trace the NeuralEF objective takes of hard unit-normalised indicators.

    Args:
        kernel: sparse ``N×N`` kernel; labels: ``N`` ints in ``[0, k)``.
    """
    for _ in range(iters):
        onehot = F.one_hot(labels, k).float()
        spread = torch.sparse.mm(kernel, onehot)  # N×K: κ1_c
        sizes = onehot.sum(0)
        within = (onehot * spread).sum(0)
        score = 2 * spread / sizes.clamp_min(1) - within / sizes.clamp_min(1) ** 2
        score[:, sizes == 0] = -float("inf")
        new = score.argmax(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def ratio(kernel: torch.Tensor, labels: torch.Tensor) -> float:
    """Σ_c 1_cᵀκ1_c/|c| of a partition (``labels``: N ints) on a sparse kernel."""
    onehot = F.one_hot(labels).float()
    within = (onehot * torch.sparse.mm(kernel, onehot)).sum(0)
    sizes = onehot.sum(0)
    return float((within[sizes > 0] / sizes[sizes > 0]).sum())


def warm_start(steps: int, original, refine_iters: int = 0):
    """``Trainer.__init__`` that, for a fresh head, then fits it to the k-means partition
    (refined by ``refine_iters`` kernel k-means iterations on the training kernel)."""

    def init(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        head = self.model.head
        if head is None or self.state is not None:
            return
        stacked, kernel, grids = [], [], []
        train_set = build_dataset(config.dataset, config.root, config.split, with_labels=False)
        with torch.no_grad():
            for i in range(len(train_set)):
                image = train_set.load(i).image
                size = config.working_resolution.size_for(*image.shape[:2])
                x = to_tensor(resize_image(image, size))[None]
                out = self.model.backbone(x.to(self.device))
                stacked.append(out.stacked.float())
                kernel.append(out.kernel.float())
                grids.append(pad_to_grid(x, out.kernel.shape[-2:], self.model.backbone.patch_size,
                                         tuple(self.model.backbone.mean))[0])
        feats = torch.cat(stacked)
        flat = F.normalize(torch.cat(kernel).permute(0, 2, 3, 1).flatten(0, 2), dim=1)
        centroids = fit_kmeans(flat, head.k, iters=30, seed=config.seed)
        labels = torch.cdist(flat, centroids).argmin(1)
        if refine_iters:
            graph = set_kernel([f[0] for f in kernel], grids, config.kernel)
            before = ratio(graph, labels)
            labels = kernel_kmeans(graph, labels, head.k, refine_iters)
            print(f"kernel k-means: objective {before:.2f} -> {ratio(graph, labels):.2f}, "
                  f"{len(labels.unique())} segments", flush=True)
        labels = labels.view(feats.shape[0], *feats.shape[2:])
        optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(config.seed)
        for _ in range(steps):
            pick = torch.randint(0, feats.shape[0], (16,), generator=generator)
            loss = F.cross_entropy(head(feats[pick])[0], labels[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            agreement = (head(feats)[0].argmax(1) == labels).float().mean().item()
        print(f"warm start: {steps} steps, agreement with k-means {agreement:.3f}", flush=True)

    return init


def revive_dead(head, logits: torch.Tensor, dead: list[int]) -> None:
    """Raise each dead output's bias until it wins 1/K of this batch's patches.

    Only biases change: a dead output takes the patches where it is closest to
    winning (its margin to the current winner is largest), and training goes
    on from there. (Rewriting its projection row instead, along the principal
    direction of the largest segment, made the revived outputs win across
    segments and collapsed the head to 11 outputs; see docs/method.md.)

    Args:
        logits: ``B×K×h×w`` head logits of the batch.
    """
    k = logits.shape[1]
    scores = logits.permute(0, 2, 3, 1).reshape(-1, k).float().clone()
    bias = head.proj.bias.detach().clone()
    for d in dead:
        rivals = scores.clone()
        rivals[:, d] = -float("inf")
        margin = scores[:, d] - rivals.max(1).values
        shift = 1e-4 - torch.quantile(margin, 1 - 1 / k)
        bias[d] += shift
        scores[:, d] += shift
    with torch.no_grad():
        head.proj.bias.copy_(bias)


def reseed_dead(every: int, until: float, original):
    """``TrainStep.__call__`` that re-seeds outputs no patch chose in the last ``every`` steps."""

    def call(self, batch, step):
        captured = {}
        handle = self.head.register_forward_hook(lambda m, i, o: captured.update(out=o))
        try:
            result = original(self, batch, step)
        finally:
            handle.remove()
        logits = captured["out"][0].detach()
        k = logits.shape[1]
        usage = getattr(self, "_usage", None)
        if usage is None:
            usage = self._usage = torch.zeros(k)
        usage += torch.bincount(logits.argmax(1).flatten(), minlength=k).float().cpu()
        if (step + 1) % every == 0:
            dead = (usage == 0).nonzero().flatten().tolist()
            if dead and step < until * self.total:
                revive_dead(self.head, logits, dead)
                print(f"step {step + 1}: re-seeded {len(dead)} dead output(s)", flush=True)
            self._usage = torch.zeros(k)
        return result

    return call


def ratio_association(checkpoint: Path, root: Path) -> None:
    """Print the partition objective of learned / exact / k-means partitions."""
    segmenter = load(checkpoint, device="cpu")
    protocol = resolve_protocol("native", "custom")
    val = load_eval_dataset(protocol, root, "val")
    images = [val.load(i).image for i in range(len(val))]
    features, smalls, logits = bench_ablation.val_patches(segmenter, images)
    config = kernel_config_of(segmenter)
    k = segmenter.model.head.k
    full = set_kernel(features, smalls, config)
    _, vectors = top_eigenvectors(full, k)
    flat = F.normalize(torch.cat([f.flatten(1).T for f in features]), dim=1)
    partitions = {
        "learned": torch.cat(logits).argmax(1),
        "exact": embedding_scores(vectors, k).argmax(1),
        "kmeans": torch.cdist(flat, fit_kmeans(flat, k, iters=30, seed=0)).argmin(1),
    }
    sizes = np.cumsum([0] + [f.shape[-2] * f.shape[-1] for f in features])
    batches = [(s, min(s + 8, len(features))) for s in range(0, len(features), 8)]
    batch_kernels = [set_kernel(features[a:b], smalls[a:b], config) for a, b in batches]
    for name, part in partitions.items():
        part = part.long()
        per_batch = [ratio(m, part[sizes[a]:sizes[b]])
                     for (a, b), m in zip(batches, batch_kernels, strict=True)]
        print(f"{name:8s} segments {len(part.unique()):3d}  all val patches "
              f"{ratio(full, part):6.2f}  8-image batches {np.mean(per_batch):6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--gumbel", choices=("soft", "hard", "none"), default="soft")
    parser.add_argument("--normalize", choices=("above-one", "all"), default="above-one")
    parser.add_argument("--warm-kmeans", type=int, default=0, metavar="STEPS")
    parser.add_argument("--refine-kernel-kmeans", type=int, default=0, metavar="ITERS")
    parser.add_argument("--reseed-every", type=int, default=0, metavar="STEPS")
    parser.add_argument("--reseed-until", type=float, default=0.8, metavar="FRACTION")
    parser.add_argument("--ratio-association", type=Path, metavar="CHECKPOINT")
    parser.add_argument("--root", type=Path)
    args, rest = parser.parse_known_args(argv)
    torch.set_num_threads(1)
    if args.ratio_association:
        if args.root is None:
            parser.error("--ratio-association needs --root (the texture set)")
        ratio_association(args.ratio_association, args.root)
        return 0
    originals = (step_module.gumbel_probs, objective_module.normalize_columns,
                 trainer_module.Trainer.__init__, step_module.TrainStep.__call__)
    if args.gumbel == "hard":
        step_module.gumbel_probs = straight_through
    elif args.gumbel == "none":
        step_module.gumbel_probs = identity_outputs
    if args.normalize == "all":
        objective_module.normalize_columns = normalize_all
    if args.warm_kmeans:
        trainer_module.Trainer.__init__ = warm_start(args.warm_kmeans, originals[2],
                                                     args.refine_kernel_kmeans)
    if args.reseed_every:
        step_module.TrainStep.__call__ = reseed_dead(args.reseed_every, args.reseed_until,
                                                     originals[3])
    try:
        return bench_ablation.main(rest)
    finally:  # the patches end with the run (tests call main in-process)
        (step_module.gumbel_probs, objective_module.normalize_columns,
         trainer_module.Trainer.__init__, step_module.TrainStep.__call__) = originals


if __name__ == "__main__":
    sys.exit(main())
