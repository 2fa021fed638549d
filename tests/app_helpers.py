"""Tiny checkpoints and images for the web-demo tests (no hub, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segeig.checkpoint import save_checkpoint
from segeig.model import SegEigModel

#: Deliberately not sorted, so tests can check the eigenvalue ordering.
EIGENVALUES = [0.5, 0.9, 0.7, 0.8, 0.1, 0.6, 0.4, 0.3, 0.2, 0.05, 0.02, 0.01]
N_CENTROIDS = 6


def add_centroids(model: SegEigModel, n: int = N_CENTROIDS, seed: int = 0) -> SegEigModel:
    """Give ``model`` random ``eigen+kmeans`` centroids (unit vectors)."""
    gen = torch.Generator().manual_seed(seed)
    model.set_centroids("eigen+kmeans", torch.randn(n, model.head.hidden_dim, generator=gen))
    return model


def write_tiny_checkpoint(model: SegEigModel, path: Path) -> Path:
    """Save ``model`` (with centroids) and unsorted eigenvalue estimates."""
    add_centroids(model)
    return save_checkpoint(path, model, extra={"eigenvalues": EIGENVALUES[: model.head.k]})


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
