"""Paired comparisons by seed: the one statistical rule behind every sentence of `findings`.

A comparison is a study table (the rows of `outputs/results/<study>.csv`), a reference
label and a metric: each variant's run is paired with the reference run of the same seed
and dataset, and the per-seed deltas (percentage points) give a mean, a standard deviation
and a 95% confidence interval (t distribution, n - 1 degrees of freedom). A variant
"improves" or "hurts" only when the interval excludes 0; otherwise it is "inconclusive with
n seeds" (one seed gives no interval), which says the seeds could not tell, not that there
is no difference. A ranking names the top label and
its paired margin over the runner-up under the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CONFIDENCE", "Delta", "NAMES", "Ranking", "compare", "grouped", "mean_sd", "metric_values",
           "n_seeds", "plus_minus", "rank", "signed"]

CONFIDENCE = 0.95
# Words for a detectable positive / negative delta; accuracy unless named here.
_WORDS = {"gap": ("raises the gap", "lowers the gap"), "test_loss": ("hurts", "improves"),
          "ece": ("worsens calibration", "improves calibration")}


def signed(x: float, digits: int = 1) -> str:
    """`x` with its sign ('+4.3', '-0.2'); a value that rounds to zero is '+0.0'."""
    text = f"{x:+.{digits}f}"
    return "+" + text[1:] if text.startswith("-") and not float(text) else text


def mean_sd(mean: float, sd: float, digits: int = 1, *, sign: bool = False) -> str:
    """The study's one mean ± sd format: "mean ± sd", or the mean alone when there is no sd
    (NaN: one value). `sign`: the mean with its sign, as a change ('+4.3 ± 0.2')."""
    head = signed(mean, digits) if sign else f"{mean:.{digits}f}"
    return head if sd != sd else f"{head} ± {sd:.{digits}f}"


def plus_minus(values, digits: int = 1) -> str:
    """`mean_sd` of a pandas Series over its non-missing values (the sample sd, ddof 1):
    "mean ± sd", "mean" for one value, "" for none."""
    values = values.dropna()
    if not len(values):
        return ""
    return mean_sd(values.mean(), values.std(ddof=1) if len(values) > 1 else math.nan, digits)


def n_seeds(n: int) -> str:
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
        # Imported here, not at the top: scipy is slow to import and only intervals need it.
        from scipy.stats import t

        half = t.ppf(0.5 + CONFIDENCE / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def detectable(self) -> bool:
        low, high = self.interval
        return self.n >= 2 and (low > 0 or high < 0)

    @property
    def verdict(self) -> str:
        """'improves', 'hurts' (or the metric's words), else 'inconclusive with n seeds'."""
        if not self.detectable:
            return f"inconclusive with {n_seeds(self.n)}"
        up, down = _WORDS.get(self.metric, ("improves", "hurts"))
        return up if self.mean > 0 else down

    def change(self) -> str:
        """'+4.3 ± 0.2' (mean ± sd of the deltas, pp); '+4.3' for one seed."""
        return mean_sd(self.mean, self.sd, 1, sign=True)  # sd: NaN below two seeds

    def interval_text(self) -> str:
        """'+2.5 to +6.1'; '' below two seeds."""
        low, high = self.interval
        return "" if self.n < 2 else f"{signed(low)} to {signed(high)}"

    def numbers(self) -> str:
        """'+4.3 ± 0.2 pp (95% CI +2.5 to +6.1)'; one seed: '+4.3 pp (1 seed, no interval)'."""
        if self.n < 2:
            return f"{self.change()} pp (no interval)"
        return f"{self.change()} pp ({CONFIDENCE:.0%} CI {self.interval_text()})"


def metric_values(df, metric: str):
    if metric == "gap":  # train minus validation accuracy: the overfitting measure
        return df["train_acc"] - df["val_acc"]
    return df[metric]


def _per_seed(df, label: str, metric: str):
    part = df[df["label"] == label]
    return metric_values(part, metric).groupby(part["seed"]).mean().dropna()


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
        unit = NAMES.get(self.metric, ("", "%"))[1]  # the gap is in pp, not %
        top = f"{prefix}: `{self.top}` ({self.means[self.top] * 100:.1f}{unit})"
        if self.margin is None:
            return top
        m = self.margin
        lead = "a detectable lead" if m.detectable else \
            f"a lead inconclusive with {n_seeds(m.n)}"
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


def grouped(deltas: list[Delta], short: bool = False, marks: dict | None = None) -> str:
    """'improves: a ...; hurts: b ...; inconclusive with 2 seeds: c ...'.

    `short`: each label with its mean change only (the full numbers are in the tables).
    `marks`: a word to put after some labels' numbers, e.g. {"adam": "at chance"}.
    """
    groups: dict[str, list[str]] = {}
    for d in sorted(deltas, key=lambda d: 2 if not d.detectable else int(d.mean < 0)):
        numbers = f"{signed(d.mean)} pp" if short else d.numbers()
        mark = f" ({marks[d.label]})" if marks and d.label in marks else ""
        groups.setdefault(d.verdict, []).append(f"`{d.label}` {numbers}{mark}")
    return "; ".join(f"{verdict}: {', '.join(items)}" for verdict, items in groups.items())


# Each metric's name in a sentence, and its unit.
NAMES = {"test_acc": ("test accuracy", "%"), "val_acc": ("validation accuracy", "%"),
         "gap": ("train − validation gap", " pp"),
         "corruption_acc": ("corruption accuracy", "%"),
         "ece": ("calibration error (ECE)", "%"),
         "dup_free_acc": ("accuracy without near-duplicates", "%")}
