"""Findings: the sentences about the results, computed from the results tables.

Every comparison follows one rule, `stats`': each variant's run is paired with the
reference run of the same seed and dataset, and a difference counts only when the 95%
confidence interval of the per-seed differences excludes 0. A sweep's line also says when
it ran outside a regime that can answer it: labels whose runs stayed at chance level, and
budgets that bought the networks different epochs.

The notebooks print these sentences (the answer at the top of each report) and
`python -m cnnlib.study collect` writes them into the README's findings section.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from cnnlib.data.obtain import NUM_CLASSES
from cnnlib.study import lr_grid
from cnnlib.study.definitions import (
    LONG,
    SETTINGS,
    STUDIES,
    early_stopping_rule,
    recorded_choice,
    recorded_suggestions,
)
from cnnlib.study.stats import (
    CONFIDENCE,
    NAMES,
    compare,
    grouped,
    holm,
    interaction,
    metric_values,
    n_seeds,
    plus_minus,
    rank,
    signed,
)
from cnnlib.study.sweeps import Sweep
from cnnlib.viz._figure import pretty

__all__ = [
    "BEST_TARGETS", "CHANCE_FACTOR", "COMPRESSION_GOAL", "REFERENCE_TARGETS", "TTA_WORDS",
    "answer", "at_chance", "baseline_answer", "best_check", "budget_interaction", "bundle",
    "compression_answer", "confusion_sentence", "early_stopping_table", "epochs_saved",
    "interactions", "lines", "lr_grid_lines", "meets_goal", "options_words", "readme_section",
    "reference_check",
    "regime", "regime_notes", "speedup_range", "sweep_finding", "sweep_lines",
]

# Each sweep's labels and reference come from `definitions.STUDIES`, which makes the runs.
_STOPPING = STUDIES["03_depth_study"].sweep("early stopping")


TTA_WORDS = {0: "none", 1: "flip", 2: "flip and shift"}  # test-time augmentation levels


def options_words(text) -> str:
    """A results row's model options ('{"widths": [32, 128, 128]}') as words."""
    try:
        options = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return str(text)
    return ", ".join(f"{k} {'/'.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in options.items())


def _augment_words(augment: str) -> str:
    return "no augmentation" if augment in ("", "none") else augment


def _span(values, fmt, what: str) -> str:
    """One value as itself, several as their range, none as ""."""
    values = sorted(set(values))
    if not values:
        return ""
    if len(values) == 1:
        return f"{fmt(values[0])} {what}"
    return f"{fmt(values[0])} to {fmt(values[-1])} {what}"


def regime(part, labels=None) -> str:
    """The regime a finding holds under, from its rows (of the `labels` given, else all): the
    network, epochs, training images, augmentation and test-time augmentation. What the
    labels share is stated once; what they vary is named as varying."""
    if labels is not None:
        part = part[part["label"].isin(labels)]
    if not len(part):
        return ""
    models = list(dict.fromkeys(part["model"]))
    options = set(part["options"].fillna("").astype(str))
    if len(models) > 1:
        network = f"{len(models)} networks"
    elif len(options) == 1:
        words = options_words(options.pop())
        network = models[0] + (f" ({words})" if words else "")
    else:
        network = f"{models[0]} (each label's options)"
    epochs = part["epochs"].dropna().round(2)
    augment = set(part["augmentations"].fillna("").astype(str))
    tta = sorted({int(x) for x in part["tta"].dropna()}) if "tta" in part else []
    parts = [network,
             _span(epochs, lambda x: f"{x:g}", "epochs") + (
                 f" by label ({_span(part['wall_seconds'].dropna() / 60, lambda x: f'{x:.1f}', 'min')}"
                 " of training per run)" if epochs.nunique() > 1 else ""),
             _span(part["train_images"].dropna().astype(int), lambda x: f"{x:,}",
                   "training images"),
             (_augment_words(augment.pop()) if len(augment) == 1
              else "each label's augmentation"),
             "; ".join("no test-time augmentation" if not t
                       else f"test-time augmentation ({TTA_WORDS.get(t, t)})" for t in tta)]
    return ", ".join(x for x in parts if x)


def _members(df, sweep: Sweep) -> list[str]:
    """The sweep's labels present in `df` (one dataset's rows), in the figures' order."""
    present = set(df["label"])
    return [x for x in sweep.labels if x in present]


def _missing(sweep: Sweep, members: list[str], short: bool = False) -> str | None:
    """What a dataset's rows lack for the sweep's comparisons (None: nothing)."""
    if not members:
        return f"no run of the {sweep.name} sweep" + (
            "" if short else f" ({' / '.join(f'`{x}`' for x in sweep.labels)})")
    if sweep.reference not in members:
        return f"no `{sweep.reference}` run to compare the {sweep.name} sweep with"
    return None


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
    """Markdown bullets, one per dataset: values, the ranking (if asked), the comparisons; a
    grid's choice (`lr_grid_lines`)."""
    if sweep.grid:
        return lr_grid_lines(df, sweep)
    name, unit = NAMES.get(metric, (metric, ""))
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        if not sweep.runs_on(dataset):
            continue
        members = _members(part, sweep)
        if not members:  # the study ran here, the sweep did not: say so
            lines.append(f"- **{sweep.name}, {pretty(dataset)}**: {_missing(sweep, members)}.")
            continue
        part = part[part["label"].isin(members)]
        means = metric_values(part, metric).groupby(part["label"], sort=False).mean() * 100
        n = part.groupby("label")["seed"].nunique()
        seeds = n_seeds(int(n.min())) if n.min() == n.max() else f"{n.min()}-{n.max()} seeds"
        text = (f"- **{sweep.name}, {pretty(dataset)}** ({seeds}): {name} "
                f"{' / '.join(f'`{x}`' for x in members)}: "
                f"{' / '.join(f'{means[x]:.1f}' for x in members)}{unit}")
        if sweep.rank:
            text += f"; {rank(part, members, metric)[0].sentence()}"
        if sweep.reference in members:
            text += (f". Against `{sweep.reference}`: "
                     f"{grouped(compare(part, sweep.reference, members, metric))}")
        else:
            text += f" ({_missing(sweep, members)} here)"
        lines.append(". ".join([text, *regime_notes(part, members),
                                f"Regime: {regime(part, members)}"]) + ".")
    return lines


def _repeated(sweep: Sweep) -> Sweep:
    """The sweep that `sweep` repeats at a longer budget."""
    return next(s for study in STUDIES.values() for s in study.sweeps if s.name == sweep.repeats)


def _base(label: str) -> str:
    return label[:-len(LONG)] if label.endswith(LONG) else label


def interactions(part, sweep: Sweep, metric: str = "test_acc") -> list[tuple]:
    """One dataset's rows of a long-budget sweep (`Sweep.repeats`) and the sweep it repeats:
    per variant, (its paired change at the reference budget, at the long budget, and the
    change of that difference between budgets, per seed), each as its own sweep's comparisons
    are corrected; the changes between budgets are Holm-corrected among themselves."""
    short = _repeated(sweep)
    members = _members(part, sweep)
    if sweep.reference not in members or short.reference not in set(part["label"]):
        return []
    at_short = {d.label: d for d in compare(part, short.reference, _members(part, short), metric)}
    at_long = {_base(d.label): d for d in compare(part, sweep.reference, members, metric)}
    names = [x for x in at_long if x in at_short]
    changes = holm([interaction(part, (short.reference, x), (sweep.reference, x + LONG), metric)
                    for x in names])
    return [(at_short[x], at_long[x], c) for x, c in zip(names, changes, strict=True)]


def _budget_words(part, labels) -> str:
    epochs = part.loc[part["label"].isin(labels), "epochs"].dropna()
    return _span(epochs.round(2), lambda x: f"{x:g}", "epochs")


def _interaction_items(part, sweep: Sweep, short: bool, metric: str = "test_acc") -> list[str]:
    """One dataset's `interactions` in words: each variant's effect at both budgets and the
    change between them (does the sign flip?). `short`: mean changes only."""
    found = interactions(part, sweep, metric)
    if not found:
        return []
    before = _budget_words(part, [_repeated(sweep).reference])
    after = _budget_words(part, [sweep.reference])

    def numbers(d):
        return f"{signed(d.mean)} pp" if short else d.numbers()

    items = []
    for at_short, at_long, change in found:
        if at_short.detectable and at_long.detectable and (at_short.mean > 0) != (at_long.mean > 0):
            outcome = "the sign flips"
        elif change.detectable:
            outcome = "a detectable change between budgets"
        else:
            outcome = f"the change between budgets is {change.verdict}"
        items.append(f"`{at_short.label}` {numbers(at_short)} at {before} ({at_short.verdict}), "
                     f"{numbers(at_long)} at {after} ({at_long.verdict}): change "
                     f"{numbers(change)}, {outcome}")
    return items


def budget_interaction(df, sweep: Sweep, metric: str = "test_acc") -> list[str]:
    """Per dataset: `_interaction_items` with their intervals, then the regime in a sentence
    of its own."""
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        items = _interaction_items(part, sweep, short=False, metric=metric)
        if not items:
            continue
        n = min(d.n for _, _, d in interactions(part, sweep, metric))
        labels = [*_members(part, _repeated(sweep)), *_members(part, sweep)]
        lines.append(f"- **{sweep.repeats} across budgets, {pretty(dataset)}** ({n_seeds(n)}; "
                     f"each against `{_repeated(sweep).reference}` at its budget): "
                     + "; ".join(items) + f". Regime: {regime(part, labels)}.")
    return lines


# -- the notebooks' answers -----------------------------------------------------------------------


# What a results row says of its run's recipe, in words, for `bundle`.
_RECIPE_WORDS = (("options", "network", lambda v: options_words(v) or "default options"),
                 ("epochs", "epochs", lambda v: f"{v:g}"),
                 ("train_images", "training images", lambda v: f"{int(v):,}"),
                 ("augmentations", "augmentation", _augment_words),
                 ("optimizer", "optimizer", str), ("batch_size", "batch", lambda v: f"{int(v)}"),
                 ("tta", "test-time augmentation", lambda v: TTA_WORDS.get(int(v), str(v))))


def bundle(part, label: str, reference: str) -> str:
    """What `label`'s runs change at once against `reference`'s (first rows of each): 'epochs
    4 → 8, optimizer nesterov → muon'; a comparison of the two measures all of it together."""
    a = part[part["label"] == reference].iloc[0]
    b = part[part["label"] == label].iloc[0]
    changes = [f"{name} {words(a[column])} → {words(b[column])}"
               for column, name, words in _RECIPE_WORDS
               if column in part and str(a[column]) != str(b[column])]
    return ", ".join(changes)


def baseline_answer(df) -> str:
    """Notebook 01: the best model against the sweeps' reference network, per dataset, with
    the bundle of changes between them (the comparison cannot tell which of them pays)."""
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        acc = part.groupby("label")["test_acc"]
        n = part.groupby("label")["seed"].nunique()
        if not {"reference", "best"} <= set(acc.groups):
            continue
        model = part.loc[part["label"] == "best", "model"].iloc[0]
        d = compare(part, "reference", ["best"])[0]
        lines.append(f"- **{pretty(dataset)}**: the best model ({model}, {n_seeds(int(n['best']))}) "
                     f"reaches {acc.mean()['best'] * 100:.1f}% test accuracy, the sweeps' "
                     f"reference network ({n_seeds(int(n['reference']))}) "
                     f"{acc.mean()['reference'] * 100:.1f}%; "
                     f"paired by seed: {d.verdict}, {d.numbers()}. The difference is that of a "
                     f"bundle of changes, measured together: {bundle(part, 'best', 'reference')}.")
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
        gap = acc.mean() - bar
        verdict = ("meets" if gap >= 0 else f"is {-gap:.2f} pp short of") + f" the target of {bar:g}%"
        if len(acc) < 3:
            verdict += f" (which asks for 3 seeds, not {len(acc)})"
        low, high = best["wall_seconds"].min() / 60, best["wall_seconds"].max() / 60
        took = f"{low:.1f}" if len(best) == 1 else f"{low:.1f} to {high:.1f}"
        pace = "within" if high <= minutes else f"{high - minutes:.1f} min over"
        hardware = "; ".join(h for h in best["hardware"].dropna().unique() if h)
        lines.append(f"- **{pretty(dataset)}**: the best model reaches {plus_minus(acc, 2)}% test "
                     f"accuracy (mean{' ± sd' if len(acc) > 1 else ''} over {n_seeds(len(acc))}): it "
                     f"{verdict}; a run took {took} min on {hardware} ({pace} the target of "
                     f"about {minutes:g} min).")
    return "\n".join(lines)


# The bar the study sets its reference network (mean validation accuracy over seeds, cpu
# profile): below it, most changes a sweep makes would vanish in an undertrained network's
# noise. Judged on validation accuracy: the test set chooses nothing, not even the regime.
REFERENCE_TARGETS = {"cifar10": 0.85, "cifar100": 0.55}


def reference_check(df, targets: dict | None = None) -> str:
    """Notebook 01: per dataset, whether the `reference` runs' mean validation accuracy meets
    its bar."""
    targets = REFERENCE_TARGETS if targets is None else targets
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        acc = part.loc[part["label"] == "reference", "val_acc"].dropna() * 100
        if dataset not in targets or not len(acc):
            continue
        bar = targets[dataset] * 100
        text = (f"- **{pretty(dataset)}**: the reference network reaches {plus_minus(acc)}% "
                f"validation accuracy (mean{' ± sd' if len(acc) > 1 else ''} over "
                f"{n_seeds(len(acc))}): ")
        if acc.mean() >= bar:
            text += (f"it meets the study's bar of {bar:g}%, so the sweeps on {pretty(dataset)} run in "
                     "the regime the study asks for.")
        else:
            text += (f"{bar - acc.mean():.1f} pp short of the study's bar of {bar:g}%, so the "
                     f"sweeps' comparisons on {pretty(dataset)} are outside the regime the study asks for.")
        lines.append(text)
    return "\n".join(lines)


def answer(df, sweeps: tuple[Sweep, ...]) -> str:
    """A study's answer, one bullet per dataset and sweep: its comparisons grouped by verdict
    (mean changes only; the tables have the intervals) and the ranking the sweep asks for;
    then, per dataset, the sweeps it lacks."""
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        marks = {k: "at chance" for k in at_chance(part)}
        missing = []
        for sweep in filter(lambda s: s.runs_on(dataset), sweeps):
            members = _members(part, sweep)
            if sweep.reference not in members:
                missing.append(_missing(sweep, members, short=True))
                continue
            if sweep.grid:
                lines += lr_grid_lines(part, sweep, short=True)
                continue
            said = []
            deltas = compare(part, sweep.reference, members)
            if deltas:
                said.append(f"against `{sweep.reference}`: "
                            + grouped(deltas, short=True, marks=marks))
            if sweep.rank:
                said.append(rank(part, members)[0].sentence(f"highest {sweep.name}"))
            if said:
                lines.append(f"- **{pretty(dataset)}, {sweep.name}**: "
                             + "; ".join(said) + f". Regime: {regime(part, members)}.")
            items = _interaction_items(part, sweep, short=True) if sweep.repeats else []
            if items:
                lines.append(f"- **{pretty(dataset)}, {sweep.repeats} across budgets** (each "
                             f"against `{_repeated(sweep).reference}` at its budget): "
                             + "; ".join(items) + ".")
        if missing:
            lines.append(f"- **{pretty(dataset)}**: "
                         + "; ".join(missing) + ".")
    return "\n".join(lines)


def lines(df, study: str, names, metric: str = "test_acc") -> str:
    """`sweep_lines` of the sweeps of `study` named in `names`, as one markdown list."""
    sweeps = STUDIES[study].sweeps
    unknown = set(names) - {s.name for s in sweeps}
    if unknown:
        raise ValueError(f"{study}: no sweep {sorted(unknown)}; "
                         f"allowed: {', '.join(s.name for s in sweeps)}")
    return "\n".join(x for s in sweeps if s.name in names for x in sweep_lines(df, s, metric))


def early_stopping_table(df, stopped: str = _STOPPING.variants[0],
                         full: str = _STOPPING.reference):
    """Notebook 03: per dataset and seed, the early-stopped run beside the same run without it.

    Epochs saved are the schedule's epochs the stopped run did not train (the full run trains
    them all); its test accuracy is that of the weights it restored (its best epoch).
    """
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


def _profile(df) -> str:
    """The rows' profile when they have one, else ""."""
    profiles = set(df["profile"].dropna()) if "profile" in df else set()
    profile = profiles.pop() if len(profiles) == 1 else ""
    return profile if profile in SETTINGS else ""


def _recorded_rule(df) -> str:
    """The early-stopping rule chosen on the recorded histories of the rows' profile (in the
    run cache), in words; "" when they are not recorded here."""
    profile = _profile(df)
    chosen = recorded_choice(profile) if profile else None
    return "" if chosen is None else early_stopping_rule(profile, chosen)


def _lost(r) -> str:
    """A stopped run's test accuracy against its full run's, per seed, in words."""
    lost = r["test acc % without"] - r["test acc % with"]
    return (f"test accuracy {abs(lost):.1f} pp {'lower' if lost > 0 else 'higher'}"
            if round(lost, 1) else "test accuracy unchanged")


def epochs_saved(df, stopped: str = _STOPPING.variants[0], full: str = _STOPPING.reference,
                 rule: str | None = None) -> str:
    """Notebook 03: per dataset, the stopped runs' rule (`rule` in words; by default the one
    chosen on the histories recorded in the run cache), the epochs early stopping saved and the
    test accuracy it lost per seed (each run scored once) and on average, with the paired
    comparison against the same runs without it; then the regime."""
    table, lines = early_stopping_table(df, stopped, full), []
    if len(table) and rule is None:
        rule = _recorded_rule(df)
    for dataset, part in table.groupby("dataset", sort=False):
        per_seed = "; ".join(
            f"seed {r['seed']}: " + (f"stopped after epoch {r['epochs run']}"
                                     if r["epochs saved"] else "ran every epoch")
            + f" ({r['epochs saved']} saved), weights of epoch {r['best epoch']} restored, "
            + _lost(r) for _, r in part.iterrows())
        share = part["epochs saved"].sum() / part["schedule"].sum()
        rows = df[df["dataset"] == dataset]
        d = compare(rows, full, [stopped])[0]
        lines.append(f"- **early stopping, {pretty(dataset)}** ({n_seeds(len(part))}): "
                     + (f"{rule[0].upper()}{rule[1:]}. " if rule else "")
                     + f"{part['epochs saved'].mean():.1f} of {part['schedule'].iloc[0]} epochs "
                     f"saved on average ({share:.0%} of the schedule; {per_seed}); test accuracy "
                     f"{part['test acc % with'].mean():.1f}% with, "
                     f"{part['test acc % without'].mean():.1f}% without: {d.verdict}, "
                     f"{d.numbers()}. Regime: {regime(rows, [full, stopped])}.")
    return "\n".join(lines)


def lr_grid_lines(df, sweep: Sweep, suggested: dict[str, float] | None = None,
                  short: bool = False) -> list[str]:
    """Per dataset, a grid sweep (`Sweep.grid`): each optimizer's validation accuracy at each
    rate (one run each), the rate chosen on it, and its range test's suggestion (`suggested`;
    by default the range tests recorded for the rows' profile) judged against the grid; then
    the regime. `short`: the chosen rates and how many suggestions land on them."""
    if suggested is None:
        profile = _profile(df)
        suggested = (recorded_suggestions(profile) if profile else None) or {}
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        if not sweep.runs_on(dataset):
            continue
        members = _members(part, sweep)
        if not members:
            lines.append(f"- **{sweep.name}, {pretty(dataset)}**: {_missing(sweep, members)}.")
            continue
        rows = part[part["label"].isin(members)]
        scores, chosen = lr_grid.scores(rows), lr_grid.choose(rows)
        judged = {o: lr_grid.judge(scores, c, suggested[o]) for o, c in chosen.items()
                  if o in suggested}
        edge = " (the grid's edge)"
        if short:
            on = sum(j.nearest == j.chosen for j in judged.values())
            lines.append(f"- **{pretty(dataset)}, {sweep.name}**: rates chosen on validation "
                         + ", ".join(f"`{o}` {c.lr:g}{edge * c.edge}" for o, c in chosen.items())
                         + (f"; the range test's suggestion falls nearest the chosen rate for {on} "
                            f"of {len(judged)} optimizers" if judged else "")
                         + f". Regime: {regime(part, members)}.")
            continue
        items = []
        for o, c in chosen.items():
            grid = scores[scores["optimizer"] == o]
            text = (f"`{o}` " + " / ".join(f"{lr:g}: {v * 100:.1f}%"
                                           for lr, v in zip(grid["lr"], grid["val_acc"], strict=True))
                    + f", chosen {c.lr:g}"
                    + (f"{edge}: a better rate may lie beyond it" if c.edge else ""))
            if o in judged:
                text += f"; its range test suggested {lr_grid.judged_words(judged[o])}"
            items.append(text)
        seeds = ", ".join(str(int(x)) for x in sorted(rows["seed"].unique()))
        lines.append(f"- **{sweep.name}, {pretty(dataset)}** (one run per rate, seed {seeds}; "
                     f"validation accuracy, which alone chooses the rate): " + "; ".join(items)
                     + f". Regime: {regime(part, members)}.")
    return lines


# Notebook 05's goal for a compressed variant: at least this speed-up of the fp32 throughput at
# batch 256 for at most this loss of test accuracy (pp).
COMPRESSION_GOAL = {"speedup_b256": 2.0, "acc_change_pp": -1.0}


def speedup_range(row, base) -> tuple[float, float]:
    """The speed-up at batch 256 of a compression row over the fp32 row `base` at the ends of
    their timing rounds' spread: (slowest round / fastest fp32 round, fastest / slowest); the
    median speed-up at both ends when the rows were timed once."""
    if "throughput_b256_min" not in row or pd.isna(row.get("throughput_b256_min")):
        return row["speedup_b256"], row["speedup_b256"]
    return (row["throughput_b256_min"] / base["throughput_b256_max"],
            row["throughput_b256_max"] / base["throughput_b256_min"])


def meets_goal(row, base=None) -> bool:
    """Whether a compression row (speed-up, accuracy change) meets `COMPRESSION_GOAL`; given
    the fp32 row `base`, the speed-up must hold at the low end of the timing spread."""
    speedup = row["speedup_b256"] if base is None else speedup_range(row, base)[0]
    return bool(speedup >= COMPRESSION_GOAL["speedup_b256"]
                and row["acc_change_pp"] >= COMPRESSION_GOAL["acc_change_pp"])


def compression_answer(df) -> str:
    """Notebook 05: per model, the fastest variant that meets the goal (its speed-up held over
    the timing rounds' spread), then the fastest and the smallest of all, against fp32; test
    accuracy as the variants score it (no TTA). A variant is called the fastest only when its
    slowest round beats the runner-up's fastest; else the two are named as within the spread."""
    goal = (f"at least {COMPRESSION_GOAL['speedup_b256']:g}× the fp32 throughput at batch 256 "
            f"for at most {-COMPRESSION_GOAL['acc_change_pp']:g} pp of test accuracy, over "
            "every timing round")
    lines = []
    for model, part in df.groupby("model", sort=False):
        rest = part[part["variant"] != "fp32"]
        base = part[part["variant"] == "fp32"]
        if not len(rest) or not len(base):
            continue
        base = base.iloc[0]

        def spread(r, base=base):
            low, high = speedup_range(r, base)
            return f"{r['speedup_b256']:.1f}×" + (f" ({low:.1f}–{high:.1f}×)" if high > low else "")

        good = rest[[meets_goal(r, base) for _, r in rest.iterrows()]]
        if len(good):
            g = good.loc[good["speedup_b256"].idxmax()]
            lead = (f"`{g['variant']}` meets the goal ({goal}): {spread(g)}, "
                    f"test accuracy {g['acc_change_pp']:+.2f} pp, {g['size_mb']:.2f} MB")
        else:
            lead = f"no variant meets the goal ({goal})"
        order = rest.sort_values("speedup_b256", ascending=False)
        fast = order.iloc[0]
        fastest = f"Fastest: `{fast['variant']}`, {spread(fast)}"
        if len(order) > 1:
            second = order.iloc[1]
            if speedup_range(fast, base)[0] <= speedup_range(second, base)[1]:
                fastest = (f"Fastest by median: `{fast['variant']}`, {spread(fast)}, within the "
                           f"timing spread of `{second['variant']}` ({spread(second)})")
        small = rest.loc[rest["size_mb"].idxmin()]
        lines.append(f"- **{model} model**: {lead}. {fastest}, test accuracy "
                     f"{fast['acc_change_pp']:+.2f} pp; smallest: `{small['variant']}`, "
                     f"{small['size_mb']:.2f} MB, test accuracy {small['acc_change_pp']:+.2f} pp.")
    return "\n".join(lines)


def confusion_sentence(pairs, dataset: str, top: int = 3) -> str:
    """The most confused pairs of a `report.confused_pairs` frame (as saved to tables/)."""
    name = pretty(dataset)
    if not len(pairs):
        return f"- **{name}**: no test image was confused with another class."
    named = ", ".join(f"{pretty(r['true'])} taken for {pretty(r['predicted'])} "
                      f"({r['% of true class']:.1f}% of the {pretty(r['true'])} images)"
                      for _, r in pairs.head(top).iterrows())
    text = f"- **{name}**: the best model's most frequent mistakes are {named}"
    if "same superclass" in pairs:
        same = pairs["same superclass"].astype(str).str.lower() == "true"
        others = ", ".join(f"{pretty(t)} → {pretty(p)}"
                           for t, p in zip(pairs.loc[~same, "true"], pairs.loc[~same, "predicted"],
                                           strict=True))
        text += (f"; {int(same.sum())} of the {len(pairs)} most confused pairs lie inside one "
                 f"superclass" + (f" (not {others})" if others else ""))
    return text + "."


# -- the README's findings section ------------------------------------------------------------------


def sweep_finding(df, sweep: Sweep) -> list[str]:
    """A sweep's lines by the function it names (`Sweep.finding`); where that function finds
    nothing to say, `sweep_lines` says what is missing."""
    finders = {"sweep_lines": lambda: sweep_lines(df, sweep),
               "budget_interaction": lambda: (sweep_lines(df, sweep)
                                              + budget_interaction(df, sweep)),
               # also says what early stopping saved
               "epochs_saved": lambda: epochs_saved(df, stopped=sweep.variants[0],
                                                    full=sweep.reference).splitlines()}
    if sweep.finding not in finders:
        raise ValueError(f"sweep {sweep.name}: finding {sweep.finding!r} is not allowed; "
                         f"allowed: {', '.join(finders)}")
    return finders[sweep.finding]() or sweep_lines(df, sweep)


def readme_section(rows, confused: dict | None = None) -> str:
    """The README's findings from every study's rows (`table.read_studies`: one frame, a run
    in two studies keeps a row in each) and the best models' most confused pairs per dataset
    (`readme.read_confused_pairs`)."""
    studies = {k: v.reset_index(drop=True) for k, v in rows.groupby("study", sort=True)}
    if not studies:
        return "_No results yet: run `./run_all.sh`._"
    every = rows.drop_duplicates("run_key")
    # Text cells are "" when empty (`table.read_results`).
    profiles = ", ".join(f"`{p}`" for p in every["profile"].dropna().unique() if p)
    hardware = "; ".join(str(h) for h in every["hardware"].dropna().unique() if h)
    parts = [f"Profile {profiles}, {len(every)} runs, trained on {hardware}. Test accuracy; "
             f"Δ: paired by seed against the reference, mean ± sd; a verdict holds after Holm's "
             f"correction for the comparisons of its sweep and dataset, and its CI is at the "
             f"level of its Holm step ({CONFIDENCE:.0%} for a single comparison), so it clears "
             f"0 exactly when the verdict is not inconclusive."]
    if "01_baseline" in studies:
        parts.append("**The sweeps' reference network against the best model**\n\n"
                     + baseline_answer(studies["01_baseline"]) + "\n"
                     + best_check(studies["01_baseline"]) + "\n"
                     + reference_check(studies["01_baseline"]))
    # Grouped by the question a sweep answers (a study may ask several), in the studies' order.
    questions: dict[str, list[str]] = {}
    for study, definition in STUDIES.items():
        for sweep in definition.sweeps if study in studies else ():
            questions.setdefault(sweep.question or definition.question, []).extend(
                sweep_finding(studies[study], sweep))
    parts += [f"**{question}**\n\n" + "\n".join(lines) for question, lines in questions.items()]
    confusions = [confusion_sentence(pairs, dataset) for dataset, pairs in (confused or {}).items()]
    if confusions:
        parts.append("**What the best models confuse** (test images)\n\n" + "\n".join(confusions))
    return "\n\n".join(parts)
