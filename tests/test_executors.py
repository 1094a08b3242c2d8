"""Many runs at once (cnnlib.study.executors): local worker processes and Ray tasks fill the run cache
with the same runs as one process; failed runs, killed workers and two executors at once, all
with real processes (and a real local Ray with 2 CPUs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from cnnlib import _fileio as fileio
from cnnlib.data.cifar import load_cifar
from cnnlib.study import cache as runs
from cnnlib.study import definitions as studies
from cnnlib.study import executors, pipeline
from cnnlib.study.table import Row
from cnnlib.training.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
EXECUTORS = [(1, "local"), (2, "local"), (2, "ray")]  # (jobs, executor); (1, local) = sequential


def _config(**changes) -> RunConfig:
    base = dict(dataset="cifar10", model="baseline", model_options={"width": 4, "depth": 2},
                epochs=2, batch_size=32, train_subset=96, val_size=64, test_subset=100,
                augment="crop+flip", device="cpu", lr=0.05)
    return RunConfig(**{**base, **changes})


CONFIGS = [("a", _config()), ("b", _config(seed=1)), ("c", _config(dataset="cifar100"))]


SLOW = [("slow", _config(epochs=12, train_subset=0, val_size=100))]


def _worker_of(path: Path) -> int:
    """The pid of the worker training in run folder `path`, once it saved an epoch."""
    deadline = time.monotonic() + 120
    while not ((path / "last.pt").exists() and fileio.lock_holder(path).isdigit()):
        assert time.monotonic() < deadline, "the worker never saved an epoch checkpoint"
        time.sleep(0.02)
    return int(fileio.lock_holder(path))


def _gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def use(monkeypatch):
    """use(jobs, executor): the settings run_all reads, one thread per run (results match
    bit for bit only at equal thread counts)."""
    def set_env(jobs: int, executor: str, threads: int | None = 1):
        monkeypatch.setenv(executors.JOBS_ENV, str(jobs))
        monkeypatch.setenv(executors.EXECUTOR_ENV, executor)
        if threads:
            monkeypatch.setenv(executors.THREADS_ENV, str(threads))
        else:
            monkeypatch.delenv(executors.THREADS_ENV, raising=False)
    return set_env


def _table(found: list[runs.Run]) -> pd.DataFrame:
    """The results.csv rows of the runs, without the columns of times, allowed to differ."""
    return pd.DataFrame([Row.from_run(r, "study").as_dict() for r in found]).drop(
        columns=["wall_seconds", "assess_seconds"])


@pytest.mark.parametrize("jobs, executor", EXECUTORS[1:], ids=["local", "ray"])
def test_executors_give_the_sequential_results(jobs, executor, synthetic_root, tmp_path, use,
                                               capsys):
    use(1, "local")
    sequential = executors.run_all(CONFIGS, profile="smoke", root=tmp_path / "seq",
                                   data_root=synthetic_root)
    capsys.readouterr()
    use(jobs, executor)
    parallel = executors.run_all(CONFIGS, profile="smoke", root=tmp_path / executor,
                                 data_root=synthetic_root)
    out = capsys.readouterr().out
    pd.testing.assert_frame_equal(_table(parallel), _table(sequential))
    for r in parallel:  # trained by the executor; the driver only read the cache
        assert f"[started] {r.config.dataset} {r.label} (seed {r.config.seed}) {r.path.name}" \
            in out
        assert f"[cached] {r.label}: {r.path.name}" in out
        assert "[training]" in (r.path / executors.LOG_NAME).read_text()
    assert out.count("[finished]") == 3 and "(3/3 done, 0 failed)" in out

    capsys.readouterr()  # a second call finds everything cached: nothing dispatched
    executors.run_all(CONFIGS, profile="smoke", root=tmp_path / executor,
                      data_root=synthetic_root)
    assert "[started]" not in capsys.readouterr().out


def _real_data() -> bool:
    try:
        for name in ("cifar10", "cifar100"):
            load_cifar(name, download=False)
    except (OSError, ValueError):
        return False
    return True


@pytest.mark.real_data
def test_the_smoke_study_gives_one_results_csv_whatever_the_executor(tmp_path, use):
    """Notebook 01's smoke runs on the real data: sequential, 2 local workers and a local Ray
    with 2 CPUs write the same results.csv, wall time aside (one thread per run in all three)."""
    if not _real_data():
        pytest.skip("real CIFAR-10/100 not available: set CNNLIB_DATA_MIRROR")
    configs = studies.baseline_runs("smoke")
    tables = []
    for jobs, executor in EXECUTORS:
        use(jobs, executor)
        found = executors.run_all(configs, profile="smoke", root=tmp_path / f"{executor}{jobs}",
                                  progress=False)
        csv = tmp_path / f"results-{executor}{jobs}.csv"
        _table(found).to_csv(csv, index=False)
        tables.append(csv.read_text())
    assert len(configs) == 4 and tables[1] == tables[0] and tables[2] == tables[0]


@pytest.mark.parametrize("jobs, executor", EXECUTORS, ids=["one", "local", "ray"])
def test_a_failed_run_is_reported_and_the_others_finish(jobs, executor, synthetic_root, tmp_path,
                                                         use, capsys):
    use(jobs, executor)
    bad = ("bad", _config(model_options={"bogus": 1}))  # valid config, fails when training
    with pytest.raises(executors.RunsFailed) as failed:
        executors.run_all([*CONFIGS[:2], bad], profile="smoke", root=tmp_path,
                          data_root=synthetic_root)
    bad_dir = runs.run_dir(bad[1], tmp_path, synthetic_root)
    message = str(failed.value)
    assert message.startswith(f"1 of 3 runs failed: cifar10 bad (seed 0) {bad_dir.name}: ")
    assert "unknown option 'bogus'" in message and "\n" not in message
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("[failed]")]
    assert "unknown option 'bogus'" in line and " done, 1 failed)" in line
    assert "(3/3 done, 1 failed)" in out
    assert '"model_options": {"bogus": 1}' in out  # the config, reported with the error
    for _, config in CONFIGS[:2]:
        assert runs.is_finished(runs.run_dir(config, tmp_path, synthetic_root))
    assert not runs.is_finished(bad_dir)


def test_a_planted_log_link_fails_its_run_and_leaves_its_target_alone(synthetic_root, tmp_path,
                                                                     use):
    """A worker's train.log is appended to without following a link: one planted in a shared
    run cache fails that run in one line, and the file it points at is untouched."""
    use(2, "local")
    precious = tmp_path / "important"
    precious.write_text("keep me\n")
    folder = runs.run_dir(CONFIGS[0][1], tmp_path / "cache", synthetic_root)
    folder.mkdir(parents=True)
    (folder / executors.LOG_NAME).symlink_to(precious)
    with pytest.raises(executors.RunsFailed) as failed:
        executors.run_all(CONFIGS[:2], profile="smoke", root=tmp_path / "cache",
                          data_root=synthetic_root, progress=False)
    message = str(failed.value)
    assert message.startswith("1 of 2 runs failed: ") and "\n" not in message
    assert f"{executors.LOG_NAME}: is a symbolic link, refused" in message
    assert precious.read_text() == "keep me\n"
    assert runs.is_finished(runs.run_dir(CONFIGS[1][1], tmp_path / "cache", synthetic_root))


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_killed_worker_resumes_its_run_from_the_last_epoch(executor, synthetic_root, tmp_path,
                                                            use, capsys):
    use(2, executor)
    config = SLOW[0][1]
    path = runs.run_dir(config, tmp_path / "runs", synthetic_root)
    found = {}
    driver = threading.Thread(target=lambda: found.update(run=executors.run_all(
        SLOW, profile="smoke", root=tmp_path / "runs", data_root=synthetic_root)))
    driver.start()
    worker = _worker_of(path)
    assert worker != os.getpid()
    os.kill(worker, signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive()
    [finished] = found["run"]
    log = (path / executors.LOG_NAME).read_text()
    assert log.count("[training]") == 1 and log.count("[resuming]") == 1, log
    assert len(finished.history) == 12
    said = f"[killed] cifar10 slow (seed 0) {path.name}: worker stopped by signal 9"
    assert (said in capsys.readouterr().out) == (executor == "local")  # Ray retries silently

    use(1, "local")  # resumed from epoch k: the same result as without the kill
    uninterrupted = executors.run_all(SLOW, profile="smoke",
                                      root=tmp_path / "again", data_root=synthetic_root)
    assert finished.result["test"] == uninterrupted[0].result["test"]


def _driver(configs: str, root: Path, data_root: Path) -> subprocess.Popen:
    """A process calling executors.run_all(<configs of this module>) with 2 local workers."""
    # SIGINT raises KeyboardInterrupt as in a terminal, even where the test runs in the
    # background (which starts processes with SIGINT ignored).
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"from cnnlib.study import executors; from test_executors import {configs}; "
            f"r = executors.run_all({configs}, root=sys.argv[1], data_root=sys.argv[2]); "
            "print('ACC', [x.test_acc for x in r])")
    env = {**os.environ, executors.JOBS_ENV: "2", executors.EXECUTOR_ENV: "local",
           executors.THREADS_ENV: "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, str(root), str(data_root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_stopped_driver_ends_its_workers_and_the_run_resumes_later(sig, synthetic_root,
                                                                     tmp_path, use):
    """Ctrl-C: the driver ends its workers and dispatches nothing again; killed outright, its
    workers notice and stop by themselves. Either way the run resumes on the next call."""
    path = runs.run_dir(SLOW[0][1], tmp_path, synthetic_root)
    driver = _driver("SLOW", tmp_path, synthetic_root)
    worker = _worker_of(path)
    driver.send_signal(sig)
    out = driver.communicate(timeout=60)[0]
    assert driver.returncode != 0
    assert _gone(worker), "the worker outlived its driver"
    assert out.count("[started]") == 1 and "[killed]" not in out, out
    assert not runs.is_finished(path)
    use(1, "local")
    [finished] = executors.run_all(SLOW, root=tmp_path, data_root=synthetic_root)
    assert len(finished.history) == 12
    assert (path / executors.LOG_NAME).read_text().count("[training]") == 1


def test_two_executors_at_once_train_each_run_once(synthetic_root, tmp_path):
    """Two drivers (two notebooks, two machines on one cache) ask for the same runs together."""
    procs = [_driver("CONFIGS", tmp_path, synthetic_root) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    accs = [next(x for x in out.splitlines() if x.startswith("ACC")) for out in outs]
    assert accs[0] == accs[1]
    for _, config in CONFIGS:
        log = (runs.run_dir(config, tmp_path, synthetic_root) / executors.LOG_NAME).read_text()
        assert log.count("[training]") == 1, log


@pytest.mark.parametrize("name, value, message", [
    (executors.JOBS_ENV, "0", "CNNLIB_JOBS: '0' is not allowed; allowed: an integer >= 1"),
    (executors.EXECUTOR_ENV, "dask", "CNNLIB_EXECUTOR 'dask' is not allowed; allowed: local, ray"),
    (executors.THREADS_ENV, "x", "CNNLIB_THREADS: 'x' is not allowed; allowed: an integer >= 1"),
    ("CNNLIB_NPROC", "2", "CNNLIB_JOBS 3 with CNNLIB_NPROC 2 is not allowed; choose one: "
                          "several runs at once, or one run on several processes"),
])
def test_bad_settings_stop_before_any_run(name, value, message, monkeypatch, tmp_path):
    monkeypatch.setenv(executors.JOBS_ENV, "3")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as bad:
        executors.run_all(CONFIGS, root=tmp_path)
    assert str(bad.value) == message
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_workers_get_one_gpu_each_or_their_share_of_the_cores(monkeypatch):
    monkeypatch.delenv(executors.THREADS_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # what the driver was given
    monkeypatch.setenv(executors.JOBS_ENV, "3")
    monkeypatch.setenv(executors.EXECUTOR_ENV, "local")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    s = executors.Settings(jobs=3, executor="local", threads=None)
    pinned = [executors.worker_env(slot, s, ["2", "5"])["CUDA_VISIBLE_DEVICES"] for slot in range(4)]
    assert pinned == ["2", "5", "2", "5"]  # one GPU each, the driver's GPUs in turn
    env = executors.worker_env(1, s, ["2", "5"])
    assert executors.JOBS_ENV not in env and executors.EXECUTOR_ENV not in env
    assert env["OMP_NUM_THREADS"] == "2"  # 8 cores // 3 jobs
    assert executors.threads_per_run(s, cores=2) == 1
    assert executors.threads_per_run(executors.Settings(2, "local", 3), cores=2) == 3
    on_cpu = executors.worker_env(0, s, [])  # no GPUs: the driver's setting, the thread share
    assert on_cpu["CUDA_VISIBLE_DEVICES"] == "2,5" and on_cpu["OMP_NUM_THREADS"] == "2"


class _Cluster:
    """What ray_resources reads of a cluster: its totals and its nodes."""

    def __init__(self, nodes: list[dict]):
        self._nodes = [{"Alive": True, "Resources": n} for n in nodes]

    def cluster_resources(self):
        total = {}
        for n in self._nodes:
            for k, v in n["Resources"].items():
                total[k] = total.get(k, 0) + v
        return total

    def nodes(self):
        return self._nodes


def test_ray_tasks_ask_for_a_gpu_or_a_cpu_share():
    s = executors.Settings(jobs=8, executor="ray", threads=None)
    assert executors.ray_resources(_Cluster([{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}]), s) \
        == {"num_gpus": 1, "num_cpus": 1, "threads": 4}
    assert executors.ray_resources(_Cluster([{"CPU": 32}, {"CPU": 32}]), s) == \
        {"num_cpus": 8, "threads": 8}
    one = executors.Settings(jobs=1, executor="ray", threads=None)
    assert executors.ray_resources(_Cluster([{"CPU": 4}, {"CPU": 4}]), one)["num_cpus"] == 4


def test_a_ray_task_refuses_a_run_cache_it_does_not_share(tmp_path):
    (tmp_path / executors.SHARED_CHECK).write_text("driver-token\n")
    executors.check_shared(tmp_path, "driver-token")
    for root in (tmp_path, tmp_path / "elsewhere"):
        with pytest.raises(RuntimeError) as stop:
            executors.check_shared(root, "another-token")
        assert f"run cache {root} is not the driver's on node " in str(stop.value)
        assert "every node mounts at the same path" in str(stop.value)


def test_the_pipeline_names_failed_runs_in_one_line(tmp_path, capsys):
    nb = tmp_path / "01_runs.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(
        "from cnnlib.study import executors\n"
        "raise executors.RunsFailed('1 of 2 runs failed: cifar10 x (seed 0) k: ValueError: no')")]
    nbformat.write(notebook, nb)
    assert pipeline.run_notebooks([nb], tmp_path / "out", "smoke") == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert err == ["[run_all] FAILED: notebook 01_runs: 1 of 2 runs failed: cifar10 x (seed 0) k: "
                   "ValueError: no"]
