"""Distributed data-parallel training (DDP) under torchrun: nccl on GPUs, gloo on CPUs.

``torchrun --nproc_per_node=N -m cnnlib train ...`` starts N copies of the CLI; each finds its
place in torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...).
The trainer asks :func:`setup` once; without torchrun, or with one process, it gets a
single-process :class:`DistInfo` and none of the paths below is taken. With several:

* the process group is nccl when training on CUDA (one GPU per process, ``cuda:LOCAL_RANK``)
  and gloo on the CPU; a collective that waits longer than ``$CNNLIB_DDP_TIMEOUT`` seconds
  (default 1800) fails instead of hanging;
* the global batch is kept: each rank takes ``batch_size / world_size`` images per step (an
  error when that does not divide) from its round-robin share of the epoch's permutation
  (``BatchLoader(rank=, world_size=)``). Ranks see disjoint samples, and the union of step
  ``i``'s per-rank batches is the single-process batch ``i``; training drops the
  ``N mod batch_size`` images at the end of each epoch's permutation, as one process does;
* every rank builds the same model (same seed, same data-dependent init); DDP broadcasts
  rank 0's weights at the start and its buffers before each forward, and averages gradients;
* ``sync_bn=True`` normalizes over the global batch: torch's ``SyncBatchNorm`` on CUDA,
  :class:`GlooSyncBatchNorm` on the CPU (torch's runs on GPUs only);
* train loss and accuracy are summed over ranks; validation and test run on rank 0 and their
  numbers are broadcast, so early stopping decides alike on every rank;
* only rank 0 prints and writes ``last.pt`` and ``model.pt``. On resume rank 0 reads
  ``last.pt`` and broadcasts it, so only rank 0's node needs the output folder; every rank
  then continues from rank 0's saved RNG state.

This is what the trainer uses. Starting the processes (``launch.train_or_launch``) and a
failing rank's clean exit (``launch.guard``) sit above the trainer, in :mod:`cnnlib.training.launch`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnlib._checks import check_int

TIMEOUT_ENV = "CNNLIB_DDP_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0  # seconds


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; ``world_size == 1`` means a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # set when enabled

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(name: str, default: int | None = None) -> int:
    text = os.environ.get(name, "")
    if not text.strip():
        if default is None:
            raise ValueError(f"{name}: not set; torchrun sets RANK, LOCAL_RANK and WORLD_SIZE")
        return default
    return check_int(name, text, text=True)


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (1 process without it)."""
    world = _int_env("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    rank, local = _int_env("RANK"), _int_env("LOCAL_RANK")
    if not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK: {rank} with WORLD_SIZE {world} and LOCAL_RANK {local} is "
                         "inconsistent; start the job with torchrun")
    return DistInfo(rank, world, local)


def is_main() -> bool:
    """True in a single process and on global rank 0 of a torchrun job."""
    return env_info().is_main


def timeout() -> timedelta:
    """How long a collective may wait for the other ranks: $CNNLIB_DDP_TIMEOUT seconds."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}: {text!r} is not allowed; allowed: seconds > 0")
    return timedelta(seconds=seconds)


def _device(config, local_rank: int) -> torch.device:
    device = config.resolved_device()
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"device: {config.device!r} under torchrun; every process uses "
                         "cuda:LOCAL_RANK, so use auto or cuda (pick GPUs with "
                         "CUDA_VISIBLE_DEVICES)")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"LOCAL_RANK: {local_rank}, but this node has {count} visible GPU(s); "
                         f"use --nproc_per_node={count} or fewer")
    return torch.device("cuda", local_rank)


def setup(config) -> DistInfo:
    """Join torchrun's process group (once per process) and return this rank's place.

    ``config`` is the run's RunConfig: its device decides the backend (nccl for CUDA, gloo
    for the CPU). Without torchrun, or with a single process, nothing happens.
    """
    info = env_info()
    if not info.enabled:
        return info
    device = _device(config, info.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        if dist.get_backend() != backend or dist.get_world_size() != info.world_size:
            raise ValueError(f"device: this process already joined a {dist.get_backend()} group "
                             f"of {dist.get_world_size()}; a {device.type} run needs {backend}")
    else:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timeout(),
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(info.rank, info.world_size, info.local_rank, device)


def shutdown() -> None:
    """Close the process group once every rank is done with it.

    The barrier keeps a rank from tearing its connections down while a peer is still
    reading from them (rank 0 leaves the last broadcast first).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch; the global batch must split evenly."""
    if batch_size % world_size:
        raise ValueError(f"batch_size: {batch_size} does not split evenly over {world_size} "
                         f"processes; use a multiple of {world_size} (it is the global batch)")
    return batch_size // world_size


def device_label(device: torch.device, info: DistInfo) -> str:
    """The device as results report it: ``cuda:0`` for one process, ``cuda x8`` for DDP."""
    return f"{device.type} x{info.world_size}" if info.enabled else str(device)


# ---------------------------------------------------------------------------
# Collectives the trainer uses (each a no-op in a single process)


def share(info: DistInfo, value=None):
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not info.enabled:
        return value
    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(info: DistInfo, fn):
    """``fn()`` computed on rank 0 only, its result returned on every rank."""
    return share(info, fn() if info.is_main else None)


def all_reduce_sum(info: DistInfo, *values):
    """Sums over ranks of numbers or 0-d tensors, each returned in its own kind."""
    if not info.enabled:
        return values
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(info.device) for v in values])
    dist.all_reduce(t)
    return tuple(t[i] if torch.is_tensor(v) else type(v)(t[i].item())
                 for i, v in enumerate(values))


@contextlib.contextmanager
def local_main_first(info: DistInfo):
    """Local rank 0 runs the block first (say, a download); the node's other ranks after it."""
    if info.enabled and info.local_rank != 0:
        dist.barrier()
    yield
    if info.enabled and info.local_rank == 0:
        dist.barrier()


# ---------------------------------------------------------------------------
# The model


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is the all_reduce(SUM) of the incoming gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch, for any backend (gloo, CPU).

    The mean and the biased variance are all-reduced over the ranks in two passes (as stable
    as one process) and gradients flow through both sums, so N ranks with batch B/N compute
    what one process computes with batch B. Running statistics are updated as nn.BatchNorm
    does; in eval mode it is nn.BatchNorm. Parameter and buffer names are nn.BatchNorm's.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"GlooSyncBatchNorm: expected input [N, C, ...], got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training or self.running_mean is None):
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), x.numel() / x.shape[1], dtype=xf.dtype, device=x.device)
        stats = _SumOverRanks.apply(torch.cat([xf.sum(dims), count]))
        n = stats[-1].detach()
        mean = stats[:-1] / n
        centered = xf - mean.view(shape)
        var = _SumOverRanks.apply(centered.square().sum(dims)) / n
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / self.num_batches_tracked.item() if self.momentum is None
                     else self.momentum)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), f)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), f)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``module`` made synchronous across ranks (same parameters, buffers).

    CUDA uses torch's SyncBatchNorm; other devices :class:`GlooSyncBatchNorm`. Children are
    replaced in place; the returned module is ``module`` unless it is itself a BatchNorm.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlooSyncBatchNorm,
                                                                  nn.SyncBatchNorm)):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum,
                                module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the same Parameters
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out


def wrap(model: nn.Module, info: DistInfo, *, sync_bn: bool = False) -> nn.Module:
    """What the training step calls: ``model`` itself in one process, else DDP around it.

    ``model`` stays the plain module (its state_dict has no ``module.`` prefix), so
    checkpoints and evaluation are the same as in a single process.
    """
    if not info.enabled:
        return model
    if sync_bn:
        model = convert_sync_batchnorm(model, info.device)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
