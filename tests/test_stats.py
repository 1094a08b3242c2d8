"""Multiplicity control of the paired comparisons (`stats.holm`, `compare`'s families): the
p-value, Holm's adjusted p, the interval at each Holm step's level and the words and numbers
they give."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pandas as pd
import pytest
from scipy.stats import t, ttest_1samp

from cnnlib.study import stats


def _delta(deltas, label="b"):
    return stats.Delta("cifar10", label, "a", "test_acc", tuple(deltas))


@pytest.mark.parametrize("deltas", [(3.0, 3.2, 2.9), (-4.0, -5.0, -4.0), (1.0, -1.0, 2.0),
                                    (0.5, 2.0), (0.1, -0.3, 0.2, 0.05, -0.1)])
def test_p_is_the_paired_t_test_against_zero(deltas):
    assert _delta(deltas).p == pytest.approx(ttest_1samp(deltas, 0).pvalue, rel=1e-9)


def test_p_without_spread_or_seeds():
    assert math.isnan(_delta((2.0,)).p) and math.isnan(_delta(()).p)
    assert _delta((2.0, 2.0, 2.0)).p == 0.0  # no spread, a change: certain
    assert _delta((0.0, 0.0)).p == 1.0  # no spread, no change: nothing to see


# p = 0.5286, 0.01360, 0.01303 (ttest_1samp): sorted A, B, C, adjusted 3 pA = 0.0391,
# max(0.0391, 2 pB = 0.0272) = 0.0391 (the step-down keeps the order), max(0.0391, pC).
A, B, C = (2.0, 2.2, 2.9), (2.0, 3.0, 2.4), (1.0, -1.0, 2.0)


def test_holm_gives_the_textbook_adjusted_p_in_the_input_order():
    family = stats.holm([_delta(C, "c"), _delta(B, "b"), _delta(A, "a")])
    assert [d.label for d in family] == ["c", "b", "a"] and {d.m for d in family} == {3}
    pa, pb, pc = (ttest_1samp(x, 0).pvalue for x in (A, B, C))
    assert pa < pb < pc and 2 * pb < 3 * pa  # the case where monotonicity matters
    assert [d.p_adjusted for d in family] == pytest.approx([pc, 3 * pa, 3 * pa], rel=1e-9)
    assert [d.p_adjusted for d in family] == pytest.approx([0.52860, 0.039095, 0.039095],
                                                           abs=1e-5)
    assert [d.verdict for d in family] == ["inconclusive with 3 seeds", "improves", "improves"]
    # Adjusted p never exceeds 1, never falls below the raw p, and keeps the raw order.
    big = stats.holm([_delta(C), _delta((1.0, -2.0, 0.5)), _delta((-0.2, 0.1, 0.3))])
    assert all(d.p <= d.p_adjusted <= 1 for d in big) and max(d.p_adjusted for d in big) == 1
    ranked = sorted(family, key=lambda d: d.p)
    assert [d.p_adjusted for d in ranked] == sorted(d.p_adjusted for d in ranked)


def test_holm_counts_only_the_comparisons_with_a_test():
    one_seed, alone = stats.holm([_delta((9.0,)), _delta(B)])
    assert (one_seed.m, alone.m) == (1, 1) and math.isnan(one_seed.p_adjusted)
    assert one_seed.verdict == "inconclusive with 1 seed"
    assert alone.p_adjusted == pytest.approx(alone.p) and alone.verdict == "improves"
    assert stats.holm([]) == []


def _frame(variants, reference=(0.50, 0.52, 0.51), dataset="cifar10"):
    rows = [{"dataset": dataset, "label": "ref", "seed": s, "test_acc": a}
            for s, a in enumerate(reference)]
    for label, deltas in variants.items():
        rows += [{"dataset": dataset, "label": label, "seed": s, "test_acc": a + d / 100}
                 for s, (a, d) in enumerate(zip(reference, deltas, strict=True))]
    return pd.DataFrame(rows)


def test_a_family_of_three_turns_a_lone_improvement_inconclusive():
    # p = 0.026, 0.035, 0.53: each of the first two improves alone, neither survives Holm
    # (3 x 0.026 = 0.079).
    variants = {"x": (2.0, 2.5, 3.5), "y": (3.0, 2.0, 4.0), "z": (1.0, -1.0, 2.0)}
    df = pd.concat([_frame(variants), _frame({"x": (2.0, 2.5, 3.5)}, dataset="cifar100")])
    alone = {d.label: d for d in stats.compare(df[df["dataset"] == "cifar10"], "ref",
                                               correct=False)}
    assert alone["x"].verdict == "improves" and alone["y"].verdict == "improves"
    assert {d.m for d in alone.values()} == {1}
    family = stats.compare(df, "ref")
    ten = {d.label: d for d in family if d.dataset == "cifar10"}
    assert {d.m for d in ten.values()} == {3}
    assert ten["x"].p_adjusted == pytest.approx(3 * ttest_1samp((2.0, 2.5, 3.5), 0).pvalue)
    assert ten["x"].verdict == ten["y"].verdict == "inconclusive with 3 seeds"
    assert stats.grouped(list(ten.values())).startswith("inconclusive with 3 seeds: `x`")
    # The family is one dataset's: cifar100's single comparison keeps the plain rule.
    (hundred,) = [d for d in family if d.dataset == "cifar100"]
    assert hundred.m == 1 and hundred.verdict == "improves"


def test_a_family_of_one_keeps_the_plain_text_and_verdict():
    d = _delta((3.0, 3.2, 2.9))
    assert d.numbers() == "+3.0 ± 0.2 pp (95% CI +2.7 to +3.4)" and d.verdict == "improves"
    (held,) = stats.holm([d])
    assert held.numbers() == d.numbers() and held.interval == d.interval
    assert held.verdict == "improves"
    # A ranking's margin is one comparison, whatever the number of labels.
    df = _frame({"x": (2.0, 2.5, 3.5), "y": (3.0, 2.0, 4.0), "z": (1.0, -1.0, 2.0)})
    margin = stats.rank(df)[0].margin
    assert margin.m == 1 and "adjusted" not in margin.numbers()


def test_the_interval_is_at_the_level_of_its_holm_step_and_the_text_says_so():
    d = _delta((1.0, 2.0, 3.0))
    widths = []
    for step in range(1, 8):
        low, high = _with_m(d, 7, step=step).interval
        widths.append(high - low)
        # The j-th smallest of m p-values is tested at 0.05 / (m - j + 1): its interval's level.
        half = t.ppf(1 - 0.05 / (2 * step), 2) * d.sd / math.sqrt(3)
        assert (low, high) == pytest.approx((d.mean - half, d.mean + half), rel=1e-12)
    assert widths == sorted(widths) and len(set(widths)) == 7
    seven = _with_m(_delta((3.0, 3.2, 2.9)), 7, p_adjusted=0.01234, step=7)
    assert seven.numbers() == ("+3.0 ± 0.2 pp (99.3% CI +2.0 to +4.1, Holm p = 0.012 over 7 "
                               "comparisons)")
    assert _with_m(seven, 7, p_adjusted=0.0004, step=7).numbers().endswith(
        "Holm p < 0.001 over 7 comparisons)")
    assert seven.verdict == "improves"
    # The textbook family: A at the first of 3 steps (98.3%), B at the second (97.5%), C at 95%.
    c, b, a = stats.holm([_delta(C, "c"), _delta(B, "b"), _delta(A, "a")])
    assert (a.step, b.step, c.step) == (3, 2, 1)
    assert a.numbers().startswith("+2.4 ± 0.5 pp (98.3% CI ")
    assert b.numbers().startswith("+2.5 ± 0.5 pp (97.5% CI ")


def test_every_interval_clears_zero_exactly_when_its_verdict_is_not_inconclusive():
    # Families of 2-7 comparisons of 3 seeds, some changes clear, some none: the verdict
    # (Holm's step-down) and the interval (its step's level) never disagree, including the
    # comparisons after Holm's first failed step, which keep that step's level.
    rng = random.Random(0)
    seen = {True: 0, False: 0}
    after_failure = 0
    for _ in range(300):
        means = rng.choices((0.0, 1.0, 3.0, 8.0), k=rng.randint(2, 7))
        family = stats.holm([_delta([mu + rng.gauss(0, 1) for _ in range(3)], str(k))
                             for k, mu in enumerate(means)])
        ranked = sorted(family, key=lambda d: d.p)
        failed = next((j for j, d in enumerate(ranked) if not d.detectable), len(ranked))
        for j, d in enumerate(ranked):
            low, high = d.interval
            assert d.detectable == (low > 0 or high < 0), (d.deltas, d.step, d.p_adjusted)
            seen[d.detectable] += 1
            after_failure += j > failed and d.p < 0.05  # passes alone, not after the failure
    assert seen[True] > 50 and seen[False] > 50 and after_failure > 0


def _with_m(d, m, p_adjusted=math.nan, step=1):
    return replace(d, m=m, p_adjusted=p_adjusted, step=step)


@pytest.mark.parametrize(("p", "text"), [(0.01234, "= 0.012"), (0.5, "= 0.50"), (1.0, "= 1.0"),
                                         (0.0996, "= 0.10"), (0.001, "= 0.0010"),
                                         (0.000999, "< 0.001"), (0.0, "< 0.001")])
def test_p_text_has_two_significant_digits(p, text):
    assert stats.p_text(p) == text
