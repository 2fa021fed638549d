"""Mixed precision choices for training: which autocast dtype, whether to scale
gradients."""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device``, or ``None`` for float32.

    ``auto``: bfloat16 on CUDA GPUs that support it, else float16 on CUDA, and
    float32 on CPU (CPU autocast is slower than float32 on most CPUs).
    ``bf16`` is honoured on CPU too (tests use it to exercise the AMP path);
    ``fp16`` needs CUDA.
    """
    if mode == "off":
        return None
    cuda = device.type == "cuda"
    if mode == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if not cuda:
            raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 or off on CPU")
        return torch.float16
    raise ValueError(f"unknown amp mode {mode!r}; use auto, bf16, fp16 or off")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast inside (the kernel and the loss run in float32)."""
    return torch.autocast(device.type, enabled=False)
