"""The training loop: steps, their schedule, checkpoints, divergence stops, the centroid pass.

:class:`Trainer` drives one run, fresh or resumed: it builds the model and,
for each step, runs :class:`~segeig.train.step.TrainStep` (the forward pass:
frozen backbone → kernel over the batch → head → NeuralEF loss), averages its
statistics over processes, stops on a NaN loss or exploding outputs, takes
the Adam step with lr cosine-annealed per iteration to ``lr_min``, logs, and
saves the resume state and checkpoints at their intervals; then it fits the
centroids and writes the final checkpoint (docs/training.md).

Multi-process: DistributedDataParallel averages gradients; see
:mod:`segeig.train.step` for ``global_graph``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from segeig.backbone import Backbone
from segeig.checkpoint import CHECKPOINT_NAME, save_checkpoint
from segeig.config import to_dict
from segeig.data import SegDataset
from segeig.feature_cache import FeatureCache, remove_cache_dir
from segeig.head import tau_at
from segeig.model import SegEigModel, build_model, resolve_device
from segeig.train.cached_crops import cache_root, describe, open_training_cache
from segeig.train.centroids import EigenvalueMeter, centroid_methods, fit_centroids
from segeig.train.config import TrainConfig, config_differences
from segeig.train.loader import build_train_dataset, make_train_loader, steps_per_epoch
from segeig.train.runtime import DistContext, resolve_amp
from segeig.train.state import (
    LOG_NAME,
    STATE_NAME,
    JsonlLog,
    Progress,
    load_train_state,
    restore_rng,
    save_train_state,
)
from segeig.train.step import TrainStep

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict], None]


#: Head logits beyond this magnitude mean training diverged: at τ ≥ 0.3 a softmax
#: is one-hot long before (a gap of 30 already gives e^-100), so no learning
#: needs them, and the hidden features k-means clusters overflow next.
MAX_LOGIT = 1e4


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; nothing after the last good checkpoint was saved."""


def lr_at(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine schedule per iteration: ``lr`` at step 0 → ``lr_min`` at ``total``."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))


class Trainer:
    """One training run; see :func:`segeig.train.launch.train` for the arguments."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, device: str = "auto",
                 resume: bool = False, overwrite: bool = False, dist: DistContext | None = None,
                 progress: ProgressFn | None = None, dataset: SegDataset | None = None,
                 checkpoint_path: str | Path | None = None, log_path: str | Path | None = None):
        config.validate()
        self.dist = dist or DistContext()
        self.device = resolve_device(device)
        self.out_dir = Path(out_dir)
        self.ckpt_path = Path(checkpoint_path or self.out_dir / CHECKPOINT_NAME)
        self.state_path = self.out_dir / STATE_NAME
        self.progress_fn = progress if self.dist.is_main else None
        self.state = None
        if resume:
            if not self.state_path.is_file():
                raise ValueError(f"nothing to resume: {self.state_path} does not exist; "
                                 "start the run without --resume")
            self.state = load_train_state(self.state_path)
            changed = config_differences(self.state.config, config)
            if changed:
                raise ValueError("--resume must use the interrupted run's settings; these differ: "
                                 + "; ".join(changed))
        else:
            outputs = [self.ckpt_path, Path(log_path or self.out_dir / LOG_NAME)]
            if config.checkpoint_every:
                outputs.append(self.state_path)
            existing = [p for p in outputs if p.exists()]
            if existing and not overwrite:
                raise ValueError(f"{self.out_dir} already holds a training run "
                                 f"({', '.join(p.name for p in existing)}); pass --resume to "
                                 "continue it, --overwrite to replace it, or another --out")
        self.config = config
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not resume and config.checkpoint_every:
                # A replaced run's state must not be resumed by mistake later.
                self.state_path.unlink(missing_ok=True)
        self.dist.barrier()
        self.log = JsonlLog(log_path or self.out_dir / LOG_NAME, enabled=self.dist.is_main,
                            fresh=not resume)
        self.dataset = dataset if dataset is not None else build_train_dataset(config)
        if len(self.dataset) == 0:
            raise ValueError(f"the training set at {config.root} is empty")
        self.amp_dtype = resolve_amp(config.amp, self.device)
        head_config = config.head if config.method == "eigen" else None
        # Seeded init (a random backbone too, so a resumed smoke run sees the same
        # one) without touching the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            backbone = Backbone(config.backbone)
            self.model: SegEigModel = build_model(backbone, head_config).to(self.device)
        self.model.spectral = (config.kernel, config.spectral)
        self.spe = steps_per_epoch(len(self.dataset), config.batch_size, self.dist.world_size)
        self.total = config.steps or config.epochs * self.spe
        self.progress = self.state.progress if self.state else Progress()
        saved_world = self.progress.extra.setdefault("world_size", self.dist.world_size)
        if saved_world != self.dist.world_size:
            raise ValueError(f"this run was trained with {saved_world} process(es); resume it "
                             f"with the same number (now {self.dist.world_size}), since the "
                             "batches and the data order depend on it")
        if self.progress.kmeans_k is None:
            # The paper's k-means rows use K clusters (as many as eigenfunctions).
            self.progress.kmeans_k = config.kmeans_k or config.head.k
        self.cache: FeatureCache | None = None
        self.optimizer = self.scaler = None
        if self.model.head is not None:
            self.optimizer = torch.optim.Adam(self.model.head.parameters(), lr=config.lr,
                                              weight_decay=0.0)
            self.scaler = torch.amp.GradScaler(self.device.type,
                                               enabled=self.amp_dtype == torch.float16)
        if self.state is not None:
            self._restore()

    def _restore(self) -> None:
        state = self.state
        if self.model.head is not None:
            self.model.head.load_state_dict(state.head)
            self.optimizer.load_state_dict(state.optimizer)
            if state.scaler:
                self.scaler.load_state_dict(state.scaler)
        restore_rng(state.rng)
        self.log.truncate_after(self.progress.step)
        self.log.write("resume", step=self.progress.step, phase=self.progress.phase)
        logger.info("resuming %s at step %d/%d (%s)", self.out_dir, self.progress.step,
                    self.total, self.progress.phase)

    # -- saving -----------------------------------------------------------
    def _extra(self) -> dict:
        c = self.config
        training = {**to_dict(c), "num_images": len(self.dataset),
                    "steps_per_epoch": self.spe, "total_steps": self.total,
                    "world_size": self.dist.world_size, "kmeans_k": self.progress.kmeans_k,
                    "steps_done": self.progress.step}
        extra = {"training": training, "resolution": to_dict(c.working_resolution),
                 "kernel": to_dict(c.kernel),
                 "objective": {**to_dict(c.objective), "beta_effective": c.objective.beta_for(
                     c.head.k)}}
        if self.progress.eigenvalues is not None:
            # Measured after training on deterministic views, outputs sorted by
            # them ("eigenvalues"); before that only training's running
            # estimates exist, in training order ("eigenvalues_training").
            measured = self.progress.extra.get("eigenvalues_measured", False)
            extra["eigenvalues" if measured else "eigenvalues_training"] = \
                self.progress.eigenvalues
        return extra

    def _save(self, model_checkpoint: bool = True) -> None:
        head = self.model.head
        # Checked on every rank (DDP keeps the weights identical), so all ranks
        # stop together instead of the others waiting at the barrier below.
        if head is not None and not all(torch.isfinite(p).all() for p in head.parameters()):
            self._diverged(float("nan"), "the head's weights are no longer finite")
        if self.dist.is_main:
            save_train_state(self.state_path, config=self.config, progress=self.progress,
                             head=head if head is not None else torch.nn.Module(),
                             optimizer=self.optimizer, scaler=self.scaler)
            if model_checkpoint:
                save_checkpoint(self.ckpt_path, self.model, extra=self._extra())
        self.dist.barrier()

    def _diverged(self, loss: float, why: str) -> None:
        self.log.write("diverged", step=self.progress.step + 1, loss=loss)
        saved = self.progress.extra.get("step_saved")
        if saved:
            last = f"the last good checkpoint is {self.ckpt_path} (step {saved})"
        elif self.ckpt_path.exists():
            last = f"{self.ckpt_path}, written before this run, was left untouched"
        else:
            last = "no checkpoint had been written yet"
        raise TrainingDivergedError(
            f"training diverged at step {self.progress.step + 1}/{self.total} "
            f"(epoch {self.progress.step // self.spe + 1}): {why}. Nothing after the last "
            f"checkpoint was saved; {last}. Try a lower --lr (now {self.config.lr:g}) or "
            "--amp off, then rerun (or --resume from that checkpoint)."
        )

    # -- the loop ---------------------------------------------------------
    def _train(self) -> None:
        c, p = self.config, self.progress
        head = self.model.head
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            head = DistributedDataParallel(head, device_ids=ids)
        head.train()
        loader = make_train_loader(c, self.dataset, rank=self.dist.rank,
                                   world_size=self.dist.world_size, start_step=p.step,
                                   total_steps=self.total, pin_memory=self.device.type == "cuda",
                                   pad_colour=tuple(self.model.backbone.mean), cache=self.cache)
        forward = TrainStep(c, self.model.backbone, head, total=self.total, device=self.device,
                            amp_dtype=self.amp_dtype, dist=self.dist, cache=self.cache)
        last_time, last_step = self.log.elapsed(), p.step
        for step, batch in zip(range(p.step, self.total), loader, strict=True):
            epoch = step // self.spe
            lr = lr_at(step, self.total, c.lr, c.lr_min)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            out, tokens, spread = forward(batch, step)
            stats = torch.cat([out.loss.detach()[None], out.trace[None], out.penalty[None],
                               spread[None], out.eigenvalues])
            stats = self.dist.all_reduce_mean(stats).cpu().double()
            loss, spread = float(stats[0]), float(stats[3])
            stats = torch.cat([stats[:3], stats[4:]])
            if not math.isfinite(loss):
                self._diverged(loss, f"the loss became {loss}")
            # The loss is bounded while the outputs are finite (columns are
            # normalised), so a too-large learning rate shows in the outputs
            # first: logits far beyond any softmax temperature's range, then inf.
            if not spread <= MAX_LOGIT:
                self._diverged(loss, f"the head's outputs exploded (|logit| up to {spread:.3g}, "
                               f"limit {MAX_LOGIT:g})")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            p.eig_sum = stats[3:] if p.eig_sum is None else p.eig_sum + stats[3:]
            p.eig_count += 1
            p.loss_sum += loss
            p.step = step + 1
            tau = tau_at(step, self.total, c.head.tau_max, c.head.tau_min)
            info = {"phase": "train", "loss": loss, "trace": float(stats[1]),
                    "penalty": float(stats[2]), "lr": lr, "tau": tau, "epoch": epoch}
            if p.step % c.log_every == 0 or p.step == self.total:
                now = self.log.elapsed()
                self.log.write("step", step=p.step, epoch=epoch, loss=loss, trace=info["trace"],
                               penalty=info["penalty"], lr=lr, tau=tau, tokens=tokens,
                               it_s=(p.step - last_step) / max(now - last_time, 1e-9))
                last_time, last_step = now, p.step
            if p.step % self.spe == 0 or p.step == self.total:
                self._end_epoch(epoch)
            elif c.save_every and p.step % c.save_every == 0:
                self._save(model_checkpoint=False)
            if self.progress_fn is not None:
                self.progress_fn(p.step, self.total, info)

    def _end_epoch(self, epoch: int) -> None:
        c, p = self.config, self.progress
        p.eigenvalues = (p.eig_sum / p.eig_count).tolist()
        record = {"epoch": epoch + 1, "step": p.step, "loss": p.loss_sum / p.eig_count,
                  "eigenvalues": [round(v, 6) for v in p.eigenvalues]}
        if self.device.type == "cuda":
            record["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log.write("epoch", **record)
        p.eig_sum, p.eig_count, p.loss_sum = None, 0, 0.0
        finished = p.step == self.total
        if finished:
            p.phase = "trained"
        if c.checkpoint_every and ((epoch + 1) % c.checkpoint_every == 0 or finished):
            p.extra["step_saved"] = p.step
            self._save()

    def _order_by_eigenvalue(self, meter: EigenvalueMeter | None) -> None:
        """Put the head's outputs in decreasing order of their measured eigenvalue."""
        values = None if meter is None else meter.eigenvalues(self.dist)
        if values is None:
            return
        order = torch.argsort(values, descending=True, stable=True)
        self.model.head.reorder_outputs(order)
        self.progress.eigenvalues = values[order].tolist()
        self.progress.extra["eigenvalues_measured"] = True
        self.log.write("eigenvalues", order=order.tolist(),
                       eigenvalues=[round(v, 6) for v in self.progress.eigenvalues])

    def run(self) -> Path:
        """Train (or continue), fit centroids, write the final checkpoint; returns its path."""
        c, p = self.config, self.progress
        if p.phase == "done":
            logger.info("%s: this run is already complete", self.out_dir)
            return self.ckpt_path
        if self.state is None:
            self.log.write("start", config=to_dict(c), num_images=len(self.dataset),
                           steps_per_epoch=self.spe, total_steps=self.total,
                           world_size=self.dist.world_size, device=str(self.device),
                           amp=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype
                           else "off")
        self._open_cache()
        if self.model.head is not None and p.phase == "train":
            self._train()
        self.model.eval()
        methods = centroid_methods(self.model, c.baseline_centroids, c.spectral_centroids,
                                   c.method)
        meter = None
        if self.model.head is not None:
            meter = EigenvalueMeter(c.kernel, self.model.backbone.patch_size,
                                    tuple(self.model.backbone.mean), c.head.tau_min)
        centroids = fit_centroids(
            self.model, self.dataset, k=p.kmeans_k, crop=c.crop, batch_size=c.batch_size,
            max_tokens=c.kmeans_tokens, iters=c.kmeans_iters, seed=c.seed, device=self.device,
            methods=methods, workers=c.workers, max_images=c.kmeans_images,
            autocast_dtype=self.amp_dtype, dist=self.dist, progress=self.progress_fn,
            resolution=c.working_resolution, metric=c.kmeans_metric, on_batch=meter,
            cache=self.cache)
        self._order_by_eigenvalue(meter)
        for method, fitted in centroids.items():
            self.model.set_centroids(method, fitted.centroids, fitted.metric, fitted.spread)
            self.log.write("centroids", method=method, k=int(fitted.centroids.shape[0]),
                           metric=fitted.metric)
        p.phase = "done"
        if c.checkpoint_every:
            self._save()
        else:  # no resume state wanted (short fits): the model checkpoint alone
            if self.dist.is_main:
                save_checkpoint(self.ckpt_path, self.model, extra=self._extra())
            self.dist.barrier()
        self._close_cache()
        self.log.write("end", checkpoint=str(self.ckpt_path))
        return self.ckpt_path

    # -- the feature cache ------------------------------------------------
    def _open_cache(self) -> None:
        """Open (filling it first if training remains) the run's feature cache.

        Runs without a head to train only read a cache that is already
        complete: filling every view for one centroid pass would cost more
        than that pass.
        """
        c, p = self.config, self.progress
        if not c.feature_cache or self.cache is not None:
            return
        fill = self.model.head is not None and p.phase == "train"
        progress = None
        if self.progress_fn is not None:
            def progress(done: int, total: int) -> None:
                self.progress_fn(done, total, {"phase": "cache"})
        start = self.log.elapsed()
        self.cache = open_training_cache(
            c, self.model, self.dataset, self.out_dir, device=self.device,
            autocast_dtype=self.amp_dtype, rank=self.dist.rank,
            world_size=self.dist.world_size, barrier=self.dist.barrier, fill=fill,
            progress=progress)
        if self.cache is not None:
            self.log.write("cache", directory=str(self.cache.directory),
                           bytes=self.cache.nbytes, views=self.cache.n_views,
                           seconds=round(self.log.elapsed() - start, 3))
            logger.info("training from the feature cache %s", describe(self.cache, self.out_dir))

    def _close_cache(self) -> None:
        """Remove the default cache of a run that keeps no resume state (``fit``)."""
        c = self.config
        self.cache = None
        if c.feature_cache and not c.checkpoint_every and not c.feature_cache_dir:
            self.dist.barrier()
            if self.dist.is_main:
                remove_cache_dir(cache_root(c, self.out_dir))
