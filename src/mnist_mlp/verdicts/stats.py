"""The statistics behind every comparison: 95 % intervals and paired tests on the same test digits.

All from scipy and statsmodels: a t-interval over seeds, a Wilson interval for one run's accuracy,
the exact McNemar test on the digits that two models got differently right, a bootstrap interval
for their difference, and Holm's correction when one setting is tested against several.

Two settings with several runs each are paired seed by seed: each digit's share of right answers over
the seeds both settings ran (the per-digit mean correctness), then a paired t-test of the per-digit
differences (10,000 digits: the t distribution is exact enough; where every difference is -1, 0 or 1, as
for one run each, the exact McNemar test instead). A sign test on the same digits would throw away how
much more often one setting got a digit right, and with it most of the power (p = 0.07 against the
t-test's p < 0.001 on a planted 0.5-point effect over 3 seeds). Seeds are a blocking factor: the same
seed starts from the same weights and shuffles the digits alike, so a seed one setting lacks (a killed
run) is left out of that pair, never counted against it, and settings identical seed by seed are level
whatever their run counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def mean_interval(values: Sequence[float]) -> tuple[float, Interval | None]:
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
    """Two models (or two settings over the same seeds) on the same digits: where they differ, the exact
    McNemar (sign) test's p-value, the difference's interval."""

    only_first: int  # digits the first got right and the second wrong (over seeds: right on more of them)
    only_second: int  # and the other way round
    total: int  # digits compared
    p_value: float  # exact McNemar (binomial test of only_first against only_second), or the paired t-test over seeds
    difference: Interval  # accuracy first - second, 95 % bootstrap over the digits
    accuracy_difference: float  # accuracy first - second (over seeds: the mean over the seeds compared)
    seeds: tuple = ()  # the seeds compared, where settings were paired seed by seed

    @property
    def digits(self) -> int:
        """How many more digits the first got right (over seeds: on more of them)."""
        return self.only_first - self.only_second

    def first_is(self, p_value: float | None = None) -> str:
        """ "better", "worse" or "level": the first model against the second, decided by `p_value` (default
        this test's own; a Holm-adjusted one where it is one of several)."""
        if (self.p_value if p_value is None else p_value) >= ALPHA:
            return "level"
        return "better" if self.digits > 0 else "worse"


def paired(first_correct: np.ndarray, second_correct: np.ndarray, seeds: tuple = ()) -> Paired:
    """Compare two models' per-digit correctness over the same digits, in the same order: boolean vectors (one run
    each: exact McNemar), or each digit's share of right answers over the same seeds (`seeds`, see `share_right`:
    the paired t-test where the shares make fractional differences)."""
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    first, second = np.asarray(first_correct, dtype=float), np.asarray(second_correct, dtype=float)
    if first.shape != second.shape or first.ndim != 1 or not len(first):
        raise ValueError(
            f"paired needs two equally long vectors over the same digits, got shapes {first.shape} and {second.shape}"
        )
    if (
        not (np.isfinite(first).all() and np.isfinite(second).all())
        or first.min() < 0
        or second.min() < 0
        or max(first.max(), second.max()) > 1
    ):
        raise ValueError("paired needs per-digit correctness: booleans, or shares of right answers in [0, 1]")
    difference = first - second  # per digit, in [-1, 1]
    only_first, only_second = int((difference > 0).sum()), int((difference < 0).sum())
    if only_first + only_second == 0:  # identical on every digit: nothing to test or resample
        return Paired(0, 0, len(first), 1.0, Interval(0.0, 0.0), 0.0, tuple(seeds))
    if np.isin(difference, (-1.0, 0.0, 1.0)).all():
        # right/wrong per digit: the exact test reads only the discordant digits (the off-diagonal)
        p_value = float(mcnemar([[0, only_first], [only_second, 0]], exact=True).pvalue)
    else:  # shares over several seeds: the paired t-test of the per-digit differences
        p_value = float(stats.ttest_1samp(difference, 0.0).pvalue)
    found = stats.bootstrap(
        (difference,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
        batch=500,
    )
    interval = Interval(float(found.confidence_interval.low), float(found.confidence_interval.high))
    return Paired(only_first, only_second, len(first), p_value, interval, float(difference.mean()), tuple(seeds))


def share_right(correct_by_seed: dict, seeds) -> np.ndarray:
    """Each digit's share of right answers over `seeds`: {seed: boolean vector, or shares} -> (digits,) in [0, 1]."""
    return np.mean(np.stack([np.asarray(correct_by_seed[seed], dtype=float) for seed in seeds]), axis=0)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of a family of tests (one setting against each other one), in the given order."""
    from statsmodels.stats.multitest import multipletests

    if not len(p_values):
        return []
    return [float(p) for p in multipletests(list(p_values), alpha=1 - CONFIDENCE, method="holm")[1]]


def p_text(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"
