"""Findings computed from the results: the statistical rule, its wording, the README section,
and run choices that never read the test set."""

from __future__ import annotations

import pandas as pd
import pytest

from cnnlib import findings, report, results, runs

# Test accuracy per seed (fractions). Against `none`: `crop` gains 3.0, 3.2, 2.9 pp (a clear
# effect), `flip` +1, -1, +2 pp (overlaps 0), `cutout` -4, -5, -4 pp (a clear loss).
ACC = {"none": (0.50, 0.52, 0.51), "crop": (0.53, 0.552, 0.539),
       "flip": (0.51, 0.51, 0.53), "cutout": (0.46, 0.47, 0.47)}


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
    pd.DataFrame(_rows("02_augmentation_ablation", "cifar10", ACC),
                 columns=results.RESULT_COLUMNS).to_csv(out / "results" /
                                                     "02_augmentation_ablation.csv", index=False)
    # A depth sweep and a width sweep whose standard network (`depth 6` = `width 16`) is one run.
    depth = {"depth 2": (0.40, 0.41, 0.42), "depth 6": (0.50, 0.52, 0.51),
             "depth 10": (0.505, 0.53, 0.505), "width 8": (0.45, 0.46, 0.455),
             "width 16": (0.50, 0.52, 0.51)}
    rows = _rows("03_depth_study", "cifar10", depth, keys={"width 16": "depth 6"})
    pd.DataFrame(rows, columns=results.RESULT_COLUMNS).to_csv(out / "results" / "03_depth_study.csv",
                                                           index=False)


def test_interval_is_the_t_interval_of_the_paired_deltas():
    d = findings.Delta("cifar10", "b", "a", "test_acc", (1.0, 2.0, 3.0))
    assert (d.n, d.mean, d.sd) == (3, 2.0, 1.0)
    low, high = d.interval  # 2 ± t(0.975, 2) * 1 / sqrt(3), t = 4.3027
    assert low == pytest.approx(2 - 2.4841, abs=1e-3) and high == pytest.approx(2 + 2.4841, abs=1e-3)
    assert d.verdict == "no detectable difference with 3 seeds"
    assert findings.Delta("c", "b", "a", "test_acc", (3.0, 3.2, 2.9)).verdict == "improves"
    assert findings.Delta("c", "b", "a", "test_acc", (-4.0, -5.0, -4.0)).verdict == "hurts"
    one = findings.Delta("c", "b", "a", "test_acc", (9.0,))
    assert one.verdict == "no detectable difference with 1 seed" and "no interval" in one.numbers()
    gap = findings.Delta("c", "b", "a", "gap", (2.0, 2.1, 1.9))
    assert gap.verdict == "raises the gap"


def test_compare_pairs_by_seed():
    df = pd.DataFrame(_rows("s", "cifar10", ACC))
    df = df[~((df["label"] == "crop") & (df["seed"] == 2))]  # crop lacks seed 2: 2 pairs
    by_label = {d.label: d for d in findings.compare(df, "none")}
    assert set(by_label) == {"crop", "flip", "cutout"}
    assert by_label["crop"].deltas == pytest.approx((3.0, 3.2))
    assert by_label["flip"].deltas == pytest.approx((1.0, -1.0, 2.0))


def test_readme_section_follows_the_wording_rule(tmp_path):
    out = tmp_path / "outputs"
    _write_results(out)
    readme = tmp_path / "README.md"
    begin, end = results.FINDINGS
    readme.write_text(f"# x\n\nMethod text stays.\n\n{begin}\nold words\n{end}\ntail\n")
    results.collect_results(out, readme)
    text = readme.read_text()
    assert "old words" not in text and text.startswith("# x\n\nMethod text stays.\n\n")
    assert text.endswith(f"{end}\ntail\n")
    section = text.split(begin)[1].split(end)[0]
    # Clear effects say so; an overlapping one says it cannot tell.
    assert "improves: `crop` +3.0 ± 0.2 pp (95% CI +2.7 to +3.4)" in section
    assert "hurts: `cutout` -4.3 ± 0.6 pp (95% CI -5.8 to -2.9)" in section
    assert ("no detectable difference with 3 seeds: `flip` +0.7 ± 1.5 pp "
            "(95% CI -3.1 to +4.5)") in section
    assert "`flip` improves" not in section and "improves: `flip`" not in section
    # The ranking states its margin and that it is not detectable.
    assert ("highest: `depth 10` (51.3%), ahead of `depth 6` by +0.3 ± 0.8 pp "
            "(95% CI -1.6 to +2.2): a lead not detectable with 3 seeds") in section
    # The width sweep's reference is the run shared with the standard network.
    assert "Against `width 16`: hurts: `width 8`" in section
    assert "Profile `smoke`, 24 runs, trained on test CPU" in section


def test_an_unchanged_rerun_leaves_the_readme_as_it_is(tmp_path):
    out = tmp_path / "outputs"
    _write_results(out)
    readme = tmp_path / "README.md"
    readme.write_text(f"{results.BEGIN}\n{results.END}\n{results.FINDINGS[0]}\n{results.FINDINGS[1]}\n")
    results.collect_results(out, readme)
    first = readme.read_text()
    results.collect_results(out, readme)
    assert readme.read_text() == first and "improves: `crop`" in first


def test_confusion_sentence_counts_pairs_outside_a_superclass():
    pairs = pd.DataFrame({"true": ["girl", "bus", "maple"], "predicted": ["woman", "streetcar", "oak"],
                          "count": [27, 16, 23], "% of true class": [27.0, 16.0, 23.0],
                          "same superclass": [True, False, True]})
    text = findings.confusion_sentence(pairs, "cifar100", top=2)
    assert "girl→woman (27.0% of girl), bus→streetcar (16.0% of bus)" in text
    assert "2 of the 3 most confused pairs lie inside one superclass (not bus→streetcar)" in text


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
