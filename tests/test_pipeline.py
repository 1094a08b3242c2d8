"""The notebook loop behind ./run_all.sh (flags, notebook matching, done-markers, real
executions, what it says it will do and did, the measurement caches it reuses) and the data
check of ./run_tests.sh."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from cnnlib import _fileio as fileio
from cnnlib import cli
from cnnlib.study import budget, cache, definitions, locations, measurements, pipeline, plan, readme
from cnnlib.study import compression as compression_study
from cnnlib.study.__main__ import main as study_main
from cnnlib.training import device, loop
from cnnlib.training.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = pipeline.notebooks_in(ROOT / "notebooks")


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("CNNLIB_PROFILE", "CNNLIB_NPROC")}


@pytest.fixture(autouse=True)
def _scratch_cache(tmp_path, monkeypatch):
    """Every test's run cache (and the notebook times kept in it) in a scratch folder."""
    monkeypatch.setenv("CNNLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("CNNLIB_REMEASURE", raising=False)


def test_a_bad_flag_stops_the_command_with_one_line_and_status_2(tmp_path):
    env = {**_clean_env(), "CNNLIB_OUTPUTS": str(tmp_path / "outputs")}
    proc = subprocess.run([sys.executable, "-m", "cnnlib.study.pipeline", "--profile", "smoke",
                           "--only", "09"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()  # one line, no usage, no traceback
    assert line.startswith("run_all: --only '09' matches 0 notebooks; choose one of: 01_baseline, ")
    assert proc.stdout == ""  # nothing started: no data step, no plan
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("flags, message", [
    (["--profile", "huge"], "--profile 'huge' is not allowed; allowed: auto, smoke, cpu, full"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--nproc", "0"], "--nproc: '0' is not allowed; allowed: an integer >= 1"),
    (["--nproc", "two"], "--nproc: 'two' is not allowed; allowed: an integer >= 1"),
    (["--jobs", "0"], "--jobs: '0' is not allowed; allowed: an integer >= 1"),
    (["--executor", "dask"], "--executor 'dask' is not allowed; allowed: local, ray"),
    (["--jobs", "2", "--nproc", "2"], "--jobs 2 with --nproc 2 is not allowed; choose one: "
                                      "several runs at once, or one run on several processes"),
    (["--profile"], "argument --profile: expected one argument"),
    (["--prof", "smoke"], "unrecognized arguments: --prof smoke"),  # no abbreviations
    (["--setup-only"], "unrecognized arguments: --setup-only"),  # the shell script's flag
    (["--verbose=yes"], "argument --verbose: ignored explicit argument 'yes'"),
    (["--remeasure=1"], "argument --remeasure: ignored explicit argument '1'"),
])
def test_parse_args_rejects(flags, message, capsys, monkeypatch):
    for name in ("CNNLIB_NPROC", "CNNLIB_JOBS", "CNNLIB_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as stop:
        pipeline.parse_args(flags)
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"run_all: {message}\n"


def test_parse_args_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CNNLIB_PROFILE", "smoke")
    monkeypatch.setenv("CNNLIB_NPROC", "3")
    args = pipeline.parse_args([])
    assert (args.profile, args.nproc, args.only, args.force) == ("smoke", 3, None, False)
    args = pipeline.parse_args(["--profile=cpu", "--nproc", "2", "--only", "03", "--force"])
    assert (args.profile, args.nproc, args.only, args.force) == ("cpu", 2, "03", True)
    monkeypatch.setenv("CNNLIB_NPROC", "1")
    monkeypatch.setenv("CNNLIB_JOBS", "4")
    monkeypatch.setenv("CNNLIB_EXECUTOR", "ray")
    args = pipeline.parse_args([])
    assert (args.jobs, args.executor) == (4, "ray")
    args = pipeline.parse_args(["--jobs", "2", "--executor", "local"])
    assert (args.jobs, args.executor) == (2, "local")
    monkeypatch.setenv("CNNLIB_PROFILE", "tiny")
    with pytest.raises(SystemExit):
        pipeline.parse_args([])


@pytest.mark.parametrize("only", ["01", "01_baseline", "01_baseline.ipynb",
                                  "notebooks/01_baseline.ipynb", str(NOTEBOOKS[0])])
def test_only_names_a_notebook_by_number_name_or_path(only):
    assert pipeline.select(NOTEBOOKS, only) == [ROOT / "notebooks" / "01_baseline.ipynb"]


def test_only_without_a_match_or_with_two_is_refused(tmp_path):
    assert pipeline.select(NOTEBOOKS, None) == NOTEBOOKS
    assert pipeline.select(NOTEBOOKS, "03")[0].stem == "03_depth_study"
    for unknown in ("0", "09", "baseline", "01_base"):
        with pytest.raises(ValueError, match=f"--only '{unknown}' matches 0 notebooks"):
            pipeline.select(NOTEBOOKS, unknown)
    for name in ("01_a", "01_b", "02_c"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    (tmp_path / "scratch.ipynb").write_text("{}")  # not NN_name: never a study notebook
    found = pipeline.notebooks_in(tmp_path)
    assert [p.stem for p in found] == ["01_a", "01_b", "02_c"]
    with pytest.raises(ValueError, match="'01' matches 2 notebooks; choose one of: 01_a, 01_b, 02_c"):
        pipeline.select(found, "01")
    assert pipeline.select(found, "01_b") == [tmp_path / "01_b.ipynb"]


def test_stamp_holds_profile_notebook_and_sources(tmp_path):
    nb = tmp_path / "01_x.ipynb"
    nb.write_text("one")
    first = pipeline.stamp("smoke", nb, "abc")
    assert first.startswith("profile=smoke notebook=") and first.endswith(" cnnlib=abc")
    assert pipeline.stamp("cpu", nb, "abc") != first
    assert pipeline.stamp("smoke", nb, "abd") != first
    nb.write_text("two")
    assert pipeline.stamp("smoke", nb, "abc") != first
    assert len(pipeline.sources_hash()) == 16


def test_is_done_needs_the_report_and_the_same_stamp(tmp_path):
    marker, report = tmp_path / ".01_x.done", tmp_path / "01_x.html"
    assert not pipeline.is_done(marker, report, "s")
    marker.write_text("s\n")
    assert not pipeline.is_done(marker, report, "s")  # report missing
    report.write_text("<html/>")
    assert pipeline.is_done(marker, report, "s")
    assert not pipeline.is_done(marker, report, "t")


def _notebook(path: Path, *cells: tuple[str, list[str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in cells]
    nbformat.write(nb, path)
    return path


def test_notebooks_execute_export_and_skip_when_done(tmp_path, capsys):
    nb = _notebook(tmp_path / "01_tiny.ipynb",
                   ('PROFILE = "auto"', ["parameters"]),
                   ('print("profile is", PROFILE)', []),
                   ('print("a training log line")', [pipeline.REMOVE_OUTPUT_TAG]))
    out = tmp_path / "outputs"
    assert pipeline.run_notebooks([nb], out, "smoke") == 0
    executed = nbformat.read(out / "notebooks" / "01_tiny.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "profile is smoke" in printed and "a training log line" in printed
    # written atomically through a temporary file, yet naming itself, and nothing left behind
    assert executed.metadata.papermill.output_path == str(out / "notebooks" / "01_tiny.ipynb")
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == [".01_tiny.done",
                                                                     "01_tiny.ipynb"]
    report = (out / "reports" / "01_tiny.html").read_text()
    assert "profile is smoke" in report and "<title>01_tiny</title>" in report
    assert "a training log line" not in report  # tagged remove_output
    assert "print(" not in report  # no code in the report
    marker = out / "notebooks" / ".01_tiny.done"
    assert marker.read_text() == pipeline.stamp("smoke", nb, pipeline.sources_hash()) + "\n"
    assert "(1/1) 01_tiny: done in" in capsys.readouterr().out

    written = marker.stat().st_mtime_ns
    assert pipeline.run_notebooks([nb], out, "smoke") == 0
    assert "01_tiny: already done for profile smoke, skipped" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns == written

    assert pipeline.run_notebooks([nb], out, "cpu") == 0  # another profile: executed again
    assert "01_tiny: executing (profile cpu)" in capsys.readouterr().out
    assert "profile is cpu" in (out / "reports" / "01_tiny.html").read_text()
    assert "profile=cpu " in marker.read_text()


def test_a_failing_notebook_stops_with_status_1_and_no_marker(tmp_path, capsys):
    ok = _notebook(tmp_path / "01_ok.ipynb", ('print("fine")', []))
    bad = _notebook(tmp_path / "02_bad.ipynb", ('PROFILE = "auto"', ["parameters"]),
                    ('raise RuntimeError("broken on purpose")', []))
    never = _notebook(tmp_path / "03_never.ipynb", ('print("unreached")', []))
    out = tmp_path / "outputs"
    assert pipeline.run_notebooks([ok, bad, never], out, "smoke") == 1
    err = capsys.readouterr().err
    assert "RuntimeError: broken on purpose" in err
    lines = [line for line in err.splitlines() if line.startswith("[run_all]")]
    assert lines == [
        "[run_all] FAILED: notebook 02_bad (profile smoke) stopped with an error.",
        f"[run_all] The traceback is above; the executed notebook is {out}/notebooks/02_bad.ipynb.",
        "[run_all] Fix it and run ./run_all.sh again: finished runs come from the cache.",
    ]
    assert (out / "notebooks" / ".01_ok.done").is_file()
    assert (out / "notebooks" / "02_bad.ipynb").is_file()
    assert not (out / "notebooks" / ".02_bad.done").exists()
    assert not (out / "notebooks" / "03_never.ipynb").exists()


def test_the_data_check_of_run_tests_never_downloads(synthetic_root, tmp_path, monkeypatch, capsys):
    """`cnnlib data --no-download` (run_tests.sh's check): 0 with the data, else 2 and one line."""
    monkeypatch.delenv("CNNLIB_DATA_MIRROR", raising=False)
    assert cli.main(["--data-root", str(synthetic_root), "data", "--no-download"]) == 0
    assert "cifar100: train 1000, test 200, 100 classes" in capsys.readouterr().out
    assert cli.main(["--data-root", str(tmp_path), "data", "--no-download"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("cnnlib data: error: cifar10 not found in ")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing fetched


# -- what the pipeline says, and the caches it reuses ---------------------------------------------


@pytest.mark.parametrize("value", ["yes", "2", "true", " 1"])
def test_a_bad_remeasure_variable_stops_the_command_with_one_line(value, monkeypatch, capsys):
    monkeypatch.setenv("CNNLIB_REMEASURE", value)
    with pytest.raises(SystemExit) as stop:
        pipeline.parse_args(["--profile", "smoke"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"run_all: CNNLIB_REMEASURE: {value!r} is not allowed; "
                                       "allowed: 0, 1\n")
    with pytest.raises(ValueError, match="CNNLIB_REMEASURE: .* allowed: 0, 1$"):
        measurements.remeasure_asked()  # a kernel started by hand reads it the same way


def test_remeasure_comes_from_the_flag_or_the_variable(monkeypatch):
    assert (pipeline.parse_args([]).remeasure, pipeline.parse_args([]).verbose) == (False, False)
    args = pipeline.parse_args(["--remeasure", "--verbose"])
    assert (args.remeasure, args.verbose) == (True, True)
    for value, expected in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("CNNLIB_REMEASURE", value)
        assert pipeline.parse_args([]).remeasure is expected


def test_papermills_cell_lines_and_kernel_warnings_only_with_verbose(tmp_path, capfd):
    nb = _notebook(tmp_path / "01_tiny.ipynb",
                   ('PROFILE = "auto"', ["parameters"]),
                   ('import sys\nprint("profile is", PROFILE)\n'
                    'print("a progress line", file=sys.stderr)', []),
                   ("6 * 7", []))
    pipeline.execute(nb, tmp_path / "quiet.ipynb", "smoke")
    out, err = capfd.readouterr()
    assert "profile is smoke" in out and "a progress line" in err  # what the cells print
    log = out + err
    for noise in ("Executing Cell", "Ending Cell", "Input Notebook", "[IPKernelApp]", "42"):
        assert noise not in log, noise
    executed = nbformat.read(tmp_path / "quiet.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["data"]["text/plain"] == "42"  # kept in the notebook

    pipeline.execute(nb, tmp_path / "verbose.ipynb", "smoke", verbose=True)
    out, err = capfd.readouterr()
    assert "Executing Cell 2---" in err and "Ending Cell 3---" in err
    assert "profile is smoke" in err and "42" in err  # every output, through papermill's log


def test_a_quiet_notebook_gets_a_line_with_the_time_left(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "HEARTBEAT_SECONDS", 0.2)
    nb = _notebook(tmp_path / "01_slow.ipynb",
                   ('import sys, time\nprint("\\rstep 1", end="", file=sys.stderr)\n'
                    'time.sleep(4)\nprint("done")', []))
    work = budget.Work("01_slow", frozenset(), frozenset(), 0, 0.0, {"other": 3600.0})
    assert pipeline.run_notebooks([nb], tmp_path / "out", "smoke", work={"01_slow": work}) == 0
    out = capsys.readouterr().out
    assert "(1/1) 01_slow: executing (profile smoke), about 60 min expected" in out
    beats = [line for line in out.splitlines() if line.startswith("[run_all] 01_slow: running for")]
    assert beats and all("left of the 60 min expected" in line for line in beats)
    assert "(1/1) 01_slow: done in" in out and "(0 runs trained, 0 measurements taken)" in out


def test_work_between_counts_runs_and_measurements_written_in_the_span(tmp_path):
    root = tmp_path / "runs"
    t0 = time.time()
    for name, finished, seconds in (("a", t0 + 100, 60.0), ("b", t0 + 130, 60.0),
                                    ("old", t0 - 500, 60.0)):
        fileio.write_json({"finished": finished, "call_seconds": seconds},
                          root / f"cifar10-baseline-{name}" / "result.json")
    measurements.measured("lr_find", {"run": "x", "steps": 3}, lambda: {"suggested_lr": 0.1},
                   root=root)
    done = cache.work_between(t0, t0 + 200, root)
    # a ran 40-100, b 70-130: side by side they took 90 s of the span, not 120
    assert (done.runs, done.train_seconds, done.measurements) == (2, pytest.approx(90.0), 1)
    assert cache.work_between(t0 + 300, t0 + 400, root).runs == 0


def test_the_last_line_separates_this_run_from_what_the_study_cost():
    df = pd.DataFrame({"wall_seconds": [7.4 * 3600 / 138] * 138,
                       "hardware": ["AMD EPYC, 2 threads"] * 138})
    line = pipeline.last_line(31 * 60, cache.Work(), 6, readme.training_time(df))
    assert line == ("[run_all] this run: 31 min (0 runs trained, 0 measurements taken, 6 reports "
                    "rebuilt); the study's 138 recorded runs cost 7.4 h of training on AMD EPYC, "
                    "2 threads")


def _record(config: RunConfig) -> None:
    """The run of `config` in the run cache as a record (a result.json only)."""
    path = cache.run_dir(config)
    fileio.write_json({"run_key": path.name, "config": config.to_dict()}, path / "result.json")


@pytest.fixture
def smoke_plan_here(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA_ROOT", str(synthetic_root))
    monkeypatch.setattr(budget, "_measure", lambda *a: 1000.0)  # the timing is not the point
    return tmp_path / "runs"


def test_the_plan_of_a_recorded_profile_says_nothing_to_train(smoke_plan_here):
    """Every smoke run recorded, and the range tests and compressed models they need: the plan
    says 0 to train; what the notebooks take besides, once measured here, comes from then."""
    lines = plan.plan_lines("smoke")
    unique = len({c.key() for s in definitions.STUDIES.values() for _, c in s.runs("smoke", None)})
    # 3 optimizers at the rates the grid chooses and 2 schedules (Nesterov at its stand-in rate
    # is notebook 01's reference), 1 early-stopped run whose rule waits for the full run's
    # history
    assert lines[-1].startswith(f"total: {unique} runs, 0 recorded, {unique - 6} to train, "
                                "6 waiting for measurements; about ")
    assert "besides training not yet measured on this machine" in lines[0]
    steps = definitions.lr_find_steps("smoke")
    for config in definitions.lr_find_configs("smoke").values():
        measurements.lr_find(config, steps=steps, progress=False)
    runs = {c.key(): c for s in definitions.STUDIES.values() for _, c in s.runs("smoke", None)}
    for config in runs.values():
        _record(config)
    settings = definitions.compression_settings("smoke")
    for label in ("reference", "best"):
        config = dict(definitions.baseline_runs("smoke", datasets=("cifar10",)))[label]
        what = compression_study._what(label, cache.run_key(config, cache.data_fingerprint(
            "cifar10")), settings)
        measurements.measured("compression", {**what, "weights": "w"}, lambda: [])
    lines = plan.plan_lines("smoke")
    unique = len(runs)
    assert lines[-1].startswith(f"total: {unique} runs, {unique} recorded, 0 to train; no "
                                "training; evaluation, figures, range tests, compressed models "
                                "not yet measured on this machine; on ")
    assert lines[2].startswith("03_depth_study: ") and "0 to train" in lines[2]
    assert lines[2].endswith("; range tests recorded")
    assert lines[4].endswith("; compressed models recorded")
    assert plan.plan_lines("smoke", remeasure=True)[2].endswith("; 4 range tests to measure")

    for name in definitions.STUDIES:
        budget.record_notebook_seconds("smoke", name, locations.notebook_seconds_path(), 30.0,
                                       120.0 if definitions.STUDIES[name].measures else None)
    lines = plan.plan_lines("smoke")
    assert lines[0].endswith("; about 30 s besides training")
    assert lines[-1].startswith(f"total: {unique} runs, {unique} recorded, 0 to train; no "
                                "training; about 4 min of evaluation, figures, range tests, "
                                "compressed models; on ")
    again = plan.plan_lines("smoke", remeasure=True)  # measured again: as long as before
    assert again[2].endswith("; about 2 min besides training; 4 range tests to measure")
    only = plan.plan_lines("smoke", notebooks=["04_interpretability"])
    assert [line.split(":")[0] for line in only] == ["04_interpretability", "total"]


@pytest.mark.parametrize("there,here", [(True, False), (False, True)])
def test_the_plan_says_why_records_of_another_precision_do_not_count(smoke_plan_here,
                                                                     monkeypatch, there, here):
    """Runs recorded where `auto` resolved to bf16 have other keys where it resolves to fp32
    (and the reverse): the plan counts them to train and says why, in its own line."""
    configs = {c.key(): c for _, c in definitions.STUDIES["01_baseline"].runs("smoke", None)}
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: there)
    for config in configs.values():
        _record(config)
    assert plan.plan_lines("smoke", notebooks=["01_baseline"])[0].startswith(
        f"01_baseline: {len(configs)} runs, {len(configs)} recorded, 0 to train")
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: here)
    lines = plan.plan_lines("smoke", notebooks=["01_baseline"])
    assert lines[0].startswith(f"01_baseline: {len(configs)} runs, 0 recorded, "
                               f"{len(configs)} to train")
    then, now = ("bf16", "fp32") if there else ("fp32", "bf16")
    where = ("CUDA, or a CPU with native bf16: AVX512-BF16 or AMX-BF16" if there
             else "a CPU without native bf16")
    assert lines[2] == (f"not counted: the run cache holds {len(configs)} of these "
                        f"{len(configs)} runs in {then}, trained where `auto` resolves to {then} "
                        f"({where}); here it resolves to {now} and the cache keys a run by its "
                        "precision, so they would train again. On such a machine this plan finds "
                        "them recorded.")
    assert len(lines) == 3
    monkeypatch.setattr(device, "native_bf16_cpu", lambda: there)  # back where they trained
    assert len(plan.plan_lines("smoke", notebooks=["01_baseline"])) == 2


def test_another_machine_plans_the_runs_of_the_pinned_budgets(smoke_plan_here, tmp_path,
                                                             monkeypatch, capsys):
    """Notebook 06's budgets become epochs from the speeds of the machine the run cache's budgets
    are pinned to: another machine finds the same runs (so the recorded ones) without timing."""
    speeds = locations.speeds_path()

    def keys(store) -> list[str]:
        return [c.key() for _, c in plan.plan("smoke", store)["06_architectures"][1]]

    here = keys(speeds)
    assert budget.budget_machine(speeds) == budget.hardware("cpu")
    monkeypatch.setattr(budget, "hardware", lambda device="cpu": "Other CPU, 2 threads, torch 2")
    monkeypatch.setattr(budget, "_measure", lambda *a: 7000.0)  # 7x as fast
    assert keys(tmp_path / "unpinned.json") != here  # its own budgets would be other runs
    assert keys(speeds) == here and budget.budget_machine(speeds) != "Other CPU, 2 threads, torch 2"
    assert study_main(["plan", "--profile", "smoke"]) == 0
    capsys.readouterr()
    table = fileio.read_json(speeds)  # a network the pinned machine never timed
    fileio.write_json({k: v for k, v in table.items() if "densenet" not in k}, speeds)
    assert study_main(["plan", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: budget: densenet_bc ")
    assert "never timed on " in err[0] and "move " in err[0]


def test_range_tests_are_measured_once_and_again_when_asked(smoke_plan_here, synthetic_root,
                                                             monkeypatch):
    calls = []
    real = loop.lr_find
    monkeypatch.setattr(loop, "lr_find", lambda *a, **k: calls.append(a) or real(*a, **k))
    config = RunConfig(dataset="cifar10", model="baseline", model_options={"width": 4},
                       batch_size=32, train_subset=128, val_size=0, device="cpu")
    first = measurements.lr_find(config, steps=4, progress=False)
    assert len(calls) == 1 and len(first["lrs"]) == 4
    files = sorted((smoke_plan_here / cache.MEASUREMENTS).iterdir())
    written = [f.stat().st_mtime_ns for f in files]
    assert measurements.lr_find(config, steps=4, progress=False) == first  # from the cache
    assert len(calls) == 1 and [f.stat().st_mtime_ns for f in files] == written
    assert measurements.recorded_lr_find(config, 4) == first
    assert measurements.recorded_lr_find(config, 5) is None  # another number of batches: not recorded
    assert measurements.lr_find(config, steps=4, remeasure=True, progress=False) == first
    monkeypatch.setenv("CNNLIB_REMEASURE", "1")
    measurements.lr_find(config, steps=4, progress=False)
    assert len(calls) == 3
