"""Findings: the sentences about the results, computed from the results tables.

One rule for every comparison. A comparison is a study table (the rows of
`outputs/results/<study>.csv`), a reference label and a metric: each variant's run
is paired with the reference run of the same seed and dataset, and the per-seed
deltas (percentage points) give a mean, a standard deviation and a 95% confidence
interval (t distribution, n - 1 degrees of freedom). A variant "improves" or
"hurts" only when the interval excludes 0; otherwise there is "no detectable
difference with n seeds" (one seed gives no interval). A ranking names the top
label and its paired margin over the runner-up under the same rule.

The notebooks print these sentences (the answer at the top of each report) and
`python -m cnnlib.results collect` writes them into the README's findings section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BEST_TARGETS", "CONFIDENCE", "REFERENCE_TARGETS", "Delta", "Ranking", "SWEEPS", "Sweep", "answer", "best_check",
    "baseline_answer", "compare", "reference_check",
    "compression_answer", "confusion_sentence", "early_stopping_table", "epochs_saved", "lines", "rank", "readme_section", "sweep_lines",
]

CONFIDENCE = 0.95
# Words for a detectable positive / negative delta; accuracy unless named here.
_WORDS = {"gap": ("raises the gap", "lowers the gap"), "test_loss": ("hurts", "improves")}


def _signed(x: float) -> str:
    text = f"{x:+.1f}"
    return "+0.0" if text == "-0.0" else text


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


@dataclass(frozen=True)
class Delta:
    """A variant minus the reference, per seed, in percentage points (metric x 100)."""

    dataset: str
    label: str
    reference: str
    metric: str
    deltas: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.deltas)

    @property
    def mean(self) -> float:
        return sum(self.deltas) / self.n if self.n else math.nan

    @property
    def sd(self) -> float:
        if self.n < 2:
            return math.nan
        return math.sqrt(sum((d - self.mean) ** 2 for d in self.deltas) / (self.n - 1))

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% confidence interval of the mean delta (NaNs below two seeds)."""
        if self.n < 2:
            return math.nan, math.nan
        from scipy.stats import t

        half = t.ppf(0.5 + CONFIDENCE / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def detectable(self) -> bool:
        low, high = self.interval
        return self.n >= 2 and (low > 0 or high < 0)

    @property
    def verdict(self) -> str:
        """'improves', 'hurts' (or the metric's words), else 'no detectable difference ...'."""
        if not self.detectable:
            return f"no detectable difference with {_seeds(self.n)}"
        up, down = _WORDS.get(self.metric, ("improves", "hurts"))
        return up if self.mean > 0 else down

    def change(self) -> str:
        """'+4.3 ± 0.2' (mean ± sd of the deltas, pp); '+4.3' for one seed."""
        return _signed(self.mean) + (f" ± {self.sd:.1f}" if self.n > 1 else "")

    def interval_text(self) -> str:
        """'+2.5 to +6.1'; '' below two seeds."""
        low, high = self.interval
        return "" if self.n < 2 else f"{_signed(low)} to {_signed(high)}"

    def numbers(self) -> str:
        """'+4.3 ± 0.2 pp (95% CI +2.5 to +6.1)'; one seed: '+4.3 pp (1 seed, no interval)'."""
        if self.n < 2:
            return f"{self.change()} pp (no interval)"
        return f"{self.change()} pp ({CONFIDENCE:.0%} CI {self.interval_text()})"


def _metric(df, metric: str):
    if metric == "gap":  # train minus validation accuracy: the overfitting measure
        return df["train_acc"] - df["val_acc"]
    return df[metric]


def _per_seed(df, label: str, metric: str):
    part = df[df["label"] == label]
    return _metric(part, metric).groupby(part["seed"]).mean().dropna()


def compare(df, reference: str, labels=None, metric: str = "test_acc") -> list[Delta]:
    """Every label (or those in `labels`) against `reference`, per dataset, paired by seed.

    A dataset without a `reference` run is left out (nothing to pair with).
    """
    out = []
    for dataset, part in df.groupby("dataset", sort=False):
        ref = _per_seed(part, reference, metric)
        if not len(ref):
            continue
        names = labels if labels is not None else part["label"].unique()
        for label in names:
            if label == reference or label not in set(part["label"]):
                continue
            value = _per_seed(part, label, metric)
            both = value.index.intersection(ref.index)
            deltas = tuple(float(d) for d in (value[both] - ref[both]) * 100)
            out.append(Delta(dataset, label, reference, metric, deltas))
    return out


@dataclass(frozen=True)
class Ranking:
    dataset: str
    means: dict  # label -> mean of the metric over seeds (fraction), in the sweep's order
    margin: Delta | None  # top label minus the runner-up, paired by seed
    metric: str = "test_acc"

    @property
    def top(self) -> str:
        return max(self.means, key=self.means.get)

    def sentence(self, prefix: str = "highest") -> str:
        unit = _NAMES.get(self.metric, ("", "%"))[1]  # the gap is in pp, not %
        top = f"{prefix}: `{self.top}` ({self.means[self.top] * 100:.1f}{unit})"
        if self.margin is None:
            return top
        m = self.margin
        lead = "a detectable lead" if m.detectable else \
            f"a lead not detectable with {_seeds(m.n)}"
        return f"{top}, ahead of `{m.reference}` by {m.numbers()}: {lead}"


def rank(df, labels=None, metric: str = "test_acc") -> list[Ranking]:
    """Per dataset: mean `metric` per label, the top one and its paired margin over the next."""
    out = []
    for dataset, part in df.groupby("dataset", sort=False):
        names = [x for x in (labels if labels is not None else part["label"].unique())
                 if x in set(part["label"])]
        means = {x: float(_per_seed(part, x, metric).mean()) for x in names}
        means = {k: v for k, v in means.items() if not math.isnan(v)}
        if not means:
            continue
        order = sorted(means, key=means.get, reverse=True)
        margin = compare(part, order[1], [order[0]], metric)[0] if len(order) > 1 else None
        out.append(Ranking(dataset, means, margin, metric))
    return out


def _grouped(deltas: list[Delta], short: bool = False) -> str:
    """'improves: a ...; hurts: b ...; no detectable difference with 2 seeds: c ...'.

    `short`: each label with its mean change only (the full numbers are in the tables).
    """
    groups: dict[str, list[str]] = {}
    for d in sorted(deltas, key=lambda d: 2 if not d.detectable else int(d.mean < 0)):
        numbers = f"{_signed(d.mean)} pp" if short else d.numbers()
        groups.setdefault(d.verdict, []).append(f"`{d.label}` {numbers}")
    return "; ".join(f"{verdict}: {', '.join(items)}" for verdict, items in groups.items())


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


_NAMES = {"test_acc": ("test accuracy", "%"), "val_acc": ("validation accuracy", "%"),
          "gap": ("train − validation gap", " pp")}


def sweep_lines(df, sweep: Sweep, metric: str = "test_acc") -> list[str]:
    """Markdown bullets, one per dataset: values, the ranking (if asked), the comparisons."""
    name, unit = _NAMES.get(metric, (metric, ""))
    lines = []
    for dataset, part in df.groupby("dataset", sort=False):
        members = sweep.members(part)
        if not members:
            continue
        part = part[part["label"].isin(members) | (part["label"] == sweep.standard)]
        means = _metric(part, metric).groupby(part["label"], sort=False).mean() * 100
        n = part[part["label"].isin(members)].groupby("label")["seed"].nunique()
        seeds = _seeds(int(n.min())) if n.min() == n.max() else f"{n.min()}-{n.max()} seeds"
        text = (f"- **{sweep.name}, {dataset}** ({seeds}): {name} "
                f"{' / '.join(f'`{x}`' for x in members)}: "
                f"{' / '.join(f'{means[x]:.1f}' for x in members)}{unit}")
        if sweep.rank:
            text += f"; {rank(part, members, metric)[0].sentence()}"
        reference = sweep.reference_label(part)
        if reference is not None and reference in members:
            text += f". Against `{reference}`: {_grouped(compare(part, reference, members, metric))}"
        else:
            text += f" (no `{sweep.reference or sweep.standard}` run here to compare with)"
        lines.append(text + ".")
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
        lines.append(f"- **{dataset}**: the best model ({model}, {_seeds(int(n['best']))}) "
                     f"reaches {acc.mean()['best'] * 100:.1f}% test accuracy, the sweeps' "
                     f"reference network ({_seeds(int(n['reference']))}) "
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
                     f"accuracy (mean{' ± sd' if spread else ''} over {_seeds(len(acc))}): it "
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
                f"accuracy (mean{' ± sd' if spread else ''} over {_seeds(len(acc))}): ")
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
        deltas, ranks, refs = [], [], {}
        for sweep in sweeps:
            members = sweep.members(part)
            reference = sweep.reference_label(part)
            if reference is not None and reference in members:
                deltas += compare(part, reference, members)
                refs[f"`{sweep.reference}`" if sweep.reference else "the standard network"] = 1
            if sweep.rank and members:
                ranks.append(rank(part, members)[0].sentence(f"highest {sweep.name}"))
        if deltas or ranks:
            refs = list(refs)
            refs = ", ".join(refs[:-1]) + " and " + refs[-1] if len(refs) > 1 else "".join(refs)
            text = f"- **{dataset}**" + (f", against {refs}: {_grouped(deltas, short=True)}"
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
        lines.append(f"- **early stopping, {dataset}** ({_seeds(len(part))}): "
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
