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
  then continues from rank 0's saved RNG state;
* under :func:`guard` (the CLI) a rank that raises prints ``[rank r of W]`` and its error,
  records it for torchrun's failure summary and exits at once; torchrun then stops the other
  ranks and exits non-zero, instead of leaving them blocked in a collective.

:func:`train_or_launch` lets the run cache train each run through
``torchrun --standalone --nproc_per_node=$CNNLIB_NPROC`` on one machine.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

TIMEOUT_ENV = "CNNLIB_DDP_TIMEOUT"
NPROC_ENV = "CNNLIB_NPROC"
DEFAULT_TIMEOUT = 1800.0  # seconds
FOLLOW_UP_GRACE = 10.0  # seconds a rank failing after another one waits for torchrun to stop it
RESULT_FILE = ".ddp-result.pt"  # what a launched run hands back to train_or_launch
CONFIG_FILE = ".ddp-config.json"


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
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not an integer") from None


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


# ---------------------------------------------------------------------------
# Failing cleanly


def rank_tag() -> str:
    info = env_info()
    return f" [rank {info.rank} of {info.world_size}]" if info.enabled else ""


def _first_failure() -> bool:
    """True unless another rank of this job failed before (a counter in torchrun's store).

    A rank that fails because a peer died (say, gloo's "Connection closed by peer") fails
    after that peer, so the counter tells the cause from its consequences. Without a
    reachable store every failure counts as a first one.
    """
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False, timeout=timedelta(seconds=5))
        run = os.environ.get("TORCHELASTIC_RUN_ID", "")
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return store.add(f"cnnlib/failures/{run}/{attempt}", 1) == 1
    except Exception:
        return True


@contextlib.contextmanager
def guard(command: str):
    """The CLI's wrapper around a command that may run under torchrun.

    In one process it does nothing. Under torchrun, a rank that raises prints
    ``cnnlib <command> [rank r of W]: error: ...`` (a traceback for unexpected errors) and
    exits at once with status 2 (1 for unexpected errors), without closing the process group:
    its peers may be blocked in a collective that it will never join, and its exit is what
    lets torchrun stop them. The first rank to fail records its error in torchrun's error
    file, so torchrun's summary names it as the root cause; a rank that fails after it (its
    peers, losing their connection) says so and waits up to FOLLOW_UP_GRACE seconds for
    torchrun to stop it. On success the process group is closed.
    """
    info = env_info()
    if not info.enabled:
        yield
        return
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:
        expected = isinstance(e, (ValueError, FileNotFoundError, RuntimeError))
        first = _first_failure()
        if not expected and first:
            traceback.print_exc()
        after = "" if first else " (another rank failed first: see its error)"
        print(f"cnnlib {command}{rank_tag()}: error{after}: {e}", file=sys.stderr, flush=True)
        if first:
            with contextlib.suppress(Exception):
                from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

                ErrorHandler().record_exception(e)
        sys.stdout.flush()
        sys.stderr.flush()
        if not first:
            time.sleep(FOLLOW_UP_GRACE)
        os._exit(2 if expected else 1)
    shutdown()


# ---------------------------------------------------------------------------
# Launching a run on N local processes (the run cache's hook)


def nproc_from_env() -> int:
    """$CNNLIB_NPROC: processes per run for train_or_launch (unset or empty = 1)."""
    text = os.environ.get(NPROC_ENV, "").strip()
    try:
        n = int(text) if text else 1
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{NPROC_ENV}: {text!r} is not allowed; allowed: an integer >= 1")
    return n


def torchrun_command(config_file, out_dir, nproc: int, *, resume=True, data_root=None,
                     progress=True) -> list[str]:
    """The torchrun command line that trains the config in ``config_file`` on nproc processes."""
    code = "import sys; from cnnlib.distributed import worker_main; sys.exit(worker_main())"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "--no-python", sys.executable, "-c", code,
           str(config_file), str(out_dir)]
    if data_root is not None:
        cmd += ["--data-root", str(data_root)]
    if not resume:
        cmd.append("--restart")
    if not progress:
        cmd.append("--quiet")
    return cmd


def train_or_launch(config, out_dir, *, resume: bool = True, data_root=None,
                    progress: bool = True, nproc: int | None = None):
    """``train.train(config, out_dir, ...)``, on ``nproc`` local processes when that is > 1.

    ``nproc`` defaults to $CNNLIB_NPROC (1 when unset); inside a torchrun worker the run
    always trains in this process. With N > 1 the run is trained by
    ``torchrun --standalone --nproc_per_node=N`` in ``out_dir`` (resuming from its last.pt
    like any run); the workers' output is echoed here and the TrainResult comes back through
    a file that rank 0 writes (its ``model`` is None: load ``out_dir/model.pt``). A failed
    launch raises RuntimeError with the tail of the workers' output.
    """
    from .checkpoint import load_safe
    from .train import TrainResult, train

    n = nproc_from_env() if nproc is None else nproc
    if n <= 1 or env_info().enabled or os.environ.get("TORCHELASTIC_RUN_ID"):
        return train(config, out_dir, resume=resume, data_root=data_root, progress=progress)
    if out_dir is None:
        raise ValueError("out_dir: needed to train on several processes (it receives the run)")
    per_rank_batch(config.batch_size, n)  # fail here, not in N processes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    config_file = out / CONFIG_FILE
    config_file.write_text(json.dumps(config.to_dict(), default=str))
    cmd = torchrun_command(config_file, out, n, resume=resume, data_root=data_root,
                           progress=progress)
    env = {k: v for k, v in os.environ.items() if k != NPROC_ENV}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, bufsize=1) as proc:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if progress:
                print(line, end="", flush=True)
    result_path = out / RESULT_FILE
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"torchrun: training {out} on {n} processes failed (exit status "
                           f"{proc.returncode}); last output:\n" + "\n".join(tail))
    saved = load_safe(result_path)
    result_path.unlink()
    config_file.unlink(missing_ok=True)
    return TrainResult(**json.loads(saved["summary"]), test_metrics=saved["test_metrics"])


def worker_main(argv: list[str] | None = None) -> int:
    """One torchrun worker of train_or_launch: train, then rank 0 writes the result file."""
    import argparse

    from .checkpoint import save_atomic
    from .train import RunConfig, train

    p = argparse.ArgumentParser(prog="cnnlib.distributed worker")
    p.add_argument("config", help="a RunConfig as JSON")
    p.add_argument("out")
    p.add_argument("--data-root")
    p.add_argument("--restart", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    with guard("train"):
        config = RunConfig.from_dict(json.loads(Path(args.config).read_text()))
        result = train(config, args.out, resume=not args.restart, data_root=args.data_root,
                       progress=not args.quiet)
        if is_main():
            metrics = {k: v.detach().cpu() if torch.is_tensor(v) else v
                       for k, v in (result.test_metrics or {}).items()}
            save_atomic({"summary": json.dumps(result.summary(), default=float),
                         "test_metrics": metrics}, Path(args.out) / RESULT_FILE)
    return 0
