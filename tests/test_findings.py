"""Findings computed from the results: the statistical rule, its wording, the README section,
and run choices that never read the test set."""

from __future__ import annotations

import pandas as pd
import pytest

from cnnlib.study import cache as runs
from cnnlib.study import definitions, findings, readme, report, stats, stopping
from cnnlib.study import table as results
from cnnlib.study.definitions import STUDIES

# Test accuracy per seed (fractions). Against the reference `crop+flip`: `+cutmix` gains 3.0,
# 3.2, 2.9 pp (a clear effect), `+mixup` +1, -1, +2 pp (overlaps 0), `none` -4, -5, -4 pp (a
# clear loss).
CUTMIX, MIXUP = "crop+flip+cutmix", "crop+flip+mixup"
ACC = {"crop+flip": (0.50, 0.52, 0.51), CUTMIX: (0.53, 0.552, 0.539),
       MIXUP: (0.51, 0.51, 0.53), "none": (0.46, 0.47, 0.47)}


def _rows(study, dataset, acc, keys=None):
    rows = []
    for label, values in acc.items():
        for seed, a in enumerate(values):
            key = (keys or {}).get(label, label)
            rows.append({"study": study, "label": label, "dataset": dataset, "model": "baseline",
                         "options": "{}", "augmentations": label, "seed": seed, "epochs": 2,
                         "train_images": 1000, "train_acc": a + 0.02, "val_acc": a,
                         "test_acc": a, "test_loss": 1.0, "test_top5": 0.9, "wall_seconds": 1.0,
                         "device": "cpu", "hardware": "test CPU", "profile": "smoke",
                         "commit": "abc1234", "run_key": f"{dataset}-{key}-{seed}"})
    return rows


def _write_results(out):
    (out / "results").mkdir(parents=True)
    results.write_results(pd.DataFrame(_rows("02_augmentation_ablation", "cifar10", ACC),
                                       columns=results.COLUMNS),
                          out / "results" / "02_augmentation_ablation.csv")
    # A depth sweep and a width sweep whose standard network (`depth 6` = `width 32`) is one run.
    depth = {"depth 2": (0.40, 0.41, 0.42), "depth 6": (0.50, 0.52, 0.51),
             "depth 10": (0.505, 0.53, 0.505), "width 16": (0.45, 0.46, 0.455),
             "width 32": (0.50, 0.52, 0.51)}
    rows = _rows("03_depth_study", "cifar10", depth, keys={"width 32": "depth 6"})
    results.write_results(pd.DataFrame(rows, columns=results.COLUMNS),
                          out / "results" / "03_depth_study.csv")


def test_interval_is_the_t_interval_of_the_paired_deltas():
    d = stats.Delta("cifar10", "b", "a", "test_acc", (1.0, 2.0, 3.0))
    assert (d.n, d.mean, d.sd) == (3, 2.0, 1.0)
    low, high = d.interval  # 2 ± t(0.975, 2) * 1 / sqrt(3), t = 4.3027
    assert low == pytest.approx(2 - 2.4841, abs=1e-3) and high == pytest.approx(2 + 2.4841, abs=1e-3)
    assert d.verdict == "inconclusive with 3 seeds"
    assert stats.Delta("c", "b", "a", "test_acc", (3.0, 3.2, 2.9)).verdict == "improves"
    assert stats.Delta("c", "b", "a", "test_acc", (-4.0, -5.0, -4.0)).verdict == "hurts"
    one = stats.Delta("c", "b", "a", "test_acc", (9.0,))
    assert one.verdict == "inconclusive with 1 seed" and "no interval" in one.numbers()
    gap = stats.Delta("c", "b", "a", "gap", (2.0, 2.1, 1.9))
    assert gap.verdict == "raises the gap"


def test_compare_pairs_by_seed():
    df = pd.DataFrame(_rows("s", "cifar10", ACC))
    df = df[~((df["label"] == CUTMIX) & (df["seed"] == 2))]  # cutmix lacks seed 2: 2 pairs
    by_label = {d.label: d for d in stats.compare(df, "crop+flip")}
    assert set(by_label) == {CUTMIX, MIXUP, "none"}
    assert by_label[CUTMIX].deltas == pytest.approx((3.0, 3.2))
    assert by_label[MIXUP].deltas == pytest.approx((1.0, -1.0, 2.0))


def test_readme_section_follows_the_wording_rule(tmp_path):
    out = tmp_path / "outputs"
    _write_results(out)
    md = tmp_path / "README.md"
    begin, end = readme.FINDINGS
    md.write_text(f"# x\n\nMethod text stays.\n\n{begin}\nold words\n{end}\ntail\n")
    readme.collect_results(out, md)
    text = md.read_text()
    assert "old words" not in text and text.startswith("# x\n\nMethod text stays.\n\n")
    assert text.endswith(f"{end}\ntail\n")
    section = text.split(begin)[1].split(end)[0]
    # Clear effects say so; an overlapping one says it cannot tell. The sweep's three variants
    # are one family: Holm's p for the verdicts, each interval at its Holm step's level.
    assert (f"improves: `{CUTMIX}` +3.0 ± 0.2 pp (98.3% CI +2.4 to +3.7, Holm p = 0.0025 over 3 "
            "comparisons)") in section
    assert ("hurts: `none` -4.3 ± 0.6 pp (97.5% CI -6.4 to -2.3, Holm p = 0.012 over 3 "
            "comparisons)") in section
    assert (f"inconclusive with 3 seeds: `{MIXUP}` +0.7 ± 1.5 pp "
            "(95% CI -3.1 to +4.5, Holm p = 0.53 over 3 comparisons)") in section
    assert f"`{MIXUP}` improves" not in section and f"improves: `{MIXUP}`" not in section
    # The ranking states its margin and that it is inconclusive.
    assert ("highest: `depth 10` (51.3%), ahead of `depth 6` by +0.3 ± 0.8 pp "
            "(95% CI -1.6 to +2.2): a lead inconclusive with 3 seeds") in section
    # The width sweep's reference is the standard network's width (`Sweep.reference`); one
    # comparison, so the plain 95% interval.
    assert "Against `width 32`: hurts: `width 16` -5.5 ± 0.5 pp (95% CI -6.7 to -4.3)" in section
    # Sweeps of the study without a run here are named, not left out.
    assert "- **dropout, CIFAR-10**: no run of the dropout sweep (`dropout 0.0` / `dropout 0.5`)" \
        in section
    assert "Profile `smoke`, 24 runs, trained on test CPU" in section


def test_an_unchanged_rerun_leaves_the_readme_as_it_is(tmp_path):
    out = tmp_path / "outputs"
    _write_results(out)
    md = tmp_path / "README.md"
    md.write_text(f"{readme.BEGIN}\n{readme.END}\n{readme.FINDINGS[0]}\n{readme.FINDINGS[1]}\n")
    readme.collect_results(out, md)
    first = md.read_text()
    readme.collect_results(out, md)
    assert md.read_text() == first and f"improves: `{CUTMIX}`" in first


def _early_stopping_frame():
    # (epochs run, best epoch, test acc without, test acc with) per seed, a 30-epoch schedule;
    # seed 1 never stopped. Saved 18 / 0 / 15 epochs; deltas +2.0 / 0.0 / -2.5 pp.
    per_seed = [(12, 7, 0.60, 0.62), (30, 28, 0.61, 0.61), (15, 10, 0.615, 0.59)]
    rows = []
    for seed, (run, best, without, with_) in enumerate(per_seed):
        same = {"dataset": "cifar10", "seed": seed, "epochs": 30, "model": "baseline",
                "options": "{}", "augmentations": "none", "train_images": 5000, "tta": 0}
        rows += [{**same, "label": "no early stopping", "epochs_run": 30, "best_epoch": None,
                  "test_acc": without, "run_key": f"full-{seed}"},
                 {**same, "label": "early stopping", "epochs_run": run, "best_epoch": best,
                  "test_acc": with_, "run_key": f"stopped-{seed}"}]
    rows.append({**rows[0], "label": "depth 2", "test_acc": 0.5,  # other labels are ignored
                 "run_key": "depth-2"})
    return pd.DataFrame(rows).assign(profile="cpu", hardware="test CPU")


RULE = ("stopped on val_acc after 8 epochs without improvement, counted after the learning-rate "
        "peak at epoch 5, chosen on validation histories")


def test_epochs_saved_per_seed_with_the_rule_and_the_regime():
    df = _early_stopping_frame()
    table = findings.early_stopping_table(df)
    assert list(table["epochs saved"]) == [18, 0, 15] and list(table["best epoch"]) == [7, 28, 10]
    assert list(table["Δ pp"]) == [2.0, 0.0, -2.5]
    text = findings.epochs_saved(df, rule=RULE)
    assert text == (
        "- **early stopping, CIFAR-10** (3 seeds): Stopped on val_acc after 8 epochs without "
        "improvement, counted after the learning-rate peak at epoch 5, chosen on validation "
        "histories. 11.0 of 30 epochs saved on average (37% of the schedule; seed 0: stopped "
        "after epoch 12 (18 saved), weights of epoch 7 restored, test accuracy 2.0 pp higher; "
        "seed 1: ran every epoch (0 saved), weights of epoch 28 restored, test accuracy "
        "unchanged; seed 2: stopped after epoch 15 (15 saved), weights of epoch 10 restored, "
        "test accuracy 2.5 pp lower); test accuracy 60.7% with, 60.8% without: inconclusive "
        "with 3 seeds, -0.2 ± 2.3 pp (95% CI -5.8 to +5.4). Regime: baseline, 30 epochs, 5,000 "
        "training images, no augmentation, no test-time augmentation.")
    assert findings.epochs_saved(df[df["label"] != "early stopping"]) == ""


def test_the_readme_states_the_rule_chosen_on_the_recorded_histories(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    (out / "results").mkdir(parents=True)
    results.write_results(_early_stopping_frame().assign(study="03_depth_study"),
                          out / "results" / "03_depth_study.csv")
    chosen = stopping.Choice("val_acc", 8, within=True)
    monkeypatch.setattr(findings, "recorded_choice", lambda profile: chosen)
    section = findings.readme_section(results.read_studies(out))
    # The cpu profile's sub-study: 30 epochs, warmup 0.15 of the one-cycle schedule: peak in 5.
    assert f"- **early stopping, CIFAR-10** (3 seeds): {RULE[0].upper()}{RULE[1:]}. 11.0 of 30 " \
        "epochs saved on average" in section
    assert section.count("early stopping, CIFAR-10") == 1  # instead of the plain sweep line
    # Histories not recorded here: the rule is not named, the rest is said.
    monkeypatch.setattr(findings, "recorded_choice", lambda profile: None)
    section = findings.readme_section(results.read_studies(out))
    assert "- **early stopping, CIFAR-10** (3 seeds): 11.0 of 30 epochs saved" in section


def test_a_ranking_of_the_gap_names_percentage_points():
    df = pd.DataFrame(_rows("03_depth_study", "cifar10", {"depth 2": (0.40, 0.41, 0.42),
                                                          "depth 6": (0.50, 0.52, 0.51)}))
    df.loc[df["label"] == "depth 2", "train_acc"] += 0.1  # gap 12 pp against 2 pp
    assert stats.rank(df, metric="gap")[0].sentence().startswith("highest: `depth 2` (12.0 pp)")
    assert stats.rank(df)[0].sentence().startswith("highest: `depth 6` (51.0%)")


def test_confusion_sentence_counts_pairs_outside_a_superclass():
    pairs = pd.DataFrame({"true": ["girl", "bus", "maple"], "predicted": ["woman", "streetcar", "oak"],
                          "count": [27, 16, 23], "% of true class": [27.0, 16.0, 23.0],
                          "same superclass": [True, False, True]})
    text = findings.confusion_sentence(pairs, "cifar100", top=2)
    assert ("girl taken for woman (27.0% of the girl images), bus taken for streetcar (16.0% of "
            "the bus images)") in text
    assert "2 of the 3 most confused pairs lie inside one superclass (not bus → streetcar)" in text


# Notebook 01: the reference meets its bar on CIFAR-10 (86.0 ± 1.0%), not on CIFAR-100 (51.0%).
BASELINE = {"cifar10": {"reference": (0.86, 0.87, 0.85), "best": (0.93, 0.935, 0.925)},
            "cifar100": {"reference": (0.50, 0.52, 0.51), "best": (0.70, 0.71, 0.72)}}


def _baseline_frame():
    return pd.DataFrame([r for ds, acc in BASELINE.items() for r in _rows("01_baseline", ds, acc)])


def test_baseline_answer_pairs_best_with_the_reference():
    text = findings.baseline_answer(_baseline_frame())
    assert ("- **CIFAR-10**: the best model (baseline, 3 seeds) reaches 93.0% test accuracy, the "
            "sweeps' reference network (3 seeds) 86.0%; paired by seed: improves, +7.0 ± 0.5 pp"
            ) in text
    assert "- **CIFAR-100**:" in text and "paired by seed: improves, +20.0 ± 1.0 pp" in text
    # A dataset without both labels (e.g. the old `baseline` label) gives no sentence.
    old = _baseline_frame().replace({"label": {"reference": "baseline"}})
    assert findings.baseline_answer(old) == ""


def test_reference_check_holds_each_dataset_against_its_bar():
    text = findings.reference_check(_baseline_frame())
    assert ("- **CIFAR-10**: the reference network reaches 86.0 ± 1.0% validation accuracy (mean "
            "± sd over 3 seeds): it meets the study's bar of 85%") in text
    assert ("- **CIFAR-100**: the reference network reaches 51.0 ± 1.0% validation accuracy (mean ± sd "
            "over 3 seeds): 4.0 pp short of the study's bar of 55%, so the sweeps' comparisons "
            "on CIFAR-100 are outside the regime") in text
    one = findings.reference_check(_baseline_frame().query("seed == 0"), {"cifar10": 0.9})
    assert one == ("- **CIFAR-10**: the reference network reaches 86.0% validation accuracy (mean "
                   "over 1 seed): 4.0 pp short of the study's bar of 90%, so the sweeps' comparisons "
                   "on CIFAR-10 are outside the regime the study asks for.")
    assert findings.reference_check(_baseline_frame().query("label == 'best'")) == ""


def test_best_check_holds_the_best_models_against_the_targets():
    df = _baseline_frame()
    df.loc[df["label"] == "best", "wall_seconds"] = [780.0, 840.0, 810.0, 960.0, 1080.0, 1000.0]
    text = findings.best_check(df)
    assert ("- **CIFAR-10**: the best model reaches 93.00 ± 0.50% test accuracy (mean ± sd over "
            "3 seeds): it is 1.00 pp short of the target of 94%; a run took 13.0 to 14.0 min on "
            "test CPU (within the target of about 15 min).") in text
    assert ("- **CIFAR-100**: the best model reaches 71.00 ± 1.00% test accuracy (mean ± sd over "
            "3 seeds): it is 1.00 pp short of the target of 72%; a run took 16.0 to 18.0 min on "
            "test CPU (3.0 min over the target of about 15 min).") in text
    one = findings.best_check(df.query("seed == 0"), {"cifar10": 0.92})
    assert one == ("- **CIFAR-10**: the best model reaches 93.00% test accuracy (mean over 1 seed): "
                   "it meets the target of 92% (which asks for 3 seeds, not 1); a run took 13.0 "
                   "min on test CPU (within the target of about 15 min).")
    assert findings.best_check(df.query("label == 'reference'")) == ""


def test_readme_section_states_the_reference_bar(tmp_path):
    out = tmp_path / "outputs"
    (out / "results").mkdir(parents=True)
    results.write_results(_baseline_frame(), out / "results" / "01_baseline.csv")
    section = findings.readme_section(results.read_studies(out))
    assert "paired by seed: improves" in section and "it meets the study's bar of 85%" in section
    assert "4.0 pp short of the study's bar of 55%" in section
    assert "it is 1.00 pp short of the target of 94%" in section  # best_check's lines


# -- choosing a run never reads the test set ------------------------------------------------------


def _run(seed, val_acc, label="best"):
    config = runs.RunConfig(dataset="cifar10", model="baseline", seed=seed)
    val = {} if val_acc is None else {"val_acc": val_acc, "val_loss": 1.0}
    # No "test" entry: reading a test metric while choosing would raise KeyError.
    return runs.Run(config, label, {"val": val, "history": []}, path=None)


def test_best_run_selects_on_validation_and_never_reads_test():
    candidates = [_run(0, 0.60), _run(1, 0.70), _run(2, 0.65), _run(0, 0.99, label="other")]
    chosen = report.best_run(candidates, "cifar10")
    assert chosen.config.seed == 1
    rule = report.selection_rule(candidates, "cifar10")
    assert "highest validation accuracy (70.0%, seed 1) of the 3 `best` runs" in rule


def test_best_run_without_validation_takes_the_lowest_seed_and_says_so():
    candidates = [_run(2, None), _run(1, None)]
    assert report.best_run(candidates, "cifar10").config.seed == 1
    assert "without a validation split" in report.selection_rule(candidates, "cifar10")
    with pytest.raises(ValueError, match="no run 'best' on cifar100"):
        report.best_run(candidates, "cifar100")


def test_seed_table_marks_the_exported_run_and_delta_table_names_its_index():
    df = _baseline_frame().assign(epochs_run=2)
    table = report.seed_table(df, exported=["cifar10-best-1"])
    assert len(table) == 12 and table.index.names == ["dataset", "label", "seed"]
    assert table.loc[("cifar10", "best", 1), "exported"] == "yes"
    assert (table["exported"] == "yes").sum() == 1
    assert table.loc[("cifar100", "reference", 2), "test acc %"] == 51.0
    assert table.loc[("cifar10", "best", 0), "minutes"] == pytest.approx(1 / 60, abs=0.05)
    delta = report.delta_table(df, "reference", order=["reference", "best"], name="model")
    assert delta.index.name == "model" and list(delta.index) == ["reference", "best"]
    assert delta.loc["best", "cifar100 verdict"] == "improves"


# Notebook 06: three networks at the shortest budget (x1), 3 seeds; fastnet leads resnet20 by
# 5, 6, 5 pp. At x3, one seed each: a ranking without a spread.
ARCH = {"baseline ×1": (0.80, 0.81, 0.80), "resnet20 ×1": (0.85, 0.86, 0.855),
        "fastnet ×1": (0.90, 0.92, 0.905)}
ARCH_LONG = {"baseline ×3": (0.84,), "resnet20 ×3": (0.91,), "fastnet ×3": (0.93,)}


def _architecture_frame():
    df = pd.DataFrame(_rows("06_architectures", "cifar10", ARCH)
                      + _rows("06_architectures", "cifar10", ARCH_LONG)
                      + _rows("06_architectures", "cifar100", {"baseline ×1": (0.5, 0.5, 0.5)}))
    network = df["label"].str.split(" ×").str[0]
    factor = df["label"].str.split(" ×").str[1].astype(int)
    minutes = network.map({"baseline": 2.0, "resnet20": 2.5, "fastnet": 3.0}) * factor
    epochs = network.map({"baseline": 4.5, "resnet20": 1.25, "fastnet": 2.0}) * factor
    return df.assign(model=network, wall_seconds=minutes * 60 + df["seed"] * 6, epochs=epochs)


def test_architectures_ranked_per_budget_and_paired_against_the_simple_cnn():
    sweeps = STUDIES["06_architectures"].sweeps
    assert [s.name for s in sweeps] == ["architecture, budget ×1", "architecture, budget ×3",
                                        "architecture, budget ×9"]
    text = findings.answer(_architecture_frame(), sweeps)
    assert ("highest architecture, budget ×1: `fastnet ×1` (90.8%), ahead of `resnet20 ×1` by "
            "+5.3 ± 0.6 pp (95% CI +3.9 to +6.8): a detectable lead") in text
    assert ("against `baseline ×1`: improves: `resnet20 ×1` +5.2 pp, `fastnet ×1` +10.5 pp"
            in text)
    # One seed at x3: the top network is named, its lead and comparisons stay inconclusive.
    assert "highest architecture, budget ×3: `fastnet ×3` (93.0%)" in text
    assert "inconclusive with 1 seed: `resnet20 ×3` +7.0 pp, `fastnet ×3` +9.0 pp" in text
    # x9 ran nowhere; CIFAR-100 ran x1 only (x9 is not one of its budgets: no line for it).
    assert "no run of the architecture, budget ×9 sweep" in text
    assert "CIFAR-100**: no run of the architecture, budget ×3 sweep" in text
    assert "CIFAR-100**: no run of the architecture, budget ×9" not in text
    lines = findings.lines(_architecture_frame(), "06_architectures",
                           [s.name for s in sweeps]).splitlines()
    assert lines[0].startswith("- **architecture, budget ×1, CIFAR-10** (3 seeds): test accuracy "
                               "`baseline ×1` / `resnet20 ×1` / `fastnet ×1`: 80.3 / 85.5 / 90.8%")
    assert any(x.startswith("- **architecture, budget ×1, CIFAR-100** (3 seeds)") for x in lines)


def test_cost_table_and_published_accuracy_of_each_network():
    from cnnlib.models.registry import count_parameters, create_model

    df = report.with_parameters(_architecture_frame())
    assert df.loc[df["label"] == "resnet20 ×1", "parameters"].tolist() == \
        [count_parameters(create_model("resnet20", 10))] * 3
    table = report.cost_table(_architecture_frame(), seconds=120)
    assert table[["dataset", "network", "budget"]].values.tolist() == [
        ["cifar10", "baseline", "2 min"], ["cifar10", "resnet20", "2 min"],
        ["cifar10", "fastnet", "2 min"], ["cifar10", "baseline", "6 min"],
        ["cifar10", "resnet20", "6 min"], ["cifar10", "fastnet", "6 min"],
        ["cifar100", "baseline", "2 min"]]
    row = table.iloc[1]
    assert row["parameters"] == f"{count_parameters(create_model('resnet20', 10)):,}"
    assert row["epochs"] == "1.25" and row["seeds"] == 3
    assert row["wall min"] == "2.60 ± 0.10"  # 150, 156, 162 s
    assert row["test acc %"] == "85.5 ± 0.5"
    # The published figure beside it, with its source; none for the study's own network.
    assert (row["published %"], row["published after"]) == (
        "91.25", definitions.PUBLISHED["resnet20"][1])
    assert table.iloc[0]["published %"] == "" and table.iloc[6]["published %"] == ""
    # It belongs to no budget: once per network and dataset, on the network's first row.
    assert table.iloc[4]["published %"] == table.iloc[4]["published after"] == ""
    assert table.iloc[4]["epochs"] == "3.75" and table.iloc[4]["seeds"] == 1
    # The same network with a 100-class head: 90 more rows of the last linear layer.
    params = table["parameters"].str.replace(",", "").astype(int)
    assert params[6] - params[0] == 90 * (128 + 1)
    assert "trained on" not in table  # one machine: the page names it once
    # Runs of one network trained on two machines: each row names the machines of its minutes.
    df = _architecture_frame()
    df.loc[(df["label"] == "resnet20 ×1") & (df["seed"] == 2), "hardware"] = "other CPU"
    table = report.cost_table(df, seconds=120)
    assert table["trained on"].tolist() == ["test CPU", "test CPU; other CPU"] + ["test CPU"] * 5


def test_a_budget_sweep_names_the_epochs_each_network_got():
    frame = _architecture_frame()
    frame.loc[frame["label"] == "resnet20 ×1", "epochs"] = 0.6
    lines = findings.lines(frame, "06_architectures", ("architecture, budget ×1",)).splitlines()
    assert ("Epochs the budget bought: `baseline ×1` 4.50, `resnet20 ×1` 0.60, `fastnet ×1` 2.00; "
            "`resnet20 ×1` saw each training image less than once. Regime: 3 networks, 0.6 to "
            "4.5 epochs by label") in lines[0]
    # One network on cifar100: nothing to contrast, so no epochs note there.
    assert "Epochs" not in lines[1]


# An optimizer sweep in which `adam @ chosen lr` collapsed: validation accuracy at the 10%
# of guessing on cifar10. `sgd @ chosen lr` is poor on validation (16%, above 1.5 x 10%)
# and `adamw @ chosen lr` scores 10% on test but not on validation: neither is flagged,
# since the flag reads validation accuracy only.
OPT = {"nesterov @ chosen lr": ((0.80, 0.81, 0.80), (0.80, 0.81, 0.80)),
       "sgd @ chosen lr": ((0.16, 0.16, 0.16), (0.16, 0.17, 0.16)),
       "adam @ chosen lr": ((0.10, 0.10, 0.101), (0.80, 0.80, 0.80)),
       "adamw @ chosen lr": ((0.70, 0.71, 0.70), (0.10, 0.10, 0.10))}


def _optimizer_frame():
    rows = _rows("03_depth_study", "cifar10", {k: v[0] for k, v in OPT.items()})
    df = pd.DataFrame(rows)
    test = {(k, s): t for k, v in OPT.items() for s, t in enumerate(v[1])}
    df["test_acc"] = [test[(r.label, r.seed)] for r in df.itertuples()]
    return df


def test_runs_at_chance_level_are_named_from_validation_accuracy():
    df = _optimizer_frame()
    assert findings.at_chance(df) == {"adam @ chosen lr": pytest.approx(0.10033, abs=1e-4)}
    line = findings.lines(df, "03_depth_study", ("optimizer",))
    assert line.endswith("At chance level (mean validation accuracy below 1.5× the 10% of "
                         "guessing): `adam @ chosen lr` (10.0%); these runs did not learn, so "
                         "their differences measure a failed run. Regime: baseline, 2 epochs, "
                         "1,000 training images, each label's augmentation.")
    answer = findings.answer(df, STUDIES["03_depth_study"].sweeps)
    assert "`adam @ chosen lr` -0.3 pp (at chance)" in answer
    for unflagged in ("`adamw @ chosen lr` -70.3 pp", "`sgd @ chosen lr` -64.0 pp"):
        assert unflagged in answer and f"{unflagged} (at chance)" not in answer
    # On cifar100 guessing is 1%: 10% is not chance there.
    assert findings.at_chance(df.assign(dataset="cifar100")) == {}


# -- compression: a speed-up is claimed only outside the timing rounds' spread ---------------------


def _compression(int8=(2400, 2100, 2700), channels=(2300, 2200, 2400), fp32=(1000, 950, 1050)):
    """Rows as compression.csv has them: throughput at batch 256 (median, lowest, highest)."""
    rows = []
    for variant, (median, low, high), acc in (("fp32", fp32, 0.0), ("int8", int8, -0.2),
                                              ("channels 50% + int8", channels, -0.8)):
        rows.append({"model": "best", "variant": variant, "throughput_b256": median,
                     "throughput_b256_min": low, "throughput_b256_max": high,
                     "speedup_b256": median / fp32[0], "acc_change_pp": acc,
                     "size_mb": {"fp32": 4.0, "int8": 1.0}.get(variant, 0.5)})
    return pd.DataFrame(rows)


def test_a_speedup_counts_only_over_the_whole_timing_spread():
    df = _compression()
    base = df.iloc[0]
    int8 = df.iloc[1]
    assert findings.speedup_range(int8, base) == pytest.approx((2100 / 1050, 2700 / 950))
    assert findings.meets_goal(int8) and findings.meets_goal(int8, base)  # 2.0 at the low end
    text = findings.compression_answer(df)
    # int8's median leads, but its slowest round is slower than the runner-up's fastest.
    assert "`int8` meets the goal" in text and "2.4× (2.0–2.8×)" in text
    assert ("Fastest by median: `int8`, 2.4× (2.0–2.8×), within the timing spread of "
            "`channels 50% + int8` (2.3× (2.1–2.5×))") in text
    # A median over the goal whose slow rounds fall under it does not meet it.
    slow = _compression(int8=(2400, 1900, 2700))
    assert findings.meets_goal(slow.iloc[1]) and not findings.meets_goal(slow.iloc[1], slow.iloc[0])
    assert "`channels 50% + int8` meets the goal" in findings.compression_answer(slow)
    # Spreads apart: the fastest is named as such.
    apart = findings.compression_answer(_compression(int8=(3000, 2900, 3100)))
    assert "Fastest: `int8`, 3.0× (2.8–3.3×), test accuracy -0.20 pp" in apart
