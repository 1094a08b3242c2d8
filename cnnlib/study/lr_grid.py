"""The learning-rate grid: each optimizer's rate chosen on validation accuracy, and its range
test's suggestion judged against the grid.

The grid trains the reference network once per optimizer and rate, on a seed of its own (so
the runs later scored at the chosen rate are not the ones that won the choice). Only
validation accuracy is read: the test set chooses nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Choice:
    """An optimizer's chosen rate and its validation accuracy; `edge`: the grid's lowest or
    highest rate, so a better one may lie beyond the grid."""

    optimizer: str
    lr: float
    val_acc: float
    edge: bool


def scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer (in first-seen order) and rate (ascending): the mean validation accuracy of
    the grid's rows (`optimizer`, `lr`, `val_acc`); a run with no score (diverged, scored as
    chance without a validation pass) counts as 0."""
    val = pd.to_numeric(rows["val_acc"], errors="coerce").fillna(0.0)
    order = {o: i for i, o in enumerate(dict.fromkeys(rows["optimizer"]))}
    out = (rows.assign(val_acc=val).groupby(["optimizer", "lr"], sort=False)["val_acc"].mean()
           .reset_index())
    out["order"] = out["optimizer"].map(order)
    return out.sort_values(["order", "lr"]).drop(columns="order").reset_index(drop=True)


def choose(rows: pd.DataFrame) -> dict[str, Choice]:
    """Per optimizer, the rate of the highest validation accuracy (ties: the lower rate, the
    safer side of divergence)."""
    out = {}
    for opt, part in scores(rows).groupby("optimizer", sort=False):
        best = part.sort_values(["val_acc", "lr"], ascending=[False, True]).iloc[0]
        out[str(opt)] = Choice(str(opt), float(best["lr"]), float(best["val_acc"]),
                               best["lr"] in (part["lr"].min(), part["lr"].max()))
    return out


@dataclass(frozen=True)
class Judged:
    """A range test's suggestion against the grid: the grid's rate nearest to it (log scale),
    that rate's validation accuracy below the chosen one's (pp), and the suggestion over the
    chosen rate; `inside`: whether the suggestion lies within the grid's span."""

    suggested: float
    chosen: float
    nearest: float
    lost_pp: float
    factor: float
    inside: bool


def judge(scores: pd.DataFrame, chosen: Choice, suggested: float) -> Judged:
    """`suggested` against the grid of `chosen.optimizer` (`scores` as `scores` gives them)."""
    part = scores[scores["optimizer"] == chosen.optimizer]
    i = (part["lr"].map(math.log) - math.log(suggested)).abs().idxmin()
    return Judged(suggested, chosen.lr, float(part.loc[i, "lr"]),
                  round((chosen.val_acc - float(part.loc[i, "val_acc"])) * 100, 2),
                  suggested / chosen.lr,
                  bool(part["lr"].min() <= suggested <= part["lr"].max()))


def factor_words(factor: float) -> str:
    """A ratio of rates in words: '4.8× below', '2.0× above', 'at'."""
    if math.isclose(factor, 1, rel_tol=0.05):
        return "at"
    return f"{factor:.1f}× above" if factor > 1 else f"{1 / factor:.1f}× below"


def judged_words(j: Judged) -> str:
    """What the range test's suggestion is worth on the grid, in words."""
    where = f"{j.suggested:.2g}, {factor_words(j.factor)} the chosen rate"
    if not j.inside:
        return f"{where}, outside the grid's span (its accuracy there was not measured)"
    if j.nearest == j.chosen:
        return f"{where}: the grid's rate nearest to it is the chosen one"
    return (f"{where}: the grid's rate nearest to it ({j.nearest:g}) scores {j.lost_pp:.1f} pp "
            "lower on validation")
