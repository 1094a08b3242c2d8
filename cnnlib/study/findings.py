"""Findings: the sentences about the results, computed from the results tables.

Every comparison follows one rule, `paired`'s: each variant's run is paired with the
reference run of the same seed and dataset, and a difference counts only when the 95%
confidence interval of the per-seed differences excludes 0. A sweep's line also says when
it ran outside a regime that can answer it: labels whose runs stayed at chance level, and
budgets that bought the networks different epochs.

The notebooks print these sentences (the answer at the top of each report) and
`python -m cnnlib.study.table collect` writes them into the README's findings section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cnnlib.data.obtain import NUM_CLASSES
from cnnlib.study.stats import (
    CONFIDENCE,
    NAMES,
    Delta,
    Ranking,
    compare,
    grouped,
    metric_values,
    n_seeds,
    rank,
)

__all__ = [
    "BEST_TARGETS", "CHANCE_FACTOR", "CONFIDENCE", "REFERENCE_TARGETS", "Delta", "Ranking", "SWEEPS",
    "Sweep", "answer", "at_chance", "baseline_answer", "best_check", "compare", "compression_answer",
    "confusion_sentence", "early_stopping_table", "epochs_saved", "lines", "rank", "readme_section",
    "reference_check", "regime_notes", "sweep_lines",
]

# -- the study's sweeps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """Labels of one study table compared with one reference.

    `labels`: a prefix shared by the sweep's labels, or the labels themselves.
    `reference`: a label; None means the variant that is the study's standard network
    (the label whose runs are those of `standard`).
    """

    name: str
    labels: str | tuple[str, ...]
    reference: str | None = None
    standard: str = "depth 6"
    rank: bool = False  # state which label is highest, and its margin

    def members(self, df) -> list[str]:
        """The sweep's labels present in `df` (one dataset's rows), in the table's order."""
        present = list(df["label"].unique())
        if isinstance(self.labels, str):
            return [x for x in present if x.startswith(self.labels)]
        return [x for x in self.labels if x in present]

    def reference_label(self, df) -> str | None:
        """The reference among one dataset's rows (None: no such run)."""
        if self.reference is not None:
            return self.reference
        keys = set(df.loc[df["label"] == self.standard, "run_key"])
        for label in self.members(df):
            if keys and set(df.loc[df["label"] == label, "run_key"]) == keys:
                return label
        return None


# Labels as `studies` writes them; a tuple keeps the order of the figures.
_OPTIMIZERS = tuple(f"{opt} @ {lr}" for opt in ("sgd", "nesterov", "adam", "adamw")
                    for lr in ("reference lr", "range-test lr"))
SWEEPS = {
    "02_augmentation_ablation": [Sweep("augmentation", "", reference="crop+flip")],
    "03_depth_study": [
        Sweep("depth", "depth ", rank=True),
        Sweep("width", "width "),
        Sweep("dropout", "dropout "),
        Sweep("weight decay", "weight decay "),
        Sweep("early stopping", ("no early stopping", "early stopping"),
              reference="no early stopping"),
        Sweep("optimizer", _OPTIMIZERS, reference="nesterov @ reference lr", rank=True),
    ],
    "06_architectures": [Sweep("architecture", ("baseline", "resnet20", "resnet56", "wrn16_4",
                                                "densenet_bc", "fastnet"),
                               reference="baseline", rank=True)],
}




# A label whose runs' mean validation accuracy stays below this multiple of guessing did not
# learn. Such a run can keep a finite loss, so the trainer's divergence check, which looks
# for a non-finite loss, does not catch it.
CHANCE_FACTOR = 1.5


def at_chance(part) -> dict[str, float]:
    """One dataset's labels whose runs stayed at chance level: label -> mean validation accuracy.

    Validation, not test accuracy: the flag reads no test image.
    """
    dataset = part["dataset"].iloc[0]
    if dataset not in NUM_CLASSES or "val_acc" not in part:
        return {}
    acc = part.groupby("label", sort=False)["val_acc"].mean().dropna()
    return {k: float(v) for k, v in acc.items() if v < CHANCE_FACTOR / NUM_CLASSES[dataset]}


def regime_notes(part, members) -> list[str]:
    """What one dataset's sweep ran under that its numbers alone do not show: labels at chance
    level, and the epochs a wall-clock budget bought each label when they differ."""
    notes = []
    chance = {k: v for k, v in at_chance(part).items() if k in members}
    if chance:
        guess = 100 / NUM_CLASSES[part["dataset"].iloc[0]]
        notes.append(f"At chance level (mean validation accuracy below {CHANCE_FACTOR:g}× the "
                     f"{guess:g}% of guessing): "
                     + ", ".join(f"`{k}` ({v * 100:.1f}%)" for k, v in chance.items())
                     + "; these runs did not learn, so their differences measure a failed run")
    epochs = part[part["label"].isin(members)].groupby("label", sort=False)["epochs"].mean()
    if epochs.nunique() > 1:  # a wall-clock budget: each label trained the epochs it could afford
        short = [f"`{k}`" for k in members if epochs[k] < 1]
        notes.append("Epochs the budget bought: "
                     + ", ".join(f"`{k}` {epochs[k]:.2f}" for k in members)
                     + (f"; {', '.join(short)} saw each training image less than once" if short
                        else ""))
    return notes


def sweep_lines(df, sweep: Sweep, metric: str = "test_acc") -> list[str]:
    """Markdown bullets, one per dataset: values, the ranking (if asked), the comparisons."""
    name, unit = NAMES.get(metric, (metric, ""))
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        members = sweep.members(part)
        if not members:
            continue
        part = part[part["label"].isin(members) | (part["label"] == sweep.standard)]
        means = metric_values(part, metric).groupby(part["label"], sort=False).mean() * 100
        n = part[part["label"].isin(members)].groupby("label")["seed"].nunique()
        seeds = n_seeds(int(n.min())) if n.min() == n.max() else f"{n.min()}-{n.max()} seeds"
        text = (f"- **{sweep.name}, {dataset}** ({seeds}): {name} "
                f"{' / '.join(f'`{x}`' for x in members)}: "
                f"{' / '.join(f'{means[x]:.1f}' for x in members)}{unit}")
        if sweep.rank:
            text += f"; {rank(part, members, metric)[0].sentence()}"
        reference = sweep.reference_label(part)
        if reference is not None and reference in members:
            text += f". Against `{reference}`: {grouped(compare(part, reference, members, metric))}"
        else:
            text += f" (no `{sweep.reference or sweep.standard}` run here to compare with)"
        lines.append(". ".join([text, *regime_notes(part, members)]) + ".")
    return lines


# -- the notebooks' answers -----------------------------------------------------------------------


def baseline_answer(df) -> str:
    """Notebook 01: the best model against the sweeps' reference network, per dataset."""
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        acc = part.groupby("label")["test_acc"]
        n = part.groupby("label")["seed"].nunique()
        if not {"reference", "best"} <= set(acc.groups):
            continue
        model = part.loc[part["label"] == "best", "model"].iloc[0]
        d = compare(part, "reference", ["best"])[0]
        lines.append(f"- **{dataset}**: the best model ({model}, {n_seeds(int(n['best']))}) "
                     f"reaches {acc.mean()['best'] * 100:.1f}% test accuracy, the sweeps' "
                     f"reference network ({n_seeds(int(n['reference']))}) "
                     f"{acc.mean()['reference'] * 100:.1f}%; "
                     f"paired by seed: {d.verdict}, {d.numbers()}.")
    return "\n".join(lines)


# The published best models' targets: mean test accuracy over >= 3 seeds, about 15 min a run.
BEST_TARGETS, BEST_MINUTES = {"cifar10": 0.94, "cifar100": 0.72}, 15


def best_check(df, targets: dict | None = None, minutes: float = BEST_MINUTES) -> str:
    """Notebook 01: per dataset, the `best` runs' mean test accuracy and wall time per run
    against the project's targets (two decimals: a target can be missed by a tenth)."""
    targets = BEST_TARGETS if targets is None else targets
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        best = part[(part["label"] == "best") & part["test_acc"].notna()]
        if dataset not in targets or not len(best):
            continue
        acc, bar = best["test_acc"] * 100, targets[dataset] * 100
        spread, gap = f" ± {acc.std():.2f}" if len(acc) > 1 else "", acc.mean() - bar
        verdict = ("meets" if gap >= 0 else f"is {-gap:.2f} pp short of") + f" the target of {bar:g}%"
        if len(acc) < 3:
            verdict += f" (which asks for 3 seeds, not {len(acc)})"
        low, high = best["wall_seconds"].min() / 60, best["wall_seconds"].max() / 60
        took = f"{low:.1f}" if len(best) == 1 else f"{low:.1f} to {high:.1f}"
        pace = "within" if high <= minutes else f"{high - minutes:.1f} min over"
        hardware = "; ".join(best["hardware"].dropna().unique())
        lines.append(f"- **{dataset}**: the best model reaches {acc.mean():.2f}{spread}% test "
                     f"accuracy (mean{' ± sd' if spread else ''} over {n_seeds(len(acc))}): it "
                     f"{verdict}; a run took {took} min on {hardware} ({pace} the target of "
                     f"about {minutes:g} min).")
    return "\n".join(lines)


# The bar the study sets its reference network (mean test accuracy over seeds, cpu profile):
# below it, most changes a sweep makes would vanish in an undertrained network's noise.
REFERENCE_TARGETS = {"cifar10": 0.85, "cifar100": 0.55}


def reference_check(df, targets: dict | None = None) -> str:
    """Notebook 01: per dataset, whether the `reference` runs' mean test accuracy meets its bar."""
    targets = REFERENCE_TARGETS if targets is None else targets
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        acc = part.loc[part["label"] == "reference", "test_acc"].dropna() * 100
        if dataset not in targets or not len(acc):
            continue
        bar = targets[dataset] * 100
        spread = f" ± {acc.std():.1f}" if len(acc) > 1 else ""
        text = (f"- **{dataset}**: the reference network reaches {acc.mean():.1f}{spread}% test "
                f"accuracy (mean{' ± sd' if spread else ''} over {n_seeds(len(acc))}): ")
        if acc.mean() >= bar:
            text += (f"it meets the study's bar of {bar:g}%, so the sweeps on {dataset} run in "
                     "the regime the study asks for.")
        else:
            text += (f"{bar - acc.mean():.1f} pp short of the study's bar of {bar:g}%, so the "
                     f"sweeps' comparisons on {dataset} are outside the regime the study asks for.")
        lines.append(text)
    return "\n".join(lines)


def answer(df, sweeps: list[Sweep]) -> str:
    """A study's answer in one bullet per dataset: every comparison of its sweeps grouped by
    verdict (mean changes only), and the rankings the sweeps ask for."""
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        deltas, ranks, refs, marks = [], [], {}, {}
        for sweep in sweeps:
            members = sweep.members(part)
            reference = sweep.reference_label(part)
            if reference is not None and reference in members:
                deltas += compare(part, reference, members)
                marks.update({k: "at chance" for k in at_chance(part) if k in members})
                refs[f"`{sweep.reference}`" if sweep.reference else "the standard network"] = 1
            if sweep.rank and members:
                ranks.append(rank(part, members)[0].sentence(f"highest {sweep.name}"))
        if deltas or ranks:
            refs = list(refs)
            refs = ", ".join(refs[:-1]) + " and " + refs[-1] if len(refs) > 1 else "".join(refs)
            text = f"- **{dataset}**" + (f", against {refs}: {grouped(deltas, short=True, marks=marks)}"
                                         if deltas else "")
            lines.append("; ".join([text, *ranks]) + ".")
    return "\n".join(lines)


def lines(df, study: str, names, metric: str = "test_acc") -> str:
    """`sweep_lines` of the sweeps of `study` named in `names`, as one markdown list."""
    return "\n".join(x for s in SWEEPS[study] if s.name in names for x in sweep_lines(df, s, metric))


def early_stopping_table(df, stopped: str = "early stopping", full: str = "no early stopping"):
    """Notebook 03: per dataset and seed, the early-stopped run beside the same run without it.

    Epochs saved are the schedule's epochs the stopped run did not train (the full run trains
    them all); its test accuracy is that of the weights it restored (its best epoch).
    """
    import pandas as pd

    rows = []
    for (dataset, seed), part in df.groupby(["dataset", "seed"], sort=False):
        a, b = part[part["label"] == full], part[part["label"] == stopped]
        if not (len(a) and len(b)):
            continue
        a, b = a.iloc[0], b.iloc[0]
        schedule = math.ceil(b["epochs"])
        best = None if pd.isna(b["best_epoch"]) else int(b["best_epoch"])
        rows.append({"dataset": dataset, "seed": int(seed), "schedule": schedule,
                     "epochs run": int(b["epochs_run"]), "best epoch": best,
                     "epochs saved": schedule - int(b["epochs_run"]),
                     "test acc % without": round(a["test_acc"] * 100, 1),
                     "test acc % with": round(b["test_acc"] * 100, 1),
                     "Δ pp": round((b["test_acc"] - a["test_acc"]) * 100, 1)})
    return pd.DataFrame(rows, columns=["dataset", "seed", "schedule", "epochs run", "best epoch",
                                       "epochs saved", "test acc % without", "test acc % with",
                                       "Δ pp"])


def epochs_saved(df, stopped: str = "early stopping", full: str = "no early stopping") -> str:
    """Notebook 03: per dataset, the epochs early stopping saved (per seed and on average)
    and its paired change in test accuracy against the same runs without it."""
    lines = []
    for dataset, part in early_stopping_table(df, stopped, full).groupby("dataset", sort=False):
        per_seed = "; ".join(
            f"seed {r['seed']}: " + (f"stopped after epoch {r['epochs run']}"
                                     if r["epochs saved"] else "ran every epoch")
            + f", weights of epoch {r['best epoch']} restored" for _, r in part.iterrows())
        share = part["epochs saved"].sum() / part["schedule"].sum()
        d = compare(df[df["dataset"] == dataset], full, [stopped])[0]
        lines.append(f"- **early stopping, {dataset}** ({n_seeds(len(part))}): "
                     f"{part['epochs saved'].mean():.1f} of {part['schedule'].iloc[0]} epochs "
                     f"saved on average ({share:.0%} of the schedule; {per_seed}); test accuracy "
                     f"{part['test acc % with'].mean():.1f}% with, "
                     f"{part['test acc % without'].mean():.1f}% without: {d.verdict}, "
                     f"{d.numbers()}.")
    return "\n".join(lines)


def compression_answer(df) -> str:
    """Notebook 05: per model, the fastest and the smallest variant against fp32."""
    lines = []
    for model, part in df.groupby("model", sort=False):
        rest = part[part["variant"] != "fp32"]
        if not len(rest):
            continue
        fast = rest.loc[rest["speedup_b256"].idxmax()]
        small = rest.loc[rest["size_mb"].idxmin()]
        lines.append(f"- **{model}**: fastest `{fast['variant']}`, {fast['speedup_b256']:.1f}× "
                     f"the fp32 throughput at batch 256, test accuracy "
                     f"{fast['acc_change_pp']:+.2f} pp; smallest `{small['variant']}`, "
                     f"{small['size_mb']:.2f} MB, test accuracy {small['acc_change_pp']:+.2f} pp "
                     "(each variant measured once: no interval).")
    return "\n".join(lines)


def confusion_sentence(pairs, dataset: str, top: int = 3) -> str:
    """The most confused pairs of a `report.confused_pairs` frame (as saved to tables/)."""
    if not len(pairs):
        return f"- **{dataset}**: no test image was confused with another class."
    named = ", ".join(f"{r['true']}→{r['predicted']} ({r['% of true class']:.1f}% of "
                      f"{r['true']})" for _, r in pairs.head(top).iterrows())
    text = f"- **{dataset}**: most confused {named}"
    if "same superclass" in pairs:
        same = pairs["same superclass"].astype(str).str.lower() == "true"
        others = ", ".join(f"{t}→{p}" for t, p in zip(pairs.loc[~same, "true"],
                                                        pairs.loc[~same, "predicted"],
                                                        strict=True))
        text += (f"; {int(same.sum())} of the {len(pairs)} most confused pairs lie inside one "
                 f"superclass" + (f" (not {others})" if others else ""))
    return text + "."


# -- the README's findings section ------------------------------------------------------------------


def _readme_lines(df, sweep: Sweep) -> list[str]:
    """A sweep's README lines; early stopping's also says what it saved (as notebook 03 does)."""
    if sweep.name == "early stopping":
        return epochs_saved(df, stopped=sweep.labels[1], full=sweep.reference).splitlines()
    return sweep_lines(df, sweep)


def readme_section(out) -> str:
    """The README's findings, from <out>/results/<study>.csv and <out>/tables/confused_pairs_*."""
    import pandas as pd

    out = Path(out)
    studies = {p.stem: pd.read_csv(p) for p in sorted((out / "results").glob("*.csv"))}
    studies = {k: v for k, v in studies.items() if len(v)}
    if not studies:
        return "_No results yet: run `./run_all.sh`._"
    every = pd.concat(studies.values(), ignore_index=True).drop_duplicates("run_key")
    profiles = ", ".join(f"`{p}`" for p in every["profile"].dropna().unique())
    hardware = "; ".join(str(h) for h in every["hardware"].dropna().unique())
    parts = [f"Profile {profiles}, {len(every)} runs, trained on {hardware}. Test accuracy; "
             f"Δ: paired by seed against the reference, mean ± sd, {CONFIDENCE:.0%} CI."]
    if "01_baseline" in studies:
        parts.append("**The sweeps' reference network against the best model**\n\n"
                     + baseline_answer(studies["01_baseline"]) + "\n"
                     + best_check(studies["01_baseline"]) + "\n"
                     + reference_check(studies["01_baseline"]))
    for study, sweeps in SWEEPS.items():
        if study in studies:
            lines = [x for s in sweeps for x in _readme_lines(studies[study], s)]
            title = study.split("_", 1)[1].replace("_", " ")
            parts.append(f"**{title[0].upper()}{title[1:]}**\n\n" + "\n".join(lines))
    confusions = []
    for dataset in ("cifar10", "cifar100"):
        path = out / "tables" / f"confused_pairs_{dataset}.csv"
        if path.exists():
            confusions.append(confusion_sentence(pd.read_csv(path), dataset))
    if confusions:
        parts.append("**What the best models confuse** (test images)\n\n" + "\n".join(confusions))
    return "\n\n".join(parts)
