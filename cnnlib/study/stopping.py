"""Early stopping chosen on validation histories: each candidate rule (metric × patience,
counted after the learning-rate peak) replayed at no cost on the stored histories of runs
trained without it, and the choice among the candidates.

The replay is the trainer's own rule (`training.loop.replay`), so a run trained under the
chosen rule stops where its replay says. Only validation numbers are read: the test set
chooses nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from cnnlib.training.loop import lr_peak_epoch, replay

COLUMNS = ["metric", "patience", "counted after", "dataset", "seed", "stop epoch",
           "restored epoch", "epochs saved", "val acc lost pp"]


def simulate(runs, metrics, patiences) -> pd.DataFrame:
    """Per candidate (metric, patience) and run (`config`, `history`: a run trained without
    early stopping), counted after its schedule's lr peak: the epoch the stopped run would end
    on, the epoch whose weights it restores, the epochs of the schedule it saves, and the
    validation accuracy it loses (pp: the full run's last epoch minus the restored epoch)."""
    rows = []
    for metric in metrics:
        for patience in patiences:
            for run in runs:
                history, after = run.history, lr_peak_epoch(run.config)
                stop, best = replay(history, metric, patience, after)
                restored = best or stop  # no counted epoch: the final weights stay
                val = {row["epoch"]: row["val_acc"] for row in history}
                lost = history[-1]["val_acc"] - val[restored]
                rows.append([metric, patience, after, run.config.dataset, run.config.seed, stop,
                             restored, math.ceil(run.config.epochs) - stop, round(lost * 100, 2)])
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per candidate, in the order simulated: mean epochs saved and mean and worst validation
    accuracy lost over the runs."""
    g = table.groupby(["metric", "patience"], sort=False)
    return pd.DataFrame({"runs": g.size(), "mean epochs saved": g["epochs saved"].mean().round(2),
                         "mean val acc lost pp": g["val acc lost pp"].mean().round(2),
                         "worst val acc lost pp": g["val acc lost pp"].max()}).reset_index()


@dataclass(frozen=True)
class Choice:
    """The chosen candidate, and whether it met the loss bound (else: the smallest loss)."""

    metric: str
    patience: int
    within: bool


def choose(table: pd.DataFrame, max_loss_pp: float) -> Choice:
    """Among the candidates whose mean validation accuracy lost is at most `max_loss_pp`, the
    one that saves the most epochs on average (ties: the smaller loss, then the smaller
    patience); when none is, the one that loses the least (ties: the most saved)."""
    s = summary(table)
    s["order"] = range(len(s))  # the order simulated: the metrics' order breaks a last tie
    within = s[s["mean val acc lost pp"] <= max_loss_pp]
    if len(within):
        best = within.sort_values(["mean epochs saved", "mean val acc lost pp", "patience", "order"],
                                  ascending=[False, True, True, True]).iloc[0]
    else:
        best = s.sort_values(["mean val acc lost pp", "mean epochs saved", "patience", "order"],
                             ascending=[True, False, True, True]).iloc[0]
    return Choice(str(best["metric"]), int(best["patience"]), bool(len(within)))


def rule_words(metric: str, patience: int, after: int) -> str:
    """A stopping rule as the findings state it."""
    counted = (f"counted after the learning-rate peak at epoch {after}" if after
               else "counted from the first epoch")
    return (f"stopped on {metric} after {patience} epoch{'s' * (patience != 1)} without "
            f"improvement, {counted}")
