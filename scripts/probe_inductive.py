"""How far can a per-patch head get with the right kernel? Full-kernel probes of the head.

Takes a trained checkpoint (for its backbone, working resolution, kernel and
head shape) and a texture set (:mod:`segeig.data.textures`), and trains a
*fresh* head of the same shape, with continuous outputs, on the kernel over
**all** training patches instead of a mini-batch's:

* ``--mode distill``: regress the exact top-K eigenvectors of that kernel
  (scaled by √N): the best a per-patch head can extend them to new images;
* ``--mode subspace``: maximise tr((ΨᵀΨ)⁻¹ΨᵀκΨ) over the full kernel, the
  gradient taken through ``--rows`` patches per step with the others' outputs
  held from earlier steps;
* ``--mode nystrom``: no head: the exact top-K eigenvectors of that kernel
  extended to each val patch by the kernel itself (Nyström,
  ψ(x) = Σ_j κ(x, x_j) ψ_j / λ over its ``k_feat`` nearest training patches,
  feature graph only: a val patch has no pixel edge to a training image).
  This is *exact* spectral clustering made inductive, the function the
  learned eigenfunctions approximate.

Both are scored on the val split by NJW rounding of the outputs (whitened on
the training patches, rows normalised, spherical k-means with K centroids
fitted on the training patches), with and without propagating them over each
image's colour/position graph (:func:`segeig.kernel.propagate`), next to exact
spectral clustering of the kernel over the val patches and the checkpoint's
own head. Scores label patches and upsample their one-hot maps (majority
mIoU at S = K), so they sit a little below ``evaluate``'s, which upsamples
scores. Prints one line per figure.

    python scripts/probe_inductive.py CHECKPOINT TEXTURE_SET --mode distill --steps 600
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from segeig import load
from segeig.cluster import fit_kmeans
from segeig.data import build_dataset
from segeig.evaluation import load_eval_dataset, resolve_protocol
from segeig.evaluation.metrics import ConfusionAccumulator, evaluate_confusion
from segeig.evaluation.spectral_dataset import kernel_config_of
from segeig.head import EigenHead
from segeig.kernel import feature_knn_graph, pad_to_grid, propagate
from segeig.spectral import embedding_scores, set_kernel, to_scipy, top_eigenvectors
from segeig.transforms import to_tensor


def patches(segmenter, images):
    """Head inputs (N_i×C), kernel features (D×h×w), grid colours and grids per image."""
    stacked, kernel, colours, grids = [], [], [], []
    backbone = segmenter.model.backbone
    with torch.no_grad():
        for image in images:
            x = to_tensor(segmenter.working_image(image))[None]
            features = backbone(x)
            f = features.kernel.float()[0]
            kernel.append(f)
            stacked.append(features.stacked.float()[0].flatten(1).T)
            colours.append(pad_to_grid(x.float(), f.shape[-2:], backbone.patch_size,
                                       tuple(backbone.mean))[0])
            grids.append((x, tuple(f.shape[-2:])))
    return stacked, kernel, colours, grids


def score(labels, grids, val, k):
    """Majority mIoU of per-patch labels (concatenated over the val images)."""
    accumulator, offset = ConfusionAccumulator(k, val.num_classes), 0
    for i, (_, (h, w)) in enumerate(grids):
        label = val.load(i).label
        onehot = F.one_hot(labels[offset:offset + h * w].view(1, h, w), k)
        offset += h * w
        full = F.interpolate(onehot.permute(0, 3, 1, 2).float(), size=label.shape,
                             mode="bilinear", align_corners=False)
        accumulator.update(full.argmax(1)[0].numpy(), label)
    return evaluate_confusion(accumulator.matrix, "majority")["miou"]


def njw(train_out, val_out, k, seed=0):
    """Whiten on the training rows, normalise rows, spherical k-means; val labels."""
    gram = train_out.T @ train_out / len(train_out) + 1e-6 * torch.eye(train_out.shape[1])
    whiten = torch.linalg.inv(torch.linalg.cholesky(gram)).T
    centroids = fit_kmeans(F.normalize(train_out @ whiten, dim=1), k, iters=20, seed=seed)
    return (F.normalize(val_out @ whiten, dim=1) @ centroids.T).argmax(1)


def propagated(rows, grids, segmenter):
    """Rows (concatenated over images) propagated over each image's colour/position graph."""
    out, offset = [], 0
    backbone = segmenter.model.backbone
    config = segmenter.model.propagation
    for x, (h, w) in grids:
        block = rows[offset:offset + h * w].T.reshape(1, -1, h, w)
        offset += h * w
        out.append(propagate(block, x, config, backbone.patch_size,
                             tuple(backbone.mean))[0].flatten(1).T)
    return torch.cat(out)


def nystrom(train_features, val_features, vectors, values, k_feat, chunk=1024):
    """Nyström extension of the training kernel's eigenvectors to val patches.

    ``train_features`` ``N×D`` and ``val_features`` ``M×D`` kernel features,
    ``vectors`` ``N×K`` unit eigenvectors with eigenvalues ``values`` (K).
    The feature graph is rebuilt as :func:`segeig.kernel.feature_knn_graph`
    builds it (cosine, ``k_feat`` nearest, negatives 0) and normalised with
    the training patches' degrees in that graph. Returns ``M×K`` float32,
    on the scale of ``vectors``.
    """
    train = F.normalize(train_features.float(), dim=1)
    degree = torch.sparse.sum(feature_knn_graph(train, k_feat), dim=1).to_dense()
    psi = torch.from_numpy(vectors).float() / torch.from_numpy(values).float().clamp_min(1e-6)
    out = []
    for start in range(0, len(val_features), chunk):
        rows = F.normalize(val_features[start:start + chunk].float(), dim=1)
        sims, idx = (rows @ train.T).topk(k_feat, dim=1)
        sims = sims.clamp_min(0)
        weights = sims / (sims.sum(1, keepdim=True) * degree[idx]).clamp_min(1e-12).sqrt()
        out.append(torch.einsum("mk,mkj->mj", weights, psi[idx]))
    return torch.cat(out)


def train_head(args, segmenter, inputs, kernel, vectors):
    """A fresh head of the checkpoint's shape fitted on all training patches."""
    torch.manual_seed(args.seed)
    head = EigenHead(inputs.shape[1], segmenter.model.head.config,
                     embed_dim=segmenter.model.backbone.embed_dim)
    optimizer = torch.optim.Adam(head.parameters(), lr=args.lr)

    def forward(x):
        return head.forward_tokens(x[None])[0][0]

    n, k = inputs.shape[0], head.k
    if args.mode == "distill":
        target = torch.from_numpy(vectors).float() * np.sqrt(n)
        for _ in range(args.steps):
            pick = torch.randint(0, n, (args.rows,))
            loss = F.mse_loss(forward(inputs[pick]), target[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return forward
    with torch.no_grad():
        bank = forward(inputs)
    for _ in range(args.steps):
        pick = torch.randperm(n)[:args.rows]
        rows = forward(inputs[pick])
        with torch.no_grad():
            bank[pick] = rows.detach()
            inverse = torch.linalg.inv(bank.T @ bank / n + 1e-4 * torch.eye(k))
            spread = torch.sparse.mm(kernel, bank)
            rayleigh = bank.T @ spread / n
            # d tr(G⁻¹A)/dΨ over the picked rows, G = ΨᵀΨ/n, A = ΨᵀκΨ/n.
            grad = 2 * (spread[pick] @ inverse - rows.detach() @ inverse @ rayleigh @ inverse) / n
        loss = -(rows * grad).sum() * (n / args.rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("root", help="texture set (custom layout)")
    parser.add_argument("--mode", choices=("distill", "subspace", "nystrom"), default="distill")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rows", type=int, default=4096, help="patches per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k-feat", type=int, default=None, metavar="N",
                        help="feature neighbours of the kernel (default: the checkpoint's)")
    parser.add_argument("--kmeans", metavar="CHECKPOINT",
                        help="also score this checkpoint's kmeans method (k-means on raw "
                             "features), with and without the same propagation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    segmenter = load(args.checkpoint, device="cpu")
    config = kernel_config_of(segmenter)
    if args.k_feat is not None:
        config = replace(config, k_feat=args.k_feat)
    k = segmenter.model.head.k
    protocol = resolve_protocol("native", "custom")
    val = load_eval_dataset(protocol, args.root, "val")
    train_set = build_dataset("custom", args.root, "train", with_labels=False)
    v_in, v_kernel, v_colours, v_grids = patches(segmenter,
                                                 [val.load(i).image for i in range(len(val))])
    t_in, t_kernel, t_colours, t_grids = patches(
        segmenter, [train_set.load(i).image for i in range(len(train_set))])
    val_kernel = set_kernel(v_kernel, v_colours, config)
    values, vectors = top_eigenvectors(val_kernel, k)
    exact = score(embedding_scores(vectors, k).argmax(1), v_grids, val, k)
    print(f"exact spectral (val kernel): {exact:.1f}")
    train_kernel = set_kernel(t_kernel, t_colours, config)
    # The subspace objective never reads the exact training eigenvectors: skip
    # their decomposition (minutes over ~50 000 patches).
    train_values, train_vectors = (None, None) if args.mode == "subspace" else \
        top_eigenvectors(train_kernel, k)
    inputs, val_inputs = torch.cat(t_in), torch.cat(v_in)
    with torch.no_grad():
        own = segmenter.model.head.forward_tokens(val_inputs[None])[0][0]
    if args.mode == "nystrom":
        flat = lambda maps: torch.cat([f.flatten(1).T for f in maps])  # noqa: E731
        train_out = torch.from_numpy(train_vectors).float() * np.sqrt(len(inputs))
        val_out = nystrom(flat(t_kernel), flat(v_kernel), train_vectors, train_values,
                          config.k_feat) * np.sqrt(len(inputs))
    else:
        forward = train_head(args, segmenter, inputs, train_kernel, train_vectors)
        with torch.no_grad():
            train_out, val_out = forward(inputs), forward(val_inputs)
    q, _ = np.linalg.qr(val_out.double().numpy())
    energy = np.trace(q.T @ (to_scipy(val_kernel) @ q)) / values.sum()
    print(f"{args.mode} head: val energy {energy:.3f}, "
          f"NJW {score(njw(train_out, val_out, k), v_grids, val, k):.1f}")
    if args.kmeans:
        # Plain scores: the propagation below is applied on top of them.
        baseline = load(args.kmeans, device="cpu", propagation_steps=0)
        with torch.no_grad():
            kmeans_scores = torch.cat([
                baseline.forward(x, "kmeans").scores.float()[0].flatten(1).T
                for x, _ in v_grids])
        print(f"kmeans on raw features: {score(kmeans_scores.argmax(1), v_grids, val, k):.1f}")
    tau = segmenter.model.head.config.tau_min
    print(f"checkpoint's head: argmax {score(own.argmax(1), v_grids, val, k):.1f}")
    for steps in (1, 3, 5):
        segmenter.model.propagation = replace(segmenter.model.propagation, steps=steps)
        smooth_train = propagated(train_out, t_grids, segmenter)
        smooth_val = propagated(val_out, v_grids, segmenter)
        probs = propagated(torch.softmax(own / tau, 1), v_grids, segmenter)
        line = (f"propagation {steps} steps: {args.mode} head NJW "
                f"{score(njw(smooth_train, smooth_val, k), v_grids, val, k):.1f}, "
                f"checkpoint's head argmax {score(probs.argmax(1), v_grids, val, k):.1f}")
        if args.kmeans:
            smooth = propagated(torch.softmax(kmeans_scores, 1), v_grids, segmenter)
            line += f", kmeans {score(smooth.argmax(1), v_grids, val, k):.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
