"""The augmentation study at two budgets: its runs, the change of each paired difference
between budgets (with its Holm-corrected verdict), and the sentences and table that state it."""

from __future__ import annotations

import pandas as pd
import pytest

from cnnlib.study import definitions, findings, report, stats
from cnnlib.study import table as results

LONG = definitions.LONG
def approx(values):
    return pytest.approx(values, abs=1e-9)


SWEEP = definitions.STUDIES["02_augmentation_ablation"].sweep("augmentation, long budget")


def test_the_long_budget_repeats_four_labels_at_a_multiple_of_the_reference_epochs():
    runs = definitions.augmentation_runs("cpu")
    by = {(label, c.dataset, c.seed): c for label, c in runs}
    for ds, factor in definitions.LONG_BUDGET.items():
        for aug in definitions.LONG_AUGMENTATIONS:
            short, long = by[aug, ds, 0], by[aug + LONG, ds, 0]
            assert long.epochs == factor * short.epochs
            assert long.replace(epochs=short.epochs) == short  # nothing else changes
    assert by["crop+flip" + LONG, "cifar10", 0].epochs == 16
    assert by["crop+flip" + LONG, "cifar100", 0].epochs == 20
    # MixUp and CutMix mix half the batches; every other run keeps the key it had before.
    for label, c in runs:
        mixes = "mixup" in label or "cutmix" in label
        assert c.mix_prob == (definitions.MIX_PROB if mixes else 1.0)
    assert by["crop+flip", "cifar10", 0].key() == definitions.reference("cpu", "cifar10").key()
    definitions.STUDIES["02_augmentation_ablation"].check(runs)  # labels = the sweeps' labels


def _frame(short: dict, long: dict, dataset="cifar10") -> pd.DataFrame:
    """Rows of the two budgets: per label, test accuracy (%) per seed."""
    rows = []
    for budget, epochs, table in (("", 4, short), (LONG, 16, long)):
        for label, values in table.items():
            for seed, acc in enumerate(values):
                rows.append({"study": "02_augmentation_ablation", "label": label + budget,
                             "dataset": dataset, "model": "fastnet",
                             "options": '{"widths": [32, 128, 128]}',
                             "augmentations": label, "seed": seed, "epochs": epochs,
                             "train_images": 45000, "train_acc": acc / 100, "val_acc": acc / 100,
                             "test_acc": acc / 100, "test_loss": 1.0, "tta": 0,
                             "wall_seconds": 60.0 * epochs / 4, "hardware": "test CPU"})
    return pd.DataFrame(rows)


# `none` loses about 0 pp at 4 epochs and 3 pp at 16 (the change: about -3 pp); cutout loses
# 1.0 pp at 4 epochs and gains 1.0 pp at 16 (the sign flips); trivialaugment: noise.
SHORT = {"crop+flip": (86.0, 86.4, 86.8), "none": (86.1, 86.3, 86.9),
         "crop+flip+cutout": (85.0, 85.4, 85.8), "crop+flip+trivialaugment": (85.0, 87.4, 85.8)}
LONGER = {"crop+flip": (90.0, 90.4, 91.0), "none": (87.0, 87.5, 88.0),
          "crop+flip+cutout": (91.0, 91.4, 92.0), "crop+flip+trivialaugment": (91.5, 89.5, 91.8)}


def test_interactions_pair_each_budget_and_correct_the_changes_together():
    df = _frame(SHORT, LONGER)
    found = findings.interactions(df, SWEEP)
    assert [s.label for s, _, _ in found] == ["none", "crop+flip+cutout", "crop+flip+trivialaugment"]
    none_short, none_long, none_change = found[0]
    assert none_short.deltas == approx((0.1, -0.1, 0.1))
    assert none_long.deltas == approx((-3.0, -2.9, -3.0))
    assert none_change.deltas == approx((-3.1, -2.8, -3.1))
    assert all(c.m == 3 for _, _, c in found)  # Holm among the three changes
    # The short-budget deltas keep their own sweep's correction (its members here: 4 labels).
    assert none_short.m == 3 and none_long.m == 3
    cut_short, cut_long, cut_change = found[1]
    assert cut_short.verdict == "hurts" and cut_long.verdict == "improves"
    # The interval of the change is the t interval of the per-seed changes, widened for m = 3.
    ref = stats.Delta("cifar10", "x", "y", "test_acc", none_change.deltas)
    assert none_change.interval[0] < ref.interval[0] and none_change.interval[1] > ref.interval[1]


def test_the_finding_says_when_the_sign_flips_and_names_both_budgets():
    df = _frame(SHORT, LONGER)
    lines = findings.budget_interaction(df, SWEEP)
    assert len(lines) == 1
    text = lines[0]
    assert text.startswith("- **augmentation across budgets, CIFAR-10** (3 seeds; each against "
                           "`crop+flip` at its budget): `none` ")
    assert "`crop+flip+cutout` -1.0 ± 0.0 pp" in text and "at 4 epochs (hurts)" in text
    assert "at 16 epochs (improves): change +2.0 ± 0.0 pp" in text and "the sign flips" in text
    assert "`crop+flip+trivialaugment`" in text and "inconclusive with 3 seeds" in text
    # Its regime in a sentence of its own: network, both budgets, images, augmentation.
    assert text.endswith(". Regime: fastnet (widths 32/128/128), 4 to 16 epochs by label "
                         "(1.0 to 4.0 min of training per run), 45,000 training images, each "
                         "label's augmentation, no test-time augmentation.")
    # The report's answer names it too, with mean changes only.
    answer = findings.answer(df, definitions.STUDIES["02_augmentation_ablation"].sweeps)
    assert ("- **CIFAR-10, augmentation across budgets** (each against `crop+flip` at its budget):"
            " `none` +0.0 pp at 4 epochs (inconclusive with 3 seeds), -3.0 pp at 16 epochs "
            "(hurts): change -3.0 pp, a detectable change between budgets; `crop+flip+cutout` "
            "-1.0 pp at 4 epochs (hurts), +1.0 pp at 16 epochs (improves): change +2.0 pp, the "
            "sign flips;") in answer
    # Without the long runs there is nothing to state; the short sweep still is.
    only_short = df[~df["label"].str.endswith(LONG)]
    assert findings.budget_interaction(only_short, SWEEP) == []
    assert "no run of the augmentation, long budget sweep" in findings.answer(
        only_short, definitions.STUDIES["02_augmentation_ablation"].sweeps)


def test_the_interaction_table_has_one_row_per_variant_and_dataset():
    df = pd.concat([_frame(SHORT, LONGER), _frame(SHORT, LONGER, "cifar100")])
    table = report.interaction_table(df, SWEEP)
    assert list(table["dataset"]) == ["CIFAR-10"] * 3 + ["CIFAR-100"] * 3
    row = table.iloc[1]
    assert (row["variant"], row["verdict, reference budget"], row["verdict, long budget"]) == (
        "crop+flip+cutout", "hurts", "improves")
    assert row["change between budgets, pp"] == "+2.0 ± 0.0" and row["change"] == "detectable"
    assert table.iloc[2]["change"] == "inconclusive with 3 seeds"


def test_a_row_scored_without_tta_is_its_own_no_tta_accuracy():
    fields = {name: 0 for name in results.COLUMNS if name in results.Row.__dataclass_fields__}
    plain = results.Row(**{**fields, "test_acc": 0.87, "tta": 0}).as_dict()
    assert plain["test_acc_no_tta"] == 0.87 and "assessment" not in plain
    # With TTA only the assessment knows it: empty without one, its value with one.
    assert results.Row(**{**fields, "test_acc": 0.94, "tta": 2}).as_dict()["test_acc_no_tta"] is None
    measured = results.Row(**{**fields, "test_acc": 0.94, "tta": 2},
                           assessment={"test_acc_no_tta": 0.93}).as_dict()
    assert measured["test_acc_no_tta"] == 0.93 and list(measured) == results.COLUMNS
