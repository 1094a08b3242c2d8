"""Notebook 03, part 3: each optimizer's learning rate chosen on a grid by validation accuracy,
the range test judged against the grid, the runs at the chosen rates and the schedules."""

from __future__ import annotations

import pandas as pd
import pytest

from cnnlib import _fileio as fileio
from cnnlib.study import budget, cache, definitions, findings, lr_grid, plan
from cnnlib.study import table as results
from cnnlib.study.budget import Work
from cnnlib.study.definitions import STUDIES
from cnnlib.training.config import RECIPES, RunConfig
from cnnlib.viz import charts

GRID = STUDIES["03_depth_study"].sweep("learning-rate grid")
# Validation accuracy per optimizer over its grid (five rates each). sgd peaks inside; nesterov
# at its top rate (the grid's edge); adam ties at its 2nd and 3rd rates (the lower wins); adamw
# diverged at its top rate (no score: counts as 0).
VAL = {"sgd": (0.70, 0.80, 0.86, 0.84, 0.10), "nesterov": (0.70, 0.75, 0.80, 0.83, 0.87),
       "adam": (0.60, 0.81, 0.81, 0.78, 0.50), "adamw": (0.62, 0.79, 0.82, 0.80, None)}


def _grid_rows(val=VAL, dataset="cifar10"):
    rows = []
    for opt, accs in val.items():
        for lr, acc in zip(definitions.LR_GRIDS[opt], accs, strict=True):
            rows.append({"study": "03_depth_study", "label": definitions.grid_label(opt, lr),
                         "dataset": dataset, "model": "fastnet", "options": "{}",
                         "augmentations": "crop+flip", "seed": 3, "epochs": 4, "optimizer": opt,
                         "lr": lr, "train_images": 45000, "val_acc": acc, "test_acc": 0.5,
                         "tta": 0, "profile": "cpu", "run_key": f"{opt}-{lr}"})
    return pd.DataFrame(rows, columns=results.COLUMNS)


def test_the_choice_reads_validation_accuracy_only_and_flags_the_grid_edges():
    rows = _grid_rows()
    chosen = lr_grid.choose(rows)
    assert {o: c.lr for o, c in chosen.items()} == {"sgd": 1.5, "nesterov": 6.0, "adam": 0.003,
                                                    "adamw": 0.006}
    assert [c.edge for c in chosen.values()] == [False, True, False, False]
    # The test set changes nothing: a different test accuracy per row, the same choice.
    other = lr_grid.choose(rows.assign(test_acc=range(len(rows))))
    assert other == chosen
    # A diverged run (no score) counts as 0, below every run that learned.
    scores = lr_grid.scores(rows)
    assert scores[scores["optimizer"] == "adamw"]["val_acc"].iloc[-1] == 0.0


def test_the_range_test_is_judged_against_the_grid():
    rows = _grid_rows()
    scores, chosen = lr_grid.scores(rows), lr_grid.choose(rows)
    # sgd's suggestion 0.31: nearest grid rate 0.375 (log scale), 16 pp below the chosen 1.5.
    j = lr_grid.judge(scores, chosen["sgd"], 0.31)
    assert (j.nearest, j.lost_pp, j.inside) == (0.375, 16.0, False)
    assert j.factor == pytest.approx(0.31 / 1.5)
    assert lr_grid.judged_words(j) == ("0.31, 4.8× below the chosen rate, outside the grid's "
                                       "span (its accuracy there was not measured)")
    j = lr_grid.judge(scores, chosen["sgd"], 0.6)
    assert (j.nearest, j.lost_pp, j.inside) == (0.75, 6.0, True)
    assert lr_grid.judged_words(j).endswith("the grid's rate nearest to it (0.75) scores 6.0 pp "
                                            "lower on validation")
    j = lr_grid.judge(scores, chosen["adam"], 0.0034)
    assert j.nearest == j.chosen == 0.003
    assert lr_grid.judged_words(j) == ("0.0034, 1.1× above the chosen rate: the grid's rate "
                                       "nearest to it is the chosen one")


def test_the_grid_finding_states_each_choice_and_the_range_test_and_compares_nothing():
    rows = _grid_rows()
    suggested = {"sgd": 0.31, "nesterov": 5.0, "adam": 0.0034, "adamw": 0.03}
    [line] = findings.lr_grid_lines(rows, GRID, suggested)
    assert line.startswith("- **learning-rate grid, CIFAR-10** (one run per rate, seed 3; "
                           "validation accuracy, which alone chooses the rate): `sgd` 0.375: "
                           "70.0% / 0.75: 80.0% / 1.5: 86.0% / 3: 84.0% / 6: 10.0%, chosen 1.5; "
                           "its range test suggested 0.31, 4.8× below the chosen rate")
    assert "`nesterov` 0.375: 70.0%" in line and ("chosen 6 (the grid's edge): a better rate may "
                                                  "lie beyond it") in line
    assert "`adamw` 0.0015: 62.0% / 0.003: 79.0% / 0.006: 82.0% / 0.012: 80.0% / 0.024: 0.0%" in line
    assert line.endswith("Regime: fastnet, 4 epochs, 45,000 training images, crop+flip, no "
                         "test-time augmentation.")
    assert "pp (" not in line and "inconclusive" not in line  # no comparison of one-seed runs
    assert findings.sweep_lines(rows, GRID) == findings.lr_grid_lines(rows, GRID)
    answer = findings.answer(rows, (GRID,))
    assert answer == ("- **CIFAR-10, learning-rate grid**: rates chosen on validation `sgd` 1.5, "
                      "`nesterov` 6 (the grid's edge), `adam` 0.003, `adamw` 0.006. Regime: "
                      "fastnet, 4 epochs, 45,000 training images, crop+flip, no test-time "
                      "augmentation.")  # no range tests recorded here
    short = findings.lr_grid_lines(rows, GRID, suggested, short=True)[0]
    assert "the range test's suggestion falls nearest the chosen rate for 2 of 4 optimizers" in short


def test_adam_and_adamw_train_with_their_own_settings_and_sgd_with_the_recipe():
    grid = dict(definitions.lr_grid_runs("cpu"))
    recipe = RECIPES["fastnet"]
    for opt in ("adam", "adamw"):
        c = grid[definitions.grid_label(opt, definitions.LR_GRIDS[opt][0])]
        assert (c.optimizer, c.momentum, c.norm_lr_scale, c.lookahead) == (opt, 0.9, 1.0, False)
    assert grid["adamw @ lr 0.003"].weight_decay == 0.05
    assert grid["adam @ lr 0.003"].weight_decay == 5e-4
    for opt in ("sgd", "nesterov"):
        c = grid[f"{opt} @ lr 1.5"]
        assert (c.momentum, c.norm_lr_scale, c.lookahead, c.weight_decay) == (
            recipe["momentum"], recipe["norm_lr_scale"], recipe["lookahead"],
            recipe["weight_decay"])
    # Five rates a factor 2 apart per optimizer, one seed outside the sweeps' seeds.
    for rates in definitions.LR_GRIDS.values():
        assert len(rates) >= 4
        assert all(b / a == pytest.approx(2) for a, b in zip(rates, rates[1:], strict=False))
    seeds = definitions.settings("cpu")["seeds"]
    assert {c.seed for c in grid.values()} == {definitions.grid_seed("cpu")} and \
        definitions.grid_seed("cpu") not in seeds
    # The range tests scan each optimizer's own settings at its grid's centre.
    for opt, c in definitions.lr_find_configs("cpu").items():
        assert c == grid[definitions.grid_label(opt, definitions.LR_CENTRES[opt])].replace(seed=0)


def test_the_chosen_rates_set_the_optimizer_and_schedule_runs():
    chosen = {"sgd": 0.75, "nesterov": 3.0, "adam": 0.0015, "adamw": 0.006}
    runs = definitions.optimizer_runs("cpu", chosen)
    seeds = definitions.settings("cpu")["seeds"]
    by = {}
    for label, c in runs:
        by.setdefault(label, []).append(c)
    assert {label: {c.lr for c in cs} for label, cs in by.items()} == {
        "sgd @ chosen lr": {0.75}, "nesterov @ chosen lr": {3.0}, "adam @ chosen lr": {0.0015},
        "adamw @ chosen lr": {0.006}, "one-cycle schedule": {3.0}, "cosine schedule": {3.0},
        "step schedule": {3.0}}
    assert all([c.seed for c in cs] == list(seeds) for cs in by.values())
    # One-cycle is the recipe's schedule: the same runs as Nesterov at its chosen rate.
    assert [c.key() for c in by["one-cycle schedule"]] == [c.key() for c in by["nesterov @ chosen lr"]]
    cosine, step = by["cosine schedule"][0], by["step schedule"][0]
    assert (cosine.schedule, cosine.warmup, cosine.final_lr) == ("cosine", 0.0, 0.0)
    assert step.schedule == "step"
    assert cosine.replace(schedule="onecycle", warmup=by["one-cycle schedule"][0].warmup,
                          final_lr=by["one-cycle schedule"][0].final_lr) == by["one-cycle schedule"][0]
    # Planning, before the grid is recorded: the grids' centres stand in, as many runs.
    assert len(definitions.optimizer_runs("cpu")) == len(runs)


def _record(config: RunConfig, val_acc: float | None) -> None:
    path = cache.run_dir(config)
    result = {"run_key": path.name, "config": config.to_dict()}
    if val_acc is not None:
        result["val"] = {"val_acc": val_acc}
    fileio.write_json(result, path / "result.json")


def test_the_plan_waits_for_the_grid_then_counts_the_runs_at_the_chosen_rates(
        synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA_ROOT", str(synthetic_root))
    monkeypatch.setenv("CNNLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("CNNLIB_REMEASURE", raising=False)
    monkeypatch.setattr(budget, "_measure", lambda *a: 1000.0)
    waiting = {c.key() for _, c in definitions.optimizer_runs("smoke")}
    full = [c for label, c in definitions.early_stopping_runs("smoke") if label.startswith("no ")]
    [work] = plan.plan_work("smoke", ["03_depth_study"])
    assert isinstance(work, Work) and work.waiting == len(waiting) + len(full)
    assert definitions.recorded_lr_choice("smoke") is None
    grid = definitions.lr_grid_runs("smoke")
    for _, c in grid:  # records without their validation score choose nothing
        _record(c, None)
    assert definitions.recorded_lr_choice("smoke") is None
    # (a diverged run is scored as chance, validation included)
    for (_, c), acc in zip(grid, [a for accs in VAL.values() for a in accs], strict=True):
        _record(c, 0.1 if acc is None else acc)
    chosen = definitions.recorded_lr_choice("smoke")
    assert chosen == {"sgd": 1.5, "nesterov": 6.0, "adam": 0.003, "adamw": 0.006}
    [work] = plan.plan_work("smoke", ["03_depth_study"])
    assert work.waiting == len(full)  # only the early-stopped runs wait now
    made = dict(STUDIES["03_depth_study"].runs("smoke", None))
    assert made["adam @ chosen lr"].lr == 0.003 and made["step schedule"].lr == 6.0


def test_the_grid_figure_marks_the_choice_and_the_range_test(tmp_path):
    rows = _grid_rows()
    chosen = {o: c.lr for o, c in lr_grid.choose(rows).items()}
    fig = charts.plot_lr_grid(lr_grid.scores(rows), chosen, {"sgd": 0.31}, tmp_path / "g.png",
                              title="Grid")
    assert (tmp_path / "g.png").stat().st_size > 0
    axes = fig.axes[:4]
    assert [ax.get_title() for ax in axes] == list(VAL)
    assert all(ax.get_xscale() == "log" for ax in axes)
    star = axes[1].lines[1]  # nesterov's chosen rate: its top one
    assert list(star.get_xdata()) == [6.0] and list(star.get_ydata()) == [0.87]
    assert [line.get_xdata()[0] for line in axes[0].lines[2:]] == [0.31]  # sgd's range test
    assert len(axes[2].lines) == 2  # no range test given for adam
    legend = [t.get_text() for t in axes[3].get_legend().get_texts()]
    assert legend == ["chosen", "range test"]
    assert "nesterov: 70.0% at 0.375, 75.0% at 0.75, 80.0% at 1.5, 83.0% at 3, 87.0% at 6, " \
           "chosen 6" in fig.get_label()
