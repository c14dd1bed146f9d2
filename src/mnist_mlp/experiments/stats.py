"""The statistics behind every comparison: 95 % intervals and paired tests on the same test digits.

All from scipy and statsmodels: a t-interval over seeds, a Wilson interval for one run's accuracy,
the exact McNemar test on the digits that two models got differently right, a bootstrap interval
for their difference, and Holm's correction when one setting is tested against several.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

CONFIDENCE = 0.95  # every interval; a test "decides" at 1 - CONFIDENCE after Holm's correction
ALPHA = 1 - CONFIDENCE  # a p-value (Holm-adjusted where several tests) below it decides "better" or "worse"
BOOTSTRAP_RESAMPLES = 5000  # of the test digits, for the interval of a paired difference
BOOTSTRAP_SEED = 0  # the same report from the same predictions


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __str__(self) -> str:
        return f"[{self.low:.4f}, {self.high:.4f}]"

    def points(self) -> str:
        """In percentage points of accuracy, signed: [+0.12, +0.45]."""
        return f"[{100 * self.low:+.2f}, {100 * self.high:+.2f}]"


def mean_interval(values: Sequence[float]) -> tuple[float, Optional[Interval]]:
    """(mean, its 95 % t-interval over the values, e.g. seeds); no interval from fewer than two values."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None
    if float(values.std()) == 0.0:  # t.interval of a zero spread is NaN; the interval is the point
        return mean, Interval(mean, mean)
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, Interval(float(low), float(high))


def accuracy_interval(correct: int, total: int) -> Interval:
    """Wilson's 95 % interval of an accuracy of `correct` out of `total` digits (one run)."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(correct, total, alpha=1 - CONFIDENCE, method="wilson")
    return Interval(float(low), float(high))


@dataclass(frozen=True)
class Paired:
    """Two models on the same digits: where they differ, the exact McNemar p-value, the difference's interval."""

    only_first: int  # digits the first got right and the second wrong
    only_second: int  # and the other way round
    total: int  # digits compared
    p_value: float  # exact McNemar: binomial test of only_first against only_second
    difference: Interval  # accuracy first - second, 95 % bootstrap over the digits

    @property
    def digits(self) -> int:
        """How many more digits the first got right."""
        return self.only_first - self.only_second

    @property
    def accuracy_difference(self) -> float:
        return self.digits / self.total

    def first_is(self, p_value: Optional[float] = None) -> str:
        """"better", "worse" or "level": the first model against the second, decided by `p_value` (default
        this test's own; a Holm-adjusted one where it is one of several)."""
        if (self.p_value if p_value is None else p_value) >= ALPHA:
            return "level"
        return "better" if self.digits > 0 else "worse"


def paired(first_correct: np.ndarray, second_correct: np.ndarray) -> Paired:
    """Compare two models' per-digit correctness (boolean vectors over the same digits, in the same order)."""
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    first, second = np.asarray(first_correct, dtype=bool), np.asarray(second_correct, dtype=bool)
    if first.shape != second.shape or first.ndim != 1 or not len(first):
        raise ValueError(f"paired needs two equally long vectors over the same digits, got shapes {first.shape} and {second.shape}")
    only_first, only_second = int((first & ~second).sum()), int((~first & second).sum())
    table = [[int((first & second).sum()), only_first], [only_second, int((~first & ~second).sum())]]
    p_value = float(mcnemar(table, exact=True).pvalue)
    difference = first.astype(float) - second.astype(float)  # per digit: +1, 0 or -1
    if only_first + only_second == 0:  # identical on every digit: the bootstrap has nothing to resample
        interval = Interval(0.0, 0.0)
    else:
        found = stats.bootstrap((difference,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                                method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED), batch=500)  # fmt: skip
        interval = Interval(float(found.confidence_interval.low), float(found.confidence_interval.high))
    return Paired(only_first, only_second, len(first), p_value, interval)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of a family of tests (one setting against each other one), in the given order."""
    from statsmodels.stats.multitest import multipletests

    if not len(p_values):
        return []
    return [float(p) for p in multipletests(list(p_values), alpha=1 - CONFIDENCE, method="holm")[1]]


def majority(correct: np.ndarray) -> np.ndarray:
    """Per digit, whether most runs (seeds) of a setting got it right: (runs, digits) -> (digits,).

    A tie (an even number of runs, half right) counts as wrong.
    """
    correct = np.asarray(correct, dtype=bool)
    return 2 * correct.sum(axis=0) > correct.shape[0]


def p_text(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"
