"""Paired comparisons by seed: the one statistical rule behind every sentence of `findings`.

A comparison is a study table (the rows of `outputs/results/<study>.csv`), a reference
label and a metric: each variant's run is paired with the reference run of the same seed
and dataset, and the per-seed deltas (percentage points) give a mean, a standard deviation,
a paired t-test against 0 and a confidence interval (t distribution, n - 1 degrees of
freedom).

The family is one `compare` call's comparisons on one dataset (a sweep's variants against
its reference): testing m variants at 5% each would call some noise an effect, so the
verdicts hold the family-wise error at 5% with Holm's step-down correction, and a variant
"improves" or "hurts" only when its Holm-adjusted p is below 0.05; otherwise it is
"inconclusive with n seeds" (one seed gives no test), which says the seeds could not tell,
not that there is no difference. The printed interval is at the level of the comparison's
Holm step: the j-th smallest of m p-values is tested at 0.05 / (m - j + 1), so its interval
is the 1 - 0.05 / (m - j + 1) one (98.3% for the first of 3, 97.5%, then 95%), and it clears
0 exactly when the verdict is "improves" or "hurts". Holm stops at its first failed step;
every comparison from there on gets that step's level, whose interval holds 0, as its
verdict is inconclusive. With m = 1 it is the plain 95% rule.
A ranking names the top label and its paired margin over the runner-up, a single
comparison under the plain rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["CONFIDENCE", "Delta", "NAMES", "Ranking", "compare", "grouped", "holm", "interaction", "mean_sd",
           "metric_values", "n_seeds", "p_text", "plus_minus", "rank", "signed"]

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


def p_text(p: float) -> str:
    """A p-value to two significant digits ('= 0.012', '= 0.50'); '< 0.001' below that."""
    if p < 0.001:
        return "< 0.001"
    p = float(f"{p:.2g}")  # round first: 0.0996 -> 0.1 -> '0.10', not '0.100'
    return f"= {p:.{max(1 - math.floor(math.log10(p)), 1)}f}"


@dataclass(frozen=True)
class Delta:
    """A variant minus the reference, per seed, in percentage points (metric x 100).

    `m`: the number of comparisons in its family, `p_adjusted` its Holm-adjusted p and `step`
    the level of its interval, all set by `holm`; a Delta made alone is a family of one.
    """

    dataset: str
    label: str
    reference: str
    metric: str
    deltas: tuple[float, ...]
    m: int = 1
    p_adjusted: float = math.nan
    step: int = 1  # the hypotheses left at its Holm step (`holm`): its interval's level

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
    def p(self) -> float:
        """Two-sided p of the paired t-test of the mean delta against 0 (NaN below two seeds)."""
        if self.n < 2:
            return math.nan
        if self.sd == 0:  # identical deltas: t is infinite, or 0 / 0 when they are all 0
            return 1.0 if self.mean == 0 else 0.0
        # Imported here, not at the top: scipy is slow to import; only p and intervals use it.
        from scipy.stats import t

        return float(2 * t.sf(abs(self.mean) / (self.sd / math.sqrt(self.n)), self.n - 1))

    @property
    def level(self) -> float:
        """The interval's confidence: that of its Holm step, 1 - 0.05 / step (95% alone)."""
        return 1 - (1 - CONFIDENCE) / max(1, self.step)

    @property
    def interval(self) -> tuple[float, float]:
        """The confidence interval of the mean delta at `level` (NaNs below two seeds)."""
        if self.n < 2:
            return math.nan, math.nan
        from scipy.stats import t  # see `p`

        half = t.ppf(0.5 + self.level / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def detectable(self) -> bool:
        if self.n < 2:
            return False
        if self.m > 1:
            return self.p_adjusted < 1 - CONFIDENCE  # NaN (not set by `holm`): False
        low, high = self.interval
        return low > 0 or high < 0

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
        """'+4.3 ± 0.2 pp (95% CI +2.5 to +6.1)'; first of a family of 7: '+4.3 ± 0.2 pp
        (99.3% CI +1.0 to +7.6, Holm p = 0.012 over 7 comparisons)'; one seed: '+4.3 pp (no
        interval)'."""
        if self.n < 2:
            return f"{self.change()} pp (no interval)"
        ci = f"{100 * self.level:.3g}% CI {self.interval_text()}"
        if self.m <= 1 or math.isnan(self.p_adjusted):
            return f"{self.change()} pp ({ci})"
        return (f"{self.change()} pp ({ci}, Holm p {p_text(self.p_adjusted)} over {self.m} "
                "comparisons)")


def holm(deltas) -> list[Delta]:
    """The Deltas of one family, in the same order, with `m`, Holm's adjusted p and the step
    of each interval set.

    m counts the Deltas with a test (two seeds or more); the others keep a NaN p and stay
    inconclusive. Sorted by p, the j-th smallest (1-based) is adjusted to
    min(1, (m - j + 1) p), raised to the largest adjusted p before it so the order holds; its
    interval's step is m - j + 1, or that of the first step that failed before it.
    """
    deltas = list(deltas)
    tested = sorted((i for i, d in enumerate(deltas) if not math.isnan(d.p)),
                    key=lambda i: deltas[i].p)
    m = max(len(tested), 1)
    adjusted, steps = {}, {}
    running, failed = 0.0, None
    for j, i in enumerate(tested):  # j is 0-based here: the factor is m - j
        running = max(running, min(1.0, (m - j) * deltas[i].p))
        adjusted[i] = running
        if failed is None and not running < 1 - CONFIDENCE:
            failed = j
        steps[i] = m - (j if failed is None else failed)
    return [replace(d, m=m, p_adjusted=adjusted.get(i, math.nan), step=steps.get(i, m))
            for i, d in enumerate(deltas)]


def metric_values(df, metric: str):
    if metric == "gap":  # train minus validation accuracy: the overfitting measure
        return df["train_acc"] - df["val_acc"]
    return df[metric]


def _per_seed(df, label: str, metric: str):
    part = df[df["label"] == label]
    return metric_values(part, metric).groupby(part["seed"]).mean().dropna()


def compare(df, reference: str, labels=None, metric: str = "test_acc", *,
            correct: bool = True) -> list[Delta]:
    """Every label (or those in `labels`) against `reference`, per dataset, paired by seed.

    The comparisons on one dataset are one family, Holm-corrected (`holm`); `correct=False`
    leaves each a family of one. A dataset without a `reference` run is left out (nothing
    to pair with).
    """
    out = []
    for dataset, part in df.groupby("dataset", sort=False):
        ref = _per_seed(part, reference, metric)
        if not len(ref):
            continue
        names = labels if labels is not None else part["label"].unique()
        family = []
        for label in names:
            if label == reference or label not in set(part["label"]):
                continue
            value = _per_seed(part, label, metric)
            both = value.index.intersection(ref.index)
            deltas = tuple(float(d) for d in (value[both] - ref[both]) * 100)
            family.append(Delta(dataset, label, reference, metric, deltas))
        out += holm(family) if correct else family
    return out


def interaction(df, before: tuple[str, str], after: tuple[str, str],
                metric: str = "test_acc") -> Delta:
    """How a paired difference changes between two settings (e.g. budgets), on one dataset's
    rows: per seed, (after's label - its reference) - (before's label - its reference), pp.
    `before` and `after` are (reference, label); the Delta is named by before's labels."""
    per_seed = []
    for reference, label in (before, after):
        ref, value = _per_seed(df, reference, metric), _per_seed(df, label, metric)
        per_seed.append((value - ref).dropna())
    both = per_seed[0].index.intersection(per_seed[1].index)
    deltas = tuple(float(d) for d in (per_seed[1][both] - per_seed[0][both]) * 100)
    return Delta(df["dataset"].iloc[0], before[1], before[0], metric, deltas)


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
