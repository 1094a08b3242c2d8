"""Many runs at once: the runs a notebook asks for, trained in parallel into the one run cache.

`run_all(configs, profile=...)` (what the notebooks call) hands the runs not in the cache yet
to an executor, waits for them, then reads every run from the cache with `runs.run_all`, so a
notebook gets the same Runs, and results.csv the same rows, whichever executor trained them:
- one job (the default): this process, one run after the other;
- `local`, N jobs: N worker processes here (`python -m cnnlib.study.executors worker`); with GPUs
  worker i sees only GPU i mod G, on a CPU each gets cores // N threads;
- `ray`: a Ray task per run, at most N at once, on $RAY_ADDRESS's cluster or a Ray started
  here, asking for one GPU where there are GPUs, else for its share of the CPUs.
Settings: `./run_all.sh --jobs N --executor local|ray`, or $CNNLIB_JOBS, $CNNLIB_EXECUTOR
(and $CNNLIB_THREADS, threads per run), which a JupyterLab kernel sees too.

Ray tasks write into the run cache themselves: on a cluster $CNNLIB_RUNS must be a folder
every node mounts at the same path (each task checks). Shipping results back to the driver
would lose what the cache gives a killed run: epoch checkpoints any node resumes from.

A failed run is reported with its config and error, the others go on, and `run_all` then
raises RunsFailed naming the failed runs. A worker killed by a signal is dispatched again once
(Ray retries once) and resumes from its last epoch checkpoint. An interrupted driver ends its
workers or tasks; a worker whose driver died stops by itself. The run folder's lock
(`runs.run`) keeps two executors from training one run at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlib._checks import check_int
from cnnlib._fileio import check_writable, first_line, open_append, write_text
from cnnlib.data.obtain import data_root as data_root_of
from cnnlib.flags import Parser
from cnnlib.study import cache as runs
from cnnlib.study import locations
from cnnlib.training.config import RunConfig
from cnnlib.training.launch import NPROC_ENV, nproc_from_env

JOBS_ENV = "CNNLIB_JOBS"
EXECUTOR_ENV = "CNNLIB_EXECUTOR"
THREADS_ENV = "CNNLIB_THREADS"
EXECUTORS = ("local", "ray")
KILL_RETRIES = 1  # a worker killed by a signal is dispatched again this many times
LOG_NAME = "train.log"  # in the run folder: every dispatch's output, appended
SHARED_CHECK = ".shared-check"  # in the run cache: written by the driver, read by Ray tasks


class RunsFailed(RuntimeError):
    """Some runs failed; the message names them (the others are finished and cached)."""


def count(text, name: str) -> int:
    """`text` as a whole number >= 1, else ValueError naming `name` and what is allowed."""
    return check_int(name, str(text), 1, text=True)


def executor_name(text, name: str) -> str:
    """`text` if it names an executor, else ValueError naming `name` and the allowed ones."""
    if text not in EXECUTORS:
        raise ValueError(f"{name} '{text}' is not allowed; allowed: {', '.join(EXECUTORS)}")
    return text


@dataclass(frozen=True)
class Settings:
    jobs: int  # runs at once
    executor: str  # local or ray
    threads: int | None  # per run on a CPU; None: cores // jobs


def settings() -> Settings:
    """The executor settings from $CNNLIB_JOBS, $CNNLIB_EXECUTOR and $CNNLIB_THREADS."""
    threads = os.environ.get(THREADS_ENV)
    s = Settings(jobs=count(os.environ.get(JOBS_ENV) or "1", JOBS_ENV),
                 executor=executor_name(os.environ.get(EXECUTOR_ENV) or "local", EXECUTOR_ENV),
                 threads=count(threads, THREADS_ENV) if threads else None)
    exclusive(s.jobs, nproc_from_env(), JOBS_ENV, NPROC_ENV)
    return s


def exclusive(jobs: int, nproc: int, jobs_name: str, nproc_name: str) -> None:
    """Several runs at once and one run on several processes (DDP) do not mix."""
    if jobs > 1 and nproc > 1:
        raise ValueError(f"{jobs_name} {jobs} with {nproc_name} {nproc} is not allowed; choose "
                         "one: several runs at once, or one run on several processes")


@dataclass(frozen=True)
class Job:
    """A run to train: its label, config and run folder."""

    label: str
    config: RunConfig
    path: Path

    @property
    def name(self) -> str:
        c = self.config
        return f"{c.dataset} {self.label or c.model} (seed {c.seed}) {self.path.name}"

    def config_json(self) -> str:
        return json.dumps(self.config.to_dict(), default=str, sort_keys=True)


@dataclass(frozen=True)
class Failure:
    job: Job
    error: str


def run_all(configs: list[tuple[str, RunConfig]], *, profile: str = "", root=None,
            data_root=None, progress: bool = True) -> list[runs.Run]:
    """`runs.run_all(configs, ...)`, with the runs not yet cached trained first by the executor
    the settings choose. Raises RunsFailed, after every other run finished, if any failed."""
    s = settings()
    with _threads(s.threads):
        todo = pending(configs, root, data_root)
        if todo:
            check_writable(locations.runs_root(root), "run cache")  # before any run starts
            execute = _ray if s.executor == "ray" else _local if s.jobs > 1 else _here
            failures = execute(todo, s, profile=profile, root=locations.runs_root(root).resolve(),
                               data_root=data_root, progress=progress)
            if failures:
                names = "; ".join(f"{f.job.name}: {f.error}" for f in failures)
                raise RunsFailed(f"{len(failures)} of {len(todo)} runs failed: {names}")
        return runs.run_all(configs, profile=profile, root=root, data_root=data_root,
                            progress=progress)


def pending(configs, root=None, data_root=None) -> list[Job]:
    """The runs of `configs` not in the cache, each once."""
    out, seen = [], set()
    for label, config in configs:
        path = runs.run_dir(config, root, data_root).resolve()
        if path not in seen and not runs.is_finished(path, config):
            seen.add(path)
            out.append(Job(label, config, path))
    return out


@contextlib.contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_per_run(s: Settings, cores: int | None = None) -> int:
    """$CNNLIB_THREADS, else the cores split between the jobs (at least 1)."""
    return s.threads or max(1, (cores or os.cpu_count() or 1) // s.jobs)


class _Board:
    """The progress lines: one per started and finished run, with the overall count."""

    def __init__(self, total: int, executor: str, progress: bool):
        self.total, self.done, self.failed = total, 0, 0
        self.progress = progress
        self.lock = threading.Lock()
        self.start = {}
        if progress:
            print(f"[{executor}] {total} runs to train", flush=True)

    def say(self, text: str) -> None:
        if self.progress:
            with self.lock:
                print(text, flush=True)

    def started(self, job: Job, where: str) -> None:
        self.start[job.path] = time.monotonic()
        self.say(f"[started] {job.name} on {where}")

    def finished(self, job: Job, failure: Failure | None = None) -> Failure | None:
        with self.lock:
            if failure:
                self.failed += 1
            else:
                self.done += 1
            tally = f"{self.done + self.failed}/{self.total} done, {self.failed} failed"
        seconds = time.monotonic() - self.start.get(job.path, time.monotonic())
        if failure:
            # Always shown: the config and the error are what a failed run leaves behind.
            print(f"[failed] {job.name} after {seconds:.0f} s: {failure.error} ({tally})\n"
                  f"  config: {job.config_json()}\n  log: {job.path / LOG_NAME}", flush=True)
        else:
            self.say(f"[finished] {job.name} in {seconds:.0f} s ({tally})")
        return failure


def _plural(n, word: str) -> str:
    return f"{n} {word}" + ("" if int(n) == 1 else "s")


def _last_log_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else "no output"
    return "no log"


# ---------------------------------------------------------------------------
# one job: this process


def _here(todo: list[Job], s: Settings, *, profile: str, root: Path, data_root,
          progress: bool) -> list[Failure]:
    board = _Board(len(todo), "this process", progress)
    failures = []
    for job in todo:
        board.started(job, f"this process ({_plural(torch.get_num_threads(), 'thread')})")
        try:
            runs.run(job.config, job.label, profile=profile, root=root, data_root=data_root,
                     progress=progress)
        except Exception as e:  # noqa: BLE001 - reported with its config; the other runs go on
            traceback.print_exc()
            failures.append(board.finished(job, Failure(job, f"{type(e).__name__}: "
                                                             f"{first_line(e)}")))
        else:
            board.finished(job)
    return failures


# ---------------------------------------------------------------------------
# local: N worker processes


def _gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(slot: int, s: Settings, gpus: list[str]) -> dict[str, str]:
    """The environment of worker `slot`: its GPU, or its share of the CPU threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_run(s))}
    env.pop(JOBS_ENV, None)  # a worker trains its one run itself
    env.pop(EXECUTOR_ENV, None)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def worker_command(job: Job, *, profile: str, root: Path, data_root=None,
                   threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "cnnlib.study.executors", "worker", job.config_json(),
           "--label", job.label, "--profile", profile, "--root", str(root),
           "--threads", str(threads)]
    if data_root is not None:
        cmd += ["--data-root", str(data_root)]
    return cmd


def _local(todo: list[Job], s: Settings, *, profile: str, root: Path, data_root,
           progress: bool) -> list[Failure]:
    board = _Board(len(todo), f"local, {s.jobs} workers", progress)
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(s.jobs):
        slots.put(slot)
    gpus = _gpu_ids()

    workers = _Workers()

    def one(job: Job) -> Failure | None:
        slot = slots.get()
        try:
            env = worker_env(slot, s, gpus)
            where = f"worker {slot + 1} " + (f"(GPU {env['CUDA_VISIBLE_DEVICES']})" if gpus
                                             else f"({_plural(env['OMP_NUM_THREADS'], 'thread')})")
            cmd = worker_command(job, profile=profile, root=root, data_root=data_root,
                                 threads=int(env["OMP_NUM_THREADS"]))
            for attempt in range(KILL_RETRIES + 1):
                board.started(job, where)
                try:
                    code = workers.train(cmd, env, job.path / LOG_NAME)
                except ValueError as e:  # its log refused (a planted link): this run fails
                    return board.finished(job, Failure(job, first_line(e)))
                if code is None:  # the driver is stopping: no report, no second try
                    return None
                if code == 0:
                    return board.finished(job)
                if code < 0 and attempt < KILL_RETRIES:
                    board.say(f"[killed] {job.name}: worker stopped by signal {-code}; "
                              "dispatched again, it resumes from its last epoch checkpoint")
                    continue
                why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
                error = _last_log_line(job.path / LOG_NAME) if code > 0 else why
                return board.finished(job, Failure(job, error))
        finally:
            slots.put(slot)

    pool = ThreadPoolExecutor(max_workers=s.jobs)
    try:
        return [f for f in pool.map(one, todo) if f]
    except BaseException:  # interrupted (Ctrl-C, a stopped kernel): end the workers too
        workers.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Workers:
    """The worker processes running now. Each starts in a session of its own, so a Ctrl-C
    meant for the driver reaches them only through `stop`, which ends them all (each run
    keeps its last epoch checkpoint); a worker whose driver died stops by itself."""

    def __init__(self):
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopped = False

    def train(self, cmd: list[str], env: dict, log: Path) -> int | None:
        """The worker's exit status (negative: the signal that ended it); None once stopped."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open_append(log) as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}\n")
            out.flush()
            with self.lock:
                if self.stopped:
                    return None
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                self.live.add(proc)
            code = proc.wait()
            with self.lock:
                self.live.discard(proc)
                return None if self.stopped else code

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.live:
                proc.terminate()


def _exit_with_parent(poll: float = 1.0) -> None:
    """End this worker when the process that started it is gone (its driver was killed)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


# ---------------------------------------------------------------------------
# ray: one task per run


def _ray_module():
    try:
        import ray  # optional: the cluster extra, only for --executor ray
    except ImportError:
        raise ValueError(f"{EXECUTOR_ENV} 'ray': the ray package is not installed; install the "
                         "cluster extra: pip install '.[cluster]'") from None
    return ray


def _forwarded_env() -> dict[str, str]:
    """The settings a Ray worker needs from this process (data mirror, locations, profile)."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("CNNLIB_")}
    for k in (JOBS_ENV, EXECUTOR_ENV):
        keep.pop(k, None)
    return keep


def ray_init():
    """Connect to $RAY_ADDRESS, or start Ray on this machine; once per process."""
    ray = _ray_module()
    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):  # a Ray of our own reports nothing anywhere
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": _forwarded_env()})
    return ray


def ray_resources(ray, s: Settings) -> dict:
    """What each task asks for: one GPU where the cluster has GPUs, else its CPU share
    (cluster CPUs // jobs, no more than the largest node has)."""
    total = ray.cluster_resources()
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    largest = int(max(nodes, default=total.get("CPU", 1)))
    threads = min(largest, threads_per_run(s, int(total.get("CPU", 1))))
    if total.get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1, "threads": threads}
    return {"num_cpus": threads, "threads": threads}


def check_shared(root: Path, token: str) -> None:
    """Raise unless `root` is the driver's run cache (the token it wrote there)."""
    try:
        seen = (Path(root) / SHARED_CHECK).read_text().strip()
    except OSError:
        seen = ""
    if seen != token:
        raise RuntimeError(f"run cache {root} is not the driver's on node {socket.gethostname()}: "
                           "put CNNLIB_RUNS on a folder every node mounts at the same path")


def ray_task(config_json: str, label: str, profile: str, root: str, data_root: str,
             threads: int, token: str) -> str:
    """One run in a Ray worker: train it into the shared run cache; returns its folder name.

    The driver names the data root absolutely: a Ray worker starts in a folder of its own.
    """
    check_shared(Path(root), token)
    torch.set_num_threads(threads)
    config = RunConfig.from_dict(json.loads(config_json))
    path = runs.run_dir(config, root, data_root)
    path.mkdir(parents=True, exist_ok=True)
    with open_append(path / LOG_NAME) as out, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} "
              f"(Ray, {threads} threads)", flush=True)
        runs.run(config, label, profile=profile, root=root, data_root=data_root)
    return path.name


def _ray(todo: list[Job], s: Settings, *, profile: str, root: Path, data_root,
         progress: bool) -> list[Failure]:
    ray = ray_init()
    want = ray_resources(ray, s)
    threads = want.pop("threads")
    token = uuid.uuid4().hex
    root.mkdir(parents=True, exist_ok=True)
    write_text(token + "\n", root / SHARED_CHECK)
    task = ray.remote(ray_task).options(max_retries=KILL_RETRIES, retry_exceptions=False, **want)
    where = f"Ray ({'1 GPU' if 'num_gpus' in want else _plural(threads, 'CPU')})"
    board = _Board(len(todo), f"ray, {s.jobs} at once", progress)
    args = (profile, str(root), str(data_root_of(data_root).resolve()), threads, token)
    waiting, running, failures = list(todo), {}, []
    try:
        while waiting or running:
            while waiting and len(running) < s.jobs:
                job = waiting.pop(0)
                running[task.remote(job.config_json(), job.label, *args)] = job
                board.started(job, where)
            [ready], _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ready)
            try:
                name = ray.get(ready)
                error = None if name == job.path.name else (
                    f"trained into {name}, not {job.path.name}: the node's data or code differ")
            except Exception as e:  # noqa: BLE001 - a task's error, or its worker lost twice
                cause = getattr(e, "cause", None) or e
                error = f"{type(cause).__name__}: {first_line(cause)}"
            failure = board.finished(job, Failure(job, error) if error else None)
            if failure:
                failures.append(failure)
    except BaseException:  # interrupted: the tasks stop too (each run keeps its checkpoint)
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    return failures


def main(argv: list[str] | None = None) -> int:
    """`python -m cnnlib.study.executors worker CONFIG_JSON ...`: train one run into the cache."""
    p = Parser(prog="python -m cnnlib.study.executors")
    p.add_argument("command", choices=["worker"])
    p.add_argument("config", help="a RunConfig as JSON")
    p.add_argument("--label", default="")
    p.add_argument("--profile", default="")
    p.add_argument("--root", required=True, help="the run cache")
    p.add_argument("--data-root")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    _exit_with_parent()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = RunConfig.from_dict(json.loads(args.config))
    runs.run(config, args.label, profile=args.profile, root=args.root, data_root=args.data_root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
