"""The loss of one training step: frozen backbone → kernel over the batch → head → NeuralEF.

One step (docs/training.md, "What one step does"; docs/method.md for the terms):

1. A batch of augmented crops (uint8) and their pixel-validity masks, or the
   same windows read from the feature cache.
2. Backbone forward (frozen, no grad; autocast on CUDA).
3. Kernel κ in float32 outside autocast, over the *valid* patches only: a patch
   made mostly of crop padding (the rescaled image was smaller than the crop)
   would otherwise join a spurious "black" cluster. The pixel graph uses the
   same augmented crop the backbone saw (after photometric jitter): the graph
   must describe the image the features came from, and the jitter is global
   (brightness/contrast/hue), so colour *distances* within a crop barely move.
4. Head forward (autocast), Gumbel-softmax of the flattened logits with a
   per-step seeded generator and τ cosine-annealed per iteration, rows of the
   valid patches → NeuralEF loss in float32.

The Adam step, the lr schedule and everything between steps belong to the
loop (:mod:`segeig.train.trainer`).

The transformer head attends over all patches of a crop, padded ones included
(they are only removed from the graph and the loss).

Multi-process: with ``global_graph`` the kernel features, crops and masks of
all ranks are gathered (no grad) and each rank builds the kernel of the global
batch; the Gumbel probabilities are gathered with a differentiable all-gather,
so every rank computes the same global loss and the averaged gradient is
exactly its gradient (see :meth:`segeig.train.runtime.DistContext.all_gather_grad`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from segeig.backbone import Backbone
from segeig.feature_cache import FeatureCache
from segeig.head import gumbel_probs, tau_at
from segeig.kernel import build_kernel
from segeig.objective import NeuralEFLoss, neuralef_loss
from segeig.train.config import TrainConfig
from segeig.train.loader import token_validity
from segeig.train.runtime import DistContext, autocast, full_precision


def noise_seed(seed: int, step: int) -> int:
    """Seed of the Gumbel noise of the global batch at ``step``."""
    return int(np.random.SeedSequence([seed, step, 0x6E015E]).generate_state(1)[0])


class StepInputs(NamedTuple):
    """What the kernel and the head read of one batch.

    Attributes:
        stacked: ``B×3D×h×w`` float head input (float32 from the cache, the
            autocast dtype from the backbone).
        kernel_features: ``B×D×h×w`` float32 kernel features.
        colours: the pixel graph's colours: ``B×3×H×W`` uint8 crops, or the
            cached ``B×3×h×w`` float16 colours on the patch grid (both travel
            small when gathered across processes).
        valid: ``B×h×w`` bool, the patches that are graph nodes.
        on_grid: True when ``colours`` are already on the patch grid (cached).
    """

    stacked: torch.Tensor
    kernel_features: torch.Tensor
    colours: torch.Tensor
    valid: torch.Tensor
    on_grid: bool


class StepLoss(NamedTuple):
    """The outcome of one step's forward pass.

    Attributes:
        out: the NeuralEF loss (``out.loss`` still to be backpropagated) and its parts.
        tokens: the number of graph nodes (valid patches of the global batch
            with ``global_graph``, of this rank's batch otherwise).
        spread: 0-d float32 tensor, the largest head logit in magnitude (the
            outputs' spread, a divergence signal).
    """

    out: NeuralEFLoss
    tokens: int
    spread: torch.Tensor


class TrainStep:
    """The forward pass of one training step (the caller does backward and Adam).

    Args:
        config: the run's settings.
        backbone: the frozen backbone (its patch size and mean colour are used
            even when the features come from the cache).
        head: the head being trained, possibly wrapped in DistributedDataParallel.
        total: the run's total steps (τ's schedule).
        device, amp_dtype: where and in which autocast dtype (None: float32) to run.
        dist: this process.
        cache: the open feature cache the batches come from, or None for crops.
    """

    def __init__(self, config: TrainConfig, backbone: Backbone, head: torch.nn.Module, *,
                 total: int, device: torch.device, amp_dtype: torch.dtype | None,
                 dist: DistContext, cache: FeatureCache | None) -> None:
        self.config, self.backbone, self.head, self.total = config, backbone, head, total
        self.device, self.amp_dtype, self.dist, self.cache = device, amp_dtype, dist, cache
        self.generator = torch.Generator(device=device)

    def inputs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepInputs:
        """The :class:`StepInputs` of a batch, from the backbone or the cache.

        ``batch``: ``(B×3×H×W uint8 crops, B×H×W bool pixel validity)``, or
        with the cache ``(B×C×h×w cached channels, B×h×w bool valid patches)``.
        """
        device = self.device
        if self.cache is not None:
            tokens, valid = batch
            tokens = tokens.to(device, non_blocking=True)
            stacked, kfeat, colours = self.cache.split(tokens)
            return StepInputs(stacked.float(), kfeat.float(), colours, valid.to(device), True)
        crops, valid_px = batch
        crops = crops.to(device, non_blocking=True)
        valid = token_validity(valid_px.to(device), self.backbone.patch_size,
                               self.config.min_valid)
        with autocast(device, self.amp_dtype):
            features = self.backbone(crops.float().div_(255))
        return StepInputs(features.stacked, features.kernel.float(), crops, valid, False)

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> StepLoss:
        """The loss of ``batch`` at 0-based ``step`` (before backward)."""
        c, dist, device = self.config, self.dist, self.device
        self.generator.manual_seed(noise_seed(c.seed, step))
        stacked, kfeat, colours, valid, on_grid = self.inputs(batch)
        kvalid = valid
        if c.global_graph and dist.active:
            kfeat, kvalid = dist.all_gather(kfeat), dist.all_gather(valid)
            colours = dist.all_gather(colours)
        kimages = colours.float() if on_grid else colours.float().div_(255)
        with full_precision(device):
            # Cached colours are on the padded patch grid already: no padding.
            kernel = build_kernel(kfeat, kimages, c.kernel, valid=kvalid,
                                  patch=None if on_grid else self.backbone.patch_size,
                                  pad_colour=self.backbone.mean)
        with autocast(device, self.amp_dtype):
            logits, _ = self.head(stacked)
        with full_precision(device):
            flat = logits.float().flatten(2).transpose(1, 2).reshape(-1, c.head.k)
            tau = tau_at(step, self.total, c.head.tau_max, c.head.tau_min)
            # Noise is drawn for the global batch and sliced, so a patch gets the
            # same noise whatever the number of processes.
            n = flat.shape[0]
            noise = torch.empty(n * dist.world_size, c.head.k, device=device)
            noise = noise.exponential_(generator=self.generator)
            noise = noise[dist.rank * n : (dist.rank + 1) * n]
            probs = gumbel_probs(flat, tau, noise=noise)
            if c.global_graph and dist.active:
                probs = dist.all_gather_grad(probs)
            out = neuralef_loss(probs[kvalid.reshape(-1)], kernel,
                                c.objective.beta_for(c.head.k), c.objective.t)
        return StepLoss(out, int(kvalid.sum()), logits.detach().float().abs().amax())
