"""How a training run uses its hardware: processes (``torch.distributed``) and precision.

Processes: thin helpers over ``torch.distributed`` for multi-process training.

The library never initialises the process group and never reads environment
variables: the caller (``segeig train`` under ``torchrun``) does, and passes
``rank`` and ``world_size`` explicitly. With ``world_size == 1`` every helper is
the identity, so single-process code needs no branches.

Precision: which autocast dtype a run uses and where float32 is forced (the
kernel and the loss).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Which process this is.

    Attributes:
        rank: this process's index in ``[0, world_size)``.
        world_size: number of processes.
    """

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        if self.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"world_size={self.world_size} but torch.distributed is not initialised; "
                "launch with `torchrun --nproc_per_node=N -m segeig train ...`"
            )

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` from all ranks along dim 0 (no gradient).

        Shapes must match across ranks. bool tensors are sent as uint8 (not
        every backend reduces bools).
        """
        if not self.active:
            return tensor
        src = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
        parts = [torch.empty_like(src) for _ in range(self.world_size)]
        dist.all_gather(parts, src)
        out = torch.cat(parts, dim=0)
        return out.bool() if tensor.dtype == torch.bool else out

    def all_gather_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Differentiable all-gather along dim 0.

        Every rank computes the same loss from the gathered tensor. The
        backward sums the gradients that all ranks send to this rank's slice,
        which is ``world_size ×`` the gradient of that shared loss;
        DistributedDataParallel then averages the parameter gradients over
        ranks, which divides by ``world_size`` again: the result is exactly the
        gradient of the loss over the global batch.
        """
        if not self.active:
            return tensor
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor.contiguous()), dim=0)

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of ``tensor`` over ranks (a new tensor; NaN anywhere stays NaN)."""
        if not self.active:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out)
        return out / self.world_size


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
