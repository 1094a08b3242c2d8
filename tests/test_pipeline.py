"""The notebook loop behind ./run_all.sh (flags, notebook matching, done-markers, real
executions) and the data check of ./run_tests.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cnnlib import cli
from cnnlib.study import pipeline

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = pipeline.notebooks_in(ROOT / "notebooks")


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("CNNLIB_PROFILE", "CNNLIB_NPROC")}


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
