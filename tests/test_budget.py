"""Training speed per machine and the epochs of a wall-clock budget (cnnlib/budget.py)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time

import pytest

from cnnlib import _fileio as fileio
from cnnlib.data.corruptions import CORRUPTIONS, SEVERITIES
from cnnlib.study import budget
from cnnlib.training.config import RunConfig

# A tiny network and batch: a real measurement takes a fraction of a second.
TINY = RunConfig(model="baseline", model_options={"width": 4, "depth": 2}, batch_size=8,
                 train_subset=200, val_size=50, test_subset=100, device="cpu", precision="fp32",
                 epochs=1)


@pytest.fixture
def measured(monkeypatch):
    """Replaces the timing by a fixed speed (1000 images/s) and counts the measurements."""
    calls = []

    def fake(config, device, precision):
        calls.append(config.model)
        return 1000.0

    monkeypatch.setattr(budget, "_measure", fake)
    return calls


def test_a_real_measurement_is_kept_in_the_store(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "BUSY_OTHERS", 1.0)  # stored however busy: its own test below
    store = tmp_path / "speeds.json"
    speed = budget.images_per_second(TINY, store)
    assert speed > 0 and math.isfinite(speed)
    table = fileio.read_json(store)
    (key,) = table  # read_json checks and drops the content hash
    assert '"model": "baseline"' in key and '"batch": 8' in key and "fp32" in key
    assert table[key] == speed


def test_the_speed_is_measured_once_and_read_back(tmp_path, measured, capsys):
    store = tmp_path / "speeds.json"
    first = budget.epochs_for(TINY, 2.0, store)
    # The line names the dataset: CIFAR-10 and CIFAR-100 shapes differ only in their classes.
    assert capsys.readouterr().err.splitlines() == [
        "[speed] timing baseline {'width': 4, 'depth': 2} on cifar10 at batch 8 (fp32) once on "
        "this machine"]
    # Another seed and epoch count: the same network shape, so the stored speed.
    again = budget.epochs_for(TINY.replace(seed=3, epochs=5), 2.0, store)
    assert first == again == 2.0 * 1000 / 200  # seconds x images/s / training images
    assert measured == ["baseline"]
    # Another shape is measured and added next to the first entry.
    budget.epochs_for(TINY.replace(batch_size=16), 2.0, store)
    assert measured == ["baseline", "baseline"]
    assert len([k for k in fileio.read_json(store) if not k.startswith(budget.PIN)]) == 2


def test_a_stored_speed_is_used_as_it_is(tmp_path, measured):
    store = tmp_path / "speeds.json"
    budget.images_per_second(TINY, store)
    table = fileio.read_json(store)
    (key,) = table
    fileio.write_json({key: 250.0}, store)
    assert budget.images_per_second(TINY, store) == 250.0
    assert budget.epochs_for(TINY, 1.0, store) == 1.25
    assert measured == ["baseline"]


def test_epochs_round_down_and_fill_at_least_one_batch(tmp_path, measured):
    store = tmp_path / "speeds.json"
    assert budget.epochs_for(TINY, 0.123456, store) == 0.61  # 0.617... rounded down
    tiny = budget.epochs_for(TINY, 1e-6, store)
    assert tiny * budget.train_images(TINY) >= TINY.batch_size
    assert tiny == 0.04  # 8 of 200 images


@pytest.mark.parametrize("seconds", [0, -1.0, math.nan, math.inf])
def test_a_bad_budget_is_refused(tmp_path, measured, seconds):
    with pytest.raises(ValueError, match="budget"):
        budget.epochs_for(TINY, seconds, tmp_path / "speeds.json")
    assert measured == []  # refused before anything is timed


def test_train_images_is_the_subset_or_the_split():
    assert budget.train_images(TINY) == 200
    assert budget.train_images(TINY.replace(train_subset=0, val_size=5000)) == 45000


def test_estimate_grows_with_epochs_and_evaluation(tmp_path, measured):
    store = tmp_path / "speeds.json"
    one, two = (budget.estimate_seconds(TINY.replace(epochs=e), store) for e in (1, 2))
    assert 0 < one < two
    assert two - one == pytest.approx(200 / 1000 + 50 / (budget.EVAL_SPEEDUP * 1000))
    # One epoch: its training and validation, the 100 test images, and the assessment: 25 of
    # them (a quarter) clean and under every corruption and severity, the validation split.
    sets = len(CORRUPTIONS) * len(SEVERITIES) + 1
    assert one == pytest.approx(200 / 1000 + (50 + 100 + 25 * sets + 50)
                                / (budget.EVAL_SPEEDUP * 1000))
    with_tta = budget.estimate_seconds(TINY.replace(tta=2), store)
    assert with_tta > one  # six forward passes per test image instead of one


def test_a_timing_beside_other_work_is_used_once_and_not_stored(tmp_path, capsys):
    # One busy process per core: the timing's threads get about half of their time.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        config = TINY.replace(model_options={}, batch_size=128)  # ~1 s of timed steps here
        speed = budget.images_per_second(config, tmp_path / "speeds.json")
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert speed > 0
    assert not (tmp_path / "speeds.json").exists()
    err = capsys.readouterr().err
    assert "of the CPUs busy during the timing; its figure is used by this process and not stored" in err
    # The same process reads the figure back instead of timing again on the busy machine.
    assert budget.images_per_second(config, tmp_path / "speeds.json") == speed
    assert "timing" not in capsys.readouterr().err


def test_budgets_are_pinned_to_the_first_machine_and_built_alike_on_another(tmp_path, measured,
                                                                             monkeypatch):
    store = tmp_path / "speeds.json"
    here = budget.hardware("cpu")
    # The first machine computes bf16 natively (whatever this CPU does): `auto` is another
    # shape than TINY's fp32, timed on its own.
    monkeypatch.setattr(budget, "resolve_precision", lambda p, d: "bf16" if p == "auto" else p)
    auto = TINY.replace(precision="auto")
    first = budget.epochs_for(TINY, 2.0, store)
    assert budget.epochs_for(auto, 2.0, store) == first
    assert budget.budget_machine(store) == here and measured == ["baseline"] * 2

    # Another machine, twice as fast, where `auto` resolves to the other precision: the same
    # epochs from the pinned machine's speeds, nothing timed for them.
    monkeypatch.setattr(budget, "hardware", lambda device="cpu": "Other CPU, 2 threads, torch 2")
    monkeypatch.setattr(budget, "resolve_precision", lambda p, d: "fp32" if p == "auto" else p)
    monkeypatch.setattr(budget, "_measure", lambda *a: (measured.append("other"), 2000.0)[1])
    assert budget.epochs_for(TINY.replace(seed=1), 2.0, store) == first
    assert budget.epochs_for(auto, 2.0, store) == first
    assert measured == ["baseline"] * 2
    assert budget.images_per_second(TINY, store) == 2000.0  # its own speed, for time estimates
    assert budget.budget_machine(store) == here and budget.epochs_for(TINY, 2.0, store) == first

    # A shape the pinned machine never timed: one line that names it, and nothing is timed.
    with pytest.raises(budget.BudgetError, match=f"never timed on {re.escape(here)}, ") as e:
        budget.epochs_for(TINY.replace(batch_size=16), 2.0, store)
    assert "\n" not in str(e.value) and str(store) in str(e.value) and measured[-1] == "other"

    # The store moved aside: this machine pins itself, and its budgets buy its own epochs.
    store.rename(tmp_path / "pinned elsewhere.json")
    assert budget.epochs_for(TINY, 2.0, store) == 2 * first
    assert budget.budget_machine(store) == "Other CPU, 2 threads, torch 2"
    assert budget.budget_machine(store, "cuda") is None  # a GPU pins its own


def test_a_busy_timing_pins_nothing_and_a_bad_pin_reads_as_damaged(tmp_path, measured,
                                                                 monkeypatch, capsys):
    store = tmp_path / "speeds.json"
    monkeypatch.setattr(budget, "_others_share", lambda *a: 0.9)
    budget.epochs_for(TINY, 2.0, store)
    assert budget.budget_machine(store) is None and not store.exists()

    key = f"{budget.PIN}cpu"
    for pin in ("Other CPU", {"machine": "", "auto": "bf16"}, {"machine": "x", "auto": "fp64"}):
        fileio.write_json({key: pin}, store)
        assert budget.budget_machine(store) is None
        monkeypatch.setattr(budget, "_others_share", lambda *a: 0.0)
        budget.epochs_for(TINY.replace(batch_size=4), 2.0, store)  # reads it under repair
        assert "[damaged]" in capsys.readouterr().err
        assert budget.budget_machine(store) == budget.hardware("cpu")
        store.unlink()
