"""The results schema (`table.Row`), its one reader and writer, the one mean ± sd format,
reading the studies' rows once, and atomic writes of what the pipeline writes."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import nbformat
import pandas as pd
import pytest

from cnnlib import _fileio as fileio
from cnnlib.study import cache as runs
from cnnlib.study import pipeline, readme, report, stats
from cnnlib.study import table as results
from cnnlib.training.config import RunConfig
from cnnlib.viz import _figure

OLD_COLUMNS = ("study, label, dataset, model, options, augmentations, seed, epochs, epochs_run, "
               "best_epoch, optimizer, lr, schedule, weight_decay, label_smoothing, batch_size, "
               "train_images, val_size, train_acc, val_acc, test_acc, test_loss, test_top5, tta, "
               "precision, wall_seconds, device, hardware, profile, commit, run_key").split(", ")


def _config(**changes) -> RunConfig:
    base = dict(dataset="cifar10", model="baseline", model_options={"width": 4, "depth": 2},
                epochs=1, batch_size=32, train_subset=96, val_size=64, test_subset=100,
                augment="crop+flip", device="cpu", lr=0.05)
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def two_runs(synthetic_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("runs")
    return [runs.run(_config(**changes), "tiny", profile="smoke", root=cache,
                     data_root=synthetic_root, progress=False)
            for changes in ({}, {"val_size": 0, "seed": 1})]


def test_the_columns_are_the_fields_of_row_in_the_old_order_then_the_assessment():
    assert results.COLUMNS == OLD_COLUMNS + results.ASSESS_COLUMNS
    assert OLD_COLUMNS == [f.name for f in dataclasses.fields(results.Row)][:-1]
    assert "corruption_acc" in results.ASSESS_COLUMNS and "dup_free_acc" in results.ASSESS_COLUMNS


def test_row_from_run_is_the_old_row(two_runs):
    run = two_runs[0]
    c, r = run.config, run.result
    row = results.Row.from_run(run, "s").as_dict()
    assert list(row) == results.COLUMNS
    assert row == {**results.assessment_columns(run.assessment),
        "study": "s", "label": "tiny", "dataset": "cifar10", "model": "baseline",
        "options": '{"depth": 2, "width": 4}', "augmentations": "crop+flip", "seed": 0,
        "epochs": 1, "epochs_run": 1, "best_epoch": r.get("best_epoch"), "optimizer": c.optimizer,
        "lr": 0.05, "schedule": c.schedule, "weight_decay": c.weight_decay,
        "label_smoothing": c.label_smoothing, "batch_size": 32, "train_images": r["train_images"],
        "val_size": 64, "train_acc": r["history"][-1]["train_acc"], "val_acc": r["val"]["val_acc"],
        "test_acc": r["test"]["acc"], "test_loss": r["test"]["loss"],
        "test_top5": r["test"].get("top5"), "tta": c.tta, "precision": r["precision"],
        "wall_seconds": round(r["wall_seconds"], 1), "device": "cpu", "hardware": r["hardware"],
        "profile": "smoke", "commit": r["commit"], "run_key": run.path.name}
    assert results.Row.from_run(two_runs[1]).val_acc is None  # no validation split
    # A run finished before results recorded its precision: "auto" meant fp32 on a CPU.
    older = dataclasses.replace(run, result={k: v for k, v in r.items() if k != "precision"})
    assert results.Row.from_run(older).precision == ("fp32" if c.precision == "auto" else c.precision)


def test_results_read_and_written_again_are_the_same_bytes(two_runs, tmp_path):
    saved = results.save_results(two_runs, "01_baseline", tmp_path)
    path = tmp_path / "results" / "01_baseline.csv"
    first = path.read_bytes()
    df = results.read_results(path)
    assert list(df.columns) == results.COLUMNS and df["val_acc"].isna().sum() == 1
    pd.testing.assert_frame_equal(df, saved)  # the frame the notebook got is the one read back
    results.write_results(df, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == first
    # A file written before a column existed reads it as empty, in its place.
    df.drop(columns=["hardware"]).to_csv(tmp_path / "old.csv", index=False)
    old = results.read_results(tmp_path / "old.csv")
    assert list(old.columns) == results.COLUMNS and (old["hardware"] == "").all()


def test_text_stays_text_and_missing_numbers_stay_missing(two_runs, tmp_path):
    row = results.Row.from_run(two_runs[0], "s")
    rows = [dataclasses.replace(row, label="None", commit="1234567", hardware="", best_epoch=None,
                                val_acc=None),
            dataclasses.replace(row, label="NA", commit="0123456", hardware="", best_epoch=None,
                                val_acc=None, seed=1)]
    df = results._typed(pd.DataFrame([r.as_dict() for r in rows]))
    results.write_results(df, tmp_path / "r.csv")
    back = results.read_results(tmp_path / "r.csv")
    pd.testing.assert_frame_equal(back, df)
    assert list(back["label"]) == ["None", "NA"] and list(back["commit"]) == ["1234567", "0123456"]
    assert back["best_epoch"].isna().all() and back["best_epoch"].dtype == float
    results.write_results(back, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "r.csv").read_bytes()


def test_a_row_without_a_study_belongs_to_its_file(two_runs, tmp_path):
    results.save_results(two_runs, "02_x", tmp_path)
    path = tmp_path / "results" / "02_x.csv"
    results.write_results(results.read_results(path).assign(study=""), path)
    assert set(results.read_studies(tmp_path)["study"]) == {"02_x"}


def test_collect_reads_every_file_once(two_runs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    results.save_results(two_runs, "01_baseline", out)
    results.save_results(two_runs[:1], "02_other", out)
    (out / "tables").mkdir()
    pd.DataFrame({"true": ["cat"], "predicted": ["dog"], "count": [3], "% of true class": [30.0]}
                 ).to_csv(out / "tables" / "confused_pairs_cifar10.csv", index=False)
    md = tmp_path / "README.md"
    md.write_text("".join(f"{a}\nold\n{b}\n" for a, b in ((readme.BEGIN, readme.END), readme.FINDINGS)))
    reads = []
    real = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    merged = readme.collect_results(out, md)
    assert sorted(reads) == sorted(str(p) for p in [*(out / "results").glob("*.csv"),
                                                     out / "tables" / "confused_pairs_cifar10.csv"])
    assert len(merged) == 2
    text = md.read_text()
    assert "2 runs, trained on" in text and "mistakes are cat taken for dog (30.0% of the cat images)" in text


@pytest.mark.parametrize("mean, sd, digits, sign, text", [
    (6.0, 0.1, 2, False, "6.00 ± 0.10"), (92.0, math.nan, 1, False, "92.0"),
    (4.26, 0.21, 1, True, "+4.3 ± 0.2"), (-0.04, 0.1, 1, True, "+0.0 ± 0.1"),
    (-1.25, math.nan, 1, True, "-1.2"),
])
def test_the_one_mean_sd_format(mean, sd, digits, sign, text):
    assert stats.mean_sd(mean, sd, digits, sign=sign) == text


def test_plus_minus_and_delta_change_use_it():
    assert stats.plus_minus(pd.Series([85.0, 86.0, None])) == "85.5 ± 0.7"
    assert stats.plus_minus(pd.Series([85.0])) == "85.0" and stats.plus_minus(pd.Series([], dtype=float)) == ""
    assert stats.Delta("c", "b", "a", "test_acc", (1.0, 2.0, 3.0)).change() == "+2.0 ± 1.0"
    assert stats.Delta("c", "b", "a", "test_acc", (-0.01,)).change() == "+0.0"


# -- atomic writes: a write that fails midway leaves the previous file as it was ---------------------


@pytest.fixture
def failing_sync(monkeypatch):
    """Make the next atomic write fail after its bytes are written, before the rename."""
    def fail(fd):
        raise OSError("disk failed midway")

    return lambda: monkeypatch.setattr(fileio.os, "fsync", fail)


def _no_leftovers(folder, name):
    return not [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def test_a_failed_figure_write_keeps_the_previous_figure(tmp_path, failing_sync):
    path = tmp_path / "figures" / "curve.png"
    fig, axes = _figure.new_figure()
    axes[0, 0].plot([0, 1], [0, 1])
    _figure.save_figure(_figure.describe(fig, "a line"), path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    axes[0, 0].plot([0, 1], [1, 0])
    failing_sync()
    with pytest.raises(OSError, match="midway"):
        _figure.save_figure(fig, path)
    assert path.read_bytes() == before and _no_leftovers(path.parent, path.name)


def test_a_figure_that_fails_to_draw_keeps_the_previous_figure(tmp_path):
    path = tmp_path / "f.png"
    fig, axes = _figure.new_figure()
    _figure.save_figure(fig, path)
    before = path.read_bytes()
    axes[0, 0].set_title("$\\frac{$")  # bad mathtext: parsed, and failing, while drawing
    with pytest.raises(ValueError):
        _figure.save_figure(fig, path)
    assert path.read_bytes() == before and _no_leftovers(tmp_path, path.name)


def test_a_failed_readme_write_keeps_the_previous_readme(tmp_path, failing_sync):
    path = tmp_path / "README.md"
    path.write_text(f"head\n{readme.BEGIN}\nold table\n{readme.END}\ntail\n")
    assert readme.update_readme(path, "new table")
    before = path.read_text()
    assert "new table" in before
    failing_sync()
    with pytest.raises(OSError, match="midway"):
        readme.update_readme(path, "newer table")
    assert path.read_text() == before and _no_leftovers(tmp_path, path.name)


def test_a_failed_table_write_keeps_the_previous_table(tmp_path, failing_sync):
    ctx = report.Context("t", "smoke", tmp_path, tmp_path, tmp_path / "figures", tmp_path / "tables",
                         tmp_path / "models")
    md = report.save_table(pd.DataFrame({"a": [1.5]}), ctx, "t", index=False)
    csv = ctx.tables / "t.csv"
    before = csv.read_bytes(), md.read_bytes()
    assert before == (b"a\n1.5\n", b"| a |\n|---|\n| 1.5 |\n")
    failing_sync()
    with pytest.raises(OSError, match="midway"):
        report.save_table(pd.DataFrame({"a": [2.5]}), ctx, "t", index=False)
    assert (csv.read_bytes(), md.read_bytes()) == before and _no_leftovers(ctx.tables, "t.csv")


def test_an_interrupted_notebook_execution_keeps_the_previous_notebook(tmp_path, monkeypatch):
    executed = tmp_path / "01_x.ipynb"
    executed.write_text("previous")

    def execute(notebook, output, **kwargs):
        with open(output, "w") as f:
            f.write('{"cells": [')  # half a notebook
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.papermill, "execute_notebook", execute)
    with pytest.raises(KeyboardInterrupt):
        pipeline.execute(tmp_path / "nb.ipynb", executed, "smoke")
    assert executed.read_text() == "previous" and os.listdir(tmp_path) == ["01_x.ipynb"]

    def fail(notebook, output, **kwargs):  # papermill writes the failed notebook, then raises
        nbformat.write(nbformat.v4.new_notebook(), output)
        raise RuntimeError("a cell failed")

    monkeypatch.setattr(pipeline.papermill, "execute_notebook", fail)
    with pytest.raises(RuntimeError):
        pipeline.execute(tmp_path / "nb.ipynb", executed, "smoke")
    assert json.loads(executed.read_text())["cells"] == [] and os.listdir(tmp_path) == ["01_x.ipynb"]
