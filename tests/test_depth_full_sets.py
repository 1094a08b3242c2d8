"""The depth question in the seed's regime: the simple CNN at each depth on the full training
sets of both datasets with crop and flip, beside the 5,000-image overfitting sub-study."""

from __future__ import annotations

import pandas as pd

from cnnlib.study import definitions, findings
from cnnlib.study.definitions import FULL_SET_DEPTHS, STUDIES
from cnnlib.training.config import RECIPES

SWEEP = "depth on the full training sets"


def test_the_depths_train_on_the_full_sets_of_both_datasets_with_the_recipe():
    runs = definitions.depth_runs("cpu")
    assert len(runs) == len(FULL_SET_DEPTHS) * 2 * 3  # depths x datasets x seeds
    assert {(c.dataset, label) for label, c in runs} == {
        (ds, f"depth {d} (full set)") for ds in ("cifar10", "cifar100") for d in FULL_SET_DEPTHS}
    for label, c in runs:
        assert (c.model, c.train_subset, c.val_size, c.epochs) == ("baseline", 0, 5000, 10), label
        assert c.model_options.get("depth", 6) == int(label.split()[1]), label
        assert set(c.model_options) <= {"depth"}  # the standard width
        for field in ("augment", "label_smoothing", "optimizer", "lr", "schedule", "batch_size",
                      "weight_decay"):
            assert getattr(c, field) == RECIPES["baseline"][field], (label, field)
    assert {c.seed for _, c in runs} == {0, 1, 2}
    # Not one of the overfitting sub-study's runs, and labels of its own.
    sub_study = {c.key() for _, c in definitions.overfitting_runs("cpu")}
    assert not sub_study & {c.key() for _, c in runs}
    assert not {label for label, _ in runs} & {label for label, _ in
                                                definitions.overfitting_runs("cpu")}


def test_the_smoke_depths_are_tiny_and_keep_the_reference_on_cifar100():
    runs = definitions.depth_runs("smoke")
    by_dataset = {ds: [label for label, c in runs if c.dataset == ds]
                  for ds in ("cifar10", "cifar100")}
    assert by_dataset["cifar10"] == [f"depth {d} (full set)" for d in FULL_SET_DEPTHS]
    assert by_dataset["cifar100"] == ["depth 6 (full set)", "depth 10 (full set)"]
    assert {(c.train_subset, c.val_size, c.epochs, c.model_options.get("width"))
            for _, c in runs} == {(256, 128, 2, 8)}
    sweep = STUDIES["03_depth_study"].sweep(SWEEP)
    assert sweep.reference == "depth 6 (full set)" and sweep.rank
    assert sweep.question == ("Does depth help CIFAR-10, and does it overfit CIFAR-100, on the "
                              "full training sets?")
    assert "depth_full_sets.png" in STUDIES["03_depth_study"].figures


def _rows(dataset, per_depth):
    """Rows of the sweep on `dataset`: depth -> (train accuracies, validation accuracies) by seed."""
    rows = []
    for depth, (train, val) in per_depth.items():
        for seed, (t, v) in enumerate(zip(train, val, strict=True)):
            rows.append({"study": "03_depth_study", "label": f"depth {depth} (full set)",
                         "dataset": dataset, "model": "baseline", "seed": seed,
                         "options": "{}" if depth == 6 else f'{{"depth": {depth}}}',
                         "augmentations": "crop+flip", "epochs": 10, "train_images": 45000,
                         "tta": 0, "train_acc": t, "val_acc": v, "test_acc": v,
                         "profile": "cpu", "run_key": f"{dataset}-{depth}-{seed}"})
    return rows


def test_the_findings_state_accuracy_and_gap_per_dataset():
    # CIFAR-10: depth 10 above depth 6 by 2, 2.5, 2 pp, the same gap; CIFAR-100: depth 10 as
    # accurate, its gap 6, 6.5, 6 pp wider.
    df = pd.DataFrame(
        _rows("cifar10", {6: ((0.80, 0.81, 0.82), (0.78, 0.79, 0.80)),
                          10: ((0.82, 0.835, 0.84), (0.80, 0.815, 0.82))})
        + _rows("cifar100", {6: ((0.52, 0.53, 0.54), (0.50, 0.51, 0.52)),
                             10: ((0.58, 0.595, 0.60), (0.50, 0.51, 0.52))}))
    gap = findings.lines(df, "03_depth_study", (SWEEP,), metric="gap").splitlines()
    acc = findings.lines(df, "03_depth_study", (SWEEP,)).splitlines()
    assert gap[1].startswith(f"- **{SWEEP}, CIFAR-100** (3 seeds): train − validation gap "
                             "`depth 6 (full set)` / `depth 10 (full set)`: 2.0 / 8.2 pp; "
                             "highest: `depth 10 (full set)` (8.2 pp)")
    assert "raises the gap: `depth 10 (full set)` +6.2 ± 0.3 pp (95% CI +5.4 to +6.9)" in gap[1]
    assert "inconclusive with 3 seeds: `depth 10 (full set)` +0.0" in gap[0]
    assert acc[0].startswith(f"- **{SWEEP}, CIFAR-10** (3 seeds): test accuracy "
                             "`depth 6 (full set)` / `depth 10 (full set)`: 79.0 / 81.2%")
    assert "improves: `depth 10 (full set)` +2.2 ± 0.3 pp (95% CI +1.4 to +2.9)" in acc[0]
    assert acc[1].endswith("Regime: baseline (each label's options), 10 epochs, 45,000 training "
                           "images, crop+flip, no test-time augmentation.")
