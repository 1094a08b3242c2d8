"""Notebook 07's tables and sentences: the augmentation sweep and the best models judged by
corruption accuracy, calibration and accuracy without near-duplicates besides test accuracy.

Every comparison is `stats.compare`'s paired rule, run on another column of the same results
rows (`table.ASSESS_COLUMNS`); a run without an assessment (a record carried without its
model) has empty columns and is left out of the comparison it cannot join.
"""

from __future__ import annotations

import math

import pandas as pd

from cnnlib.data import duplicates
from cnnlib.data.obtain import DATASETS
from cnnlib.study.definitions import STUDIES
from cnnlib.study.findings import regime
from cnnlib.study.stats import NAMES, compare, grouped, mean_sd, n_seeds
from cnnlib.viz._figure import pretty

__all__ = ["AUGMENTATION", "LITERATURE", "METRICS", "answer", "best_table", "changed_verdicts",
           "duplicates_sentence", "families", "literature_table", "scatter_points",
           "verdict_table"]

AUGMENTATION = STUDIES["02_augmentation_ablation"].sweep("augmentation")
# What the augmentation sweep is judged by besides test accuracy, in the figures' order.
METRICS = ("corruption_acc", "ece")

# Published figures, beside ours and labelled as such; never compared by a test.
LITERATURE = {
    # Hendrycks et al., "AugMix" (ICLR 2020), Table 1: CIFAR-10-C mean corruption error (%) of
    # a WideResNet-40-2 trained 200 epochs (100 for AugMix), standard crop+flip included.
    "cifar10_c_error": {
        "source": "AugMix paper (Hendrycks et al. 2020), Table 1, WideResNet-40-2, CIFAR-10-C",
        "errors": {"standard (crop+flip)": 26.9, "cutout": 26.8, "mixup": 22.3,
                   "cutmix": 27.1, "autoaugment": 20.0, "augmix (with its JSD loss)": 11.2}},
    # Barz & Denzler, "Do we train on test data? Purging CIFAR of near-duplicates" (J. Imaging
    # 2020): share of test images with a near-duplicate in the training set.
    "duplicates": {"source": "ciFAIR (Barz & Denzler 2020)",
                   "share": {"cifar10": 3.3, "cifar100": 10.0}},
}


def _assessed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["corruption_acc"].notna()] if "corruption_acc" in df else df.iloc[0:0]


def _members(part: pd.DataFrame, sweep=AUGMENTATION) -> list[str]:
    present = set(part["label"])
    return [x for x in sweep.labels if x in present]


def scatter_points(df: pd.DataFrame, sweep=AUGMENTATION, metrics=METRICS) -> list[dict]:
    """Per dataset and label of `sweep` (assessed runs only): the means of test accuracy and of
    each metric, and the paired 95% interval and mean of its change against the reference
    (`<metric>_ci`, `<metric>_change`, pp) for `viz.robustness.clean_against`."""
    out = []
    for dataset, part, members, deltas in _by_dataset(df, sweep, ("test_acc", *metrics)):
        means = part.groupby("label")[["test_acc", *metrics]].mean()
        for label in members:
            point = {"dataset": dataset, "label": label, "reference": label == sweep.reference,
                     **{m: float(means.loc[label, m]) for m in ("test_acc", *metrics)}}
            for m, by_label in deltas.items():
                d = by_label.get(label)
                point[f"{m}_ci"] = None if d is None or d.n < 2 else d.interval
                point[f"{m}_change"] = None if d is None else d.mean
            out.append(point)
    return out


def _by_dataset(df: pd.DataFrame, sweep, metrics):
    """Per dataset with an assessed reference run: its rows, the sweep's labels present, and
    per metric the paired deltas against the reference by label."""
    for dataset, part in _assessed(df).groupby("dataset", sort=False):
        members = _members(part, sweep)
        if sweep.reference in members:
            yield dataset, part, members, {
                m: {d.label: d for d in compare(part, sweep.reference, members, m)}
                for m in metrics}


def _verdict(d) -> str:
    return f"{d.change()} pp, {d.verdict}"


def verdict_table(df: pd.DataFrame, sweep=AUGMENTATION, metrics=("test_acc", *METRICS)
                  ) -> pd.DataFrame:
    """Per dataset and variant: its paired change against the reference and the verdict, for
    each metric (a column each, named as a reader names it)."""
    rows = []
    for dataset, _, members, by_metric in _by_dataset(df, sweep, metrics):
        for label in members:
            if label == sweep.reference:
                continue
            rows.append({"dataset": dataset, sweep.name: label,
                         **{NAMES.get(m, (m,))[0]: _verdict(by_metric[m][label]) for m in metrics
                            if label in by_metric[m]}})
    return pd.DataFrame(rows)


def changed_verdicts(df: pd.DataFrame, sweep=AUGMENTATION) -> list[str]:
    """Per dataset, a sentence naming the variants whose verdict on corruption accuracy or
    calibration differs from their verdict on test accuracy (the finding peers do not report)."""
    lines = []
    for dataset, part, members, by_metric in _by_dataset(df, sweep, ("test_acc", *METRICS)):
        changed = []
        for label, acc in by_metric["test_acc"].items():
            other = [f"{NAMES[m][0]} {by_metric[m][label].verdict}" for m in METRICS
                     if label in by_metric[m] and by_metric[m][label].verdict != acc.verdict]
            if other:
                changed.append(f"`{label}` (test accuracy: {acc.verdict}; {'; '.join(other)})")
        n = int(part.groupby("label")["seed"].nunique().min())
        head = f"**{pretty(dataset)}** ({regime(part, members)}; {n_seeds(n)})"
        lines.append(f"- {head}: " + (
            "the verdict against `" + sweep.reference + "` changes for " + ", ".join(changed)
            if changed else "every variant keeps its test-accuracy verdict on corruption "
                            "accuracy and calibration") + ".")
    return lines


def answer(df: pd.DataFrame, sweep=AUGMENTATION) -> str:
    """Notebook 07's answer: per dataset, the regime, then the variants grouped by verdict on
    corruption accuracy and on calibration error (paired against the reference); the datasets
    whose runs carry no assessment say so."""
    lines = []
    for dataset in dict.fromkeys(df["dataset"]) if len(df) else ():
        part = _assessed(df[df["dataset"] == dataset])
        members = _members(part, sweep)
        if sweep.reference not in members:
            lines.append(f"- **{pretty(dataset)}**: no assessed `{sweep.reference}` run (a record "
                         "carried without its model has no assessment), nothing to compare.")
            continue
        n = int(part[part["label"].isin(members)].groupby("label")["seed"].nunique().min())
        said = [f"{NAMES[m][0]} against `{sweep.reference}`: "
                + grouped(compare(part, sweep.reference, members, m), short=True) for m in METRICS]
        lines.append(f"- **{pretty(dataset)}** ({regime(part, members)}; {n_seeds(n)}): "
                     + "; ".join(said) + ".")
    return "\n".join(lines) if lines else "- No assessed runs yet."


def _cell(values: pd.Series, scale: float = 100, digits: int = 1) -> str:
    values = values.dropna()
    if not len(values):
        return ""
    sd = values.std(ddof=1) * scale if len(values) > 1 else math.nan
    return mean_sd(values.mean() * scale, sd, digits)


def best_table(df: pd.DataFrame, label: str = "best") -> pd.DataFrame:
    """The `label` runs per dataset, mean ± sd over seeds: clean test accuracy (with the run's
    TTA, and without it), the assessed subset's clean and corrupted accuracy (no TTA), accuracy without
    ciFAIR's near-duplicates, ECE before and after temperature scaling, the temperature."""
    rows = []
    for dataset, part in _assessed(df[df["label"] == label]).groupby("dataset", sort=False):
        rows.append({"dataset": dataset, "regime": regime(part),
                     "seeds": part["seed"].nunique(),
                     "test acc %": _cell(part["test_acc"]),
                     "without TTA %": _cell(part["test_acc_no_tta"]),
                     "without near-duplicates %": _cell(part["dup_free_acc"]),
                     "assessed images": int(part["assessed_images"].iloc[0]),
                     "subset, clean %": _cell(part["clean_subset_acc"]),
                     "subset, corrupted %": _cell(part["corruption_acc"]),
                     "ECE %": _cell(part["ece"]), "ECE after scaling %": _cell(part["ece_scaled"]),
                     "temperature": _cell(part["temperature"], 1, 2),
                     "seconds to assess": _cell(part["assess_seconds"], 1, 0)})
    return pd.DataFrame(rows)


def families(df: pd.DataFrame, label: str = "best") -> dict[str, dict[str, float]]:
    """Per dataset, the `label` runs' mean accuracy per corruption family (over seeds)."""
    out = {}
    for dataset, part in _assessed(df[df["label"] == label]).groupby("dataset", sort=False):
        cols = [c for c in part.columns if c.startswith("corruption_") and c != "corruption_acc"]
        out[dataset] = {c.removeprefix("corruption_"): float(part[c].mean()) for c in cols}
    return out


def literature_table(df: pd.DataFrame, sweep=AUGMENTATION) -> pd.DataFrame:
    """The AugMix paper's CIFAR-10-C errors beside this study's mean corruption error of the
    matching augmentations (CIFAR-10, assessed runs), labelled as the literature's."""
    lit = LITERATURE["cifar10_c_error"]
    ours = _assessed(df[df["dataset"] == DATASETS[0]]).groupby("label")["corruption_acc"].mean()
    match = {"standard (crop+flip)": sweep.reference, "cutout": "crop+flip+cutout",
             "mixup": "crop+flip+mixup", "cutmix": "crop+flip+cutmix",
             "autoaugment": "crop+flip+autoaugment", "augmix (with its JSD loss)": "crop+flip+augmix"}
    return pd.DataFrame([{"augmentation": name, "literature error %": error,
                          "source": lit["source"],
                          "this study's error %": (f"{100 * (1 - ours[match[name]]):.1f}"
                                                   if match[name] in ours else "")}
                         for name, error in lit["errors"].items()])


def duplicates_sentence(root=None) -> str:
    """How many test images ciFAIR's lists name per dataset, beside the paper's share."""
    shares = LITERATURE["duplicates"]["share"]
    try:
        listed = {ds: len(duplicates.duplicate_test_ids(ds, root)) for ds in DATASETS}
    except duplicates.DuplicatesUnavailable as e:
        return f"ciFAIR's lists are not available here: {e}"
    return "; ".join(f"{pretty(ds)}: ciFAIR's lists name {listed[ds]:,} of the 10,000 test "
                     f"images ({listed[ds] / 100:.1f}%; {LITERATURE['duplicates']['source']} "
                     f"reports {shares[ds]:g}%)" for ds in DATASETS) + "."
