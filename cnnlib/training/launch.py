"""Running under torchrun: the run cache's launcher, the worker it starts, the failure guard.

:func:`train_or_launch` lets the run cache train each run through
``torchrun --standalone --nproc_per_node=$CNNLIB_NPROC`` on one machine: each of the N
workers (:func:`worker_main`) calls ``train.train`` and rank 0 hands the result back through
a file. With one process it is ``train.train`` itself.

Under :func:`guard` (the CLI and the workers) a rank that raises prints ``[rank r of W]`` and
its error, records it for torchrun's failure summary and exits at once; torchrun then stops
the other ranks and exits non-zero, instead of leaving them blocked in a collective.

This module sits above the trainer (it imports ``train``); the process group and the
collectives the trainer itself uses are in :mod:`cnnlib.training.distributed`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

from cnnlib._checks import check_int
from cnnlib._fileio import child_env, hold_folder, write_text
from cnnlib.training.checkpoint import load_safe, save_atomic
from cnnlib.training.config import RunConfig
from cnnlib.training.distributed import env_info, is_main, per_rank_batch, shutdown
from cnnlib.training.loop import TrainResult, train

NPROC_ENV = "CNNLIB_NPROC"
FOLLOW_UP_GRACE = 10.0  # seconds a rank failing after another one waits for torchrun to stop it
RESULT_FILE = ".ddp-result.pt"  # what a launched run hands back to train_or_launch
CONFIG_FILE = ".ddp-config.json"


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
            with contextlib.suppress(Exception):  # the error file is a courtesy to torchrun
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
    return check_int(NPROC_ENV, text, 1, text=True) if text else 1


def torchrun_command(config_file, out_dir, nproc: int, *, resume=True, data_root=None,
                     progress=True) -> list[str]:
    """The torchrun command line that trains the config in ``config_file`` on nproc processes."""
    code = "import sys; from cnnlib.training.launch import worker_main; sys.exit(worker_main())"
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


class LaunchError(RuntimeError):
    """A run on several processes failed; the message holds the tail of their output."""


def train_or_launch(config, out_dir, *, resume: bool = True, data_root=None,
                    progress: bool = True, nproc: int | None = None):
    """``train.train(config, out_dir, ...)``, on ``nproc`` local processes when that is > 1.

    ``nproc`` defaults to $CNNLIB_NPROC (1 when unset); inside a torchrun worker the run
    always trains in this process. With N > 1 the run is trained by
    ``torchrun --standalone --nproc_per_node=N`` in ``out_dir`` (resuming from its last.pt
    like any run); the workers' output is echoed here and the TrainResult comes back through
    a file that rank 0 writes (its ``model`` is None: load ``out_dir/model.pt``). A failed
    launch raises LaunchError with the tail of the workers' output.
    """
    n = nproc_from_env() if nproc is None else nproc
    if n <= 1 or env_info().enabled or os.environ.get("TORCHELASTIC_RUN_ID"):
        return train(config, out_dir, resume=resume, data_root=data_root, progress=progress)
    if out_dir is None:
        raise ValueError("out_dir: needed to train on several processes (it receives the run)")
    per_rank_batch(config.batch_size, n)  # fail here, not in N processes
    out = Path(out_dir)
    with hold_folder(out):  # the launcher's files are the folder's too: one launch at a time
        return _launch(config, out, n, resume=resume, data_root=data_root, progress=progress)


def _launch(config, out: Path, n: int, *, resume: bool, data_root, progress: bool):
    (out / RESULT_FILE).unlink(missing_ok=True)
    config_file = out / CONFIG_FILE
    write_text(json.dumps(config.to_dict(), default=str), config_file)
    cmd = torchrun_command(config_file, out, n, resume=resume, data_root=data_root,
                           progress=progress)
    # The workers pass the folder's lock that this process holds; nothing else does.
    env = {**{k: v for k, v in os.environ.items() if k != NPROC_ENV}, **child_env(out)}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, bufsize=1) as proc:
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if progress:
                    print(line, end="", flush=True)
        result_path = out / RESULT_FILE
        if proc.returncode != 0 or not result_path.exists():
            raise LaunchError(f"torchrun: training {out} on {n} processes failed (exit status "
                               f"{proc.returncode}); last output:\n" + "\n".join(tail))
        saved = load_safe(result_path)
        result_path.unlink()
    finally:
        config_file.unlink(missing_ok=True)
    return TrainResult(**json.loads(saved["summary"]), test_metrics=saved["test_metrics"])


def worker_main(argv: list[str] | None = None) -> int:
    """One torchrun worker of train_or_launch: train, then rank 0 writes the result file."""
    p = argparse.ArgumentParser(prog="cnnlib.training.launch worker")
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
