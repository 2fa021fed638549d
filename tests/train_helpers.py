"""Helpers shared by the training tests: tiny image sets and tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open

from segeig.train.config import TrainConfig, default_config
from tests.conftest import random_image, tiny_backbone_config


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0,
                 suffix: str = ".png") -> list[Path]:
    """Write ``len(sizes)`` random ``H×W`` images to ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"img_{i:03d}{suffix}"
        Image.fromarray(random_image(rng, h, w)).save(path)
        paths.append(path)
    return paths


def tiny_config(root: Path | str, dataset: str = "folder", **changes) -> TrainConfig:
    """A tiny random-ViT run: 64 px crops, K=8, batch 2, a few steps, no workers."""
    settings = dict(backbone=tiny_backbone_config(), k=8, crop=64, batch_size=2, epochs=2,
                    workers=0, kmeans_k=4, log_every=1, resize_short=0, scale=(0.5, 1.5))
    settings.update(changes)
    return default_config(dataset, root, **settings)


def read_tensors(path: Path, prefix: str = "") -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}  # noqa: SIM118


def ddp_worker(rank: int, world_size: int, port: int, root: str, out: str,
               modes: tuple[bool, ...]) -> None:
    """One process of a gloo run (``torch.multiprocessing.spawn`` target).

    Trains the tiny config once per ``global_graph`` value in ``modes`` and
    saves this rank's final head weights to ``OUT/<mode>/rank<R>.safetensors``.
    """
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from segeig.train.runtime import DistContext
    from segeig.train.trainer import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        for global_graph in modes:
            run_dir = Path(out) / ("global" if global_graph else "local")
            config = tiny_config(root, global_graph=global_graph, batch_size=2, epochs=2)
            trainer = Trainer(config, run_dir, device="cpu",
                              dist=DistContext(rank, world_size))
            trainer.run()
            state = {k: v.contiguous() for k, v in trainer.model.head.state_dict().items()}
            save_file(state, str(run_dir / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
