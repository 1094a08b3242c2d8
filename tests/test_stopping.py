"""Early stopping counted after the learning-rate peak: one rule for the trainer and for the
replay of a stored history, the choice among candidate rules on validation histories, and the
plan, whose stopped runs wait for the full runs they are chosen on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cnnlib import _fileio as fileio
from cnnlib.study import budget, cache, definitions, plan, stopping
from cnnlib.training.config import RunConfig
from cnnlib.training.loop import lr_peak_epoch, replay, train


def test_the_lr_peak_is_the_end_of_warmup_rounded_up_to_an_epoch():
    assert lr_peak_epoch(RunConfig(epochs=30, warmup=0.15)) == 5  # 4.5
    assert lr_peak_epoch(RunConfig(epochs=20, warmup=0.15)) == 3  # 3.0000000000000004
    assert lr_peak_epoch(RunConfig(epochs=4, warmup=0.15, schedule="cosine")) == 1
    assert lr_peak_epoch(RunConfig(epochs=8, warmup=0.0)) == 0  # falls from the first step
    assert lr_peak_epoch(RunConfig(epochs=30, schedule="step")) == 0
    assert lr_peak_epoch(RunConfig(epochs=30, schedule="constant")) == 0


def test_early_stop_after_is_checked_and_keys_earlier_runs_unchanged():
    with pytest.raises(ValueError, match=r"^early_stop_after: -1 is not allowed; allowed: an "
                                         r"integer >= 0$"):
        RunConfig(early_stop_after=-1)
    config = RunConfig(early_stop_patience=3, early_stop_metric="val_loss")
    assert config.replace(early_stop_after=0).key() == config.key()
    assert config.replace(early_stop_after=5).key() != config.key()
    assert RunConfig().key() == "0e695a5dc4176fc8"  # the key recorded before the field existed


# Validation numbers of a 10-epoch one-cycle run (warmup 0.15: peak in epoch 2). The rising lr
# makes epoch 2 worse than epoch 1; the loss rises from epoch 6 while the accuracy still creeps up.
VAL_ACC = [0.30, 0.20, 0.50, 0.60, 0.62, 0.61, 0.638, 0.637, 0.636, 0.64]
VAL_LOSS = [2.0, 2.5, 1.5, 1.2, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5]
HISTORY = [{"epoch": i + 1, "val_acc": a, "val_loss": v}
           for i, (a, v) in enumerate(zip(VAL_ACC, VAL_LOSS, strict=True))]


def test_replay_counts_only_the_epochs_after_the_peak():
    # Counted from the first epoch, the warmup's worse epoch 2 stops the run (study v2's failure).
    assert replay(HISTORY, "val_acc", 1) == (2, 1)
    assert replay(HISTORY, "val_acc", 1, after=2) == (6, 5)
    assert replay(HISTORY, "val_acc", 2, after=2) == (9, 7)
    assert replay(HISTORY, "val_loss", 3, after=2) == (8, 5)
    assert replay(HISTORY, "val_acc", 3, after=2) == (10, 10)  # never stops
    assert replay(HISTORY, "val_acc", 1, after=10) == (10, None)  # no epoch counted


def _runs():
    config = RunConfig(epochs=10, warmup=0.15, val_size=200)
    return [SimpleNamespace(config=config.replace(seed=seed), history=HISTORY) for seed in (0, 1)]


def test_the_choice_saves_the_most_epochs_within_the_loss_bound():
    table = stopping.simulate(_runs(), ("val_loss", "val_acc"), (1, 2, 3))
    row = table[(table["metric"] == "val_acc") & (table["patience"] == 2)].iloc[0]
    assert (row["counted after"], row["stop epoch"], row["restored epoch"], row["epochs saved"],
            row["val acc lost pp"]) == (2, 9, 7, 1, 0.2)
    row = table[(table["metric"] == "val_loss") & (table["patience"] == 1)].iloc[0]
    assert (row["stop epoch"], row["restored epoch"], row["epochs saved"],
            row["val acc lost pp"]) == (6, 5, 4, 2.0)
    # val_loss 1 and val_acc 1 save 4 epochs but lose 2 pp: past the bound of 0.5.
    assert stopping.choose(table, 0.5) == stopping.Choice("val_acc", 2, within=True)
    # No candidate within the bound (val_loss alone: 2 pp lost by each): the smallest loss, on
    # a tie the most epochs saved.
    only_loss = table[table["metric"] == "val_loss"]
    assert stopping.choose(only_loss, 0.5) == stopping.Choice("val_loss", 1, within=False)
    summary = stopping.summary(table)
    assert list(summary["runs"]) == [2] * 6
    assert stopping.rule_words("val_acc", 2, 2) == ("stopped on val_acc after 2 epochs without "
                                                    "improvement, counted after the "
                                                    "learning-rate peak at epoch 2")


def test_the_stopped_runs_take_the_chosen_rule_after_the_peak():
    chosen = stopping.Choice("val_acc", 8, within=True)
    runs = definitions.early_stopping_runs("cpu", chosen)
    full = {c.seed: c for label, c in runs if label == "no early stopping"}
    stopped = {c.seed: c for label, c in runs if label == "early stopping"}
    assert sorted(full) == sorted(stopped) == [0, 1, 2]
    for seed, c in stopped.items():
        assert (c.early_stop_metric, c.early_stop_patience, c.early_stop_after) == ("val_acc", 8, 5)
        assert c.replace(early_stop_patience=0, early_stop_metric="val_acc",
                         early_stop_after=0) == full[seed]
    assert definitions.early_stopping_rule("cpu", chosen) == (
        "stopped on val_acc after 8 epochs without improvement, counted after the learning-rate "
        "peak at epoch 5, chosen on validation histories")
    # Without a choice (a plan) a stand-in rule: as many runs.
    assert len(definitions.early_stopping_runs("cpu")) == len(runs)


TINY = dict(model="baseline", model_options={"width": 8, "depth": 4}, batch_size=50,
            val_size=200, epochs=8, lr=0.2, seed=0, device="cpu", precision="fp32")


def test_a_stopped_run_stops_where_the_replay_of_its_full_run_says(synthetic_root):
    full = RunConfig(**TINY)
    history = train(full, data_root=synthetic_root, progress=False).history
    after = lr_peak_epoch(full)
    assert after == 2
    # The first candidate whose replay stops before the schedule's end.
    candidates = [(m, p) for m in ("val_loss", "val_acc") for p in (1, 2, 3)
                  if replay(history, m, p, after)[0] < full.epochs]
    assert candidates, [(r["val_loss"], r["val_acc"]) for r in history]
    metric, patience = candidates[0]
    result = train(full.replace(early_stop_metric=metric, early_stop_patience=patience,
                                early_stop_after=after), data_root=synthetic_root, progress=False)
    assert result.stopped_early
    assert (len(result.history), result.best_epoch) == replay(history, metric, patience, after)
    assert result.best_epoch > after  # never weights from before the peak
    # The same epochs as the full run: the same validation numbers, row by row.
    assert [(r["val_loss"], r["val_acc"]) for r in result.history] == \
        [(r["val_loss"], r["val_acc"]) for r in history[:len(result.history)]]


def _record(config: RunConfig, history: list[dict]) -> None:
    """The run of `config` in the run cache as a record with its history."""
    path = cache.run_dir(config)
    fileio.write_json({"run_key": path.name, "config": config.to_dict(), "history": history},
                      path / "result.json")


def test_the_plan_counts_the_stopped_runs_as_waiting_until_the_full_runs_are_recorded(
        synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA_ROOT", str(synthetic_root))
    monkeypatch.setenv("CNNLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("CNNLIB_REMEASURE", raising=False)
    monkeypatch.setattr(budget, "_measure", lambda *a: 1000.0)  # the timing is not the point
    runs = definitions.early_stopping_runs("smoke")
    full = [c for label, c in runs if label == "no early stopping"]
    # at the rates the grid chooses, and the schedules
    optimizers = len({c.key() for _, c in definitions.optimizer_runs("smoke")})
    [work] = plan.plan_work("smoke", ["03_depth_study"])
    assert work.waiting == optimizers + len(full)
    assert definitions.recorded_choice("smoke") is None
    # The smoke sub-study: 4 epochs, peak in epoch 1; val_acc falls after epoch 2.
    history = [{"epoch": e, "val_acc": a, "val_loss": v}
               for e, a, v in ((1, 0.2, 2.2), (2, 0.4, 1.9), (3, 0.39, 1.8), (4, 0.38, 1.7))]
    for config in full:
        _record(config, history)
    [work] = plan.plan_work("smoke", ["03_depth_study"])
    assert work.waiting == optimizers
    chosen = definitions.recorded_choice("smoke")
    # val_loss never stops; val_acc with patience 1 stops after epoch 3 (1 epoch saved) and
    # restores epoch 2 (0.40 against the final 0.38: -2 pp lost), the most saved.
    assert chosen == stopping.Choice("val_acc", 1, within=True)
    stopped = [c for label, c in definitions.STUDIES["03_depth_study"].runs("smoke", None)
               if label == "early stopping"]
    assert [(c.early_stop_metric, c.early_stop_patience, c.early_stop_after)
            for c in stopped] == [("val_acc", 1, 1)] * len(full)
