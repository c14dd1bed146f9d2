"""verdicts/stats.py on cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mnist_mlp.verdicts.stats import Interval, accuracy_interval, holm, mean_interval, p_text, paired, share_right

DIGITS = 10_000


def correct(right: int, total: int = DIGITS) -> np.ndarray:
    vector = np.zeros(total, dtype=bool)
    vector[:right] = True
    return vector


def test_two_identical_prediction_vectors_differ_in_nothing():
    same = correct(9_860)
    result = paired(same, same.copy())
    assert (result.only_first, result.only_second, result.digits) == (0, 0, 0)
    assert result.p_value == 1.0
    assert result.difference == Interval(0.0, 0.0)


def test_a_planted_60_digit_difference_is_found():
    first = correct(9_900)
    second = first.copy()
    second[:60] = False  # 60 digits only the first gets right
    result = paired(first, second)
    assert (result.only_first, result.only_second, result.digits) == (60, 0, 60)
    assert result.p_value < 0.001
    assert math.isclose(result.p_value, 2 * 0.5**60)  # exact McNemar: two-sided binomial, 60 of 60 one way
    assert result.accuracy_difference == pytest.approx(0.006)
    assert 0 < result.difference.low < 0.006 < result.difference.high  # the interval excludes no difference


def test_thirty_digits_each_way_give_p_one_and_an_interval_around_zero():
    first, second = np.ones(DIGITS, dtype=bool), np.ones(DIGITS, dtype=bool)
    first[:30] = False  # only the second right
    second[30:60] = False  # only the first right
    result = paired(first, second)
    assert (result.only_first, result.only_second, result.digits) == (30, 30, 0)
    assert result.p_value == 1.0
    assert result.difference.low < 0 < result.difference.high


def test_seven_digits_of_ten_thousand_are_noise():
    # compare.md's old headline: relu/0 over relu/0.2 by 7 test digits; say 20 against 13 discordant digits
    first, second = np.ones(DIGITS, dtype=bool), np.ones(DIGITS, dtype=bool)
    second[:20] = False
    first[20:33] = False
    result = paired(first, second)
    assert result.digits == 7 and result.p_value > 0.2
    assert result.difference.low < 0 < result.difference.high


def test_vectors_over_other_digits_are_refused():
    with pytest.raises(ValueError, match="same digits"):
        paired(correct(5, 10), correct(5, 11))


def test_holm_adjusts_like_the_textbook():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(2 * 0.03, 0.03), max(1 * 0.04, 0.06): in the given order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


def test_t_interval_over_three_seeds():
    mean, interval = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 df) x the standard error 1/sqrt(3)
    assert mean == 2.0
    assert interval.low == pytest.approx(2 - half) and interval.high == pytest.approx(2 + half)


def test_one_seed_has_no_t_interval_and_equal_seeds_a_point():
    assert mean_interval([0.98]) == (0.98, None)
    assert mean_interval([0.98, 0.98]) == (0.98, Interval(0.98, 0.98))


def test_wilson_interval_of_no_success_in_ten():
    interval = accuracy_interval(0, 10)
    z2 = 1.959963984540054**2
    assert interval.low == pytest.approx(0.0, abs=1e-12)
    assert interval.high == pytest.approx(z2 / (10 + z2))  # Wilson's upper bound at zero successes


def test_wilson_interval_of_a_test_accuracy_is_about_a_quarter_point_wide():
    interval = accuracy_interval(9_868, DIGITS)
    assert interval.low < 0.9868 < interval.high
    assert 0.004 < interval.high - interval.low < 0.005  # +-1.96 sqrt(p(1-p)/n) = +-0.22 points


def seeds_of(rng: np.random.Generator, base: np.ndarray, seeds=(0, 1, 2), flips: int = 100) -> dict[int, np.ndarray]:
    """One model per seed: `base` with `flips` random digits flipped, other digits per seed."""
    runs = {}
    for seed in seeds:
        vector = base.copy()
        vector[rng.choice(len(base), flips, replace=False)] ^= True
        runs[seed] = vector
    return runs


def test_the_share_right_over_seeds_is_each_digits_mean_correctness():
    runs = {0: np.array([1, 1, 0, 0], bool), 1: np.array([1, 0, 1, 0], bool), 2: np.array([0, 0, 1, 1], bool)}
    assert share_right(runs, [0, 1, 2]).tolist() == pytest.approx([2 / 3, 1 / 3, 2 / 3, 1 / 3])
    assert share_right(runs, [0, 1]).tolist() == [
        1.0,
        0.5,
        0.5,
        0.0,
    ]  # an even count: a half, never a tie broken one way


def test_settings_identical_seed_by_seed_are_level_whatever_their_run_counts():
    """The known answer behind a killed run: 3 runs against the same setting's 2 (seed 2 killed). Paired on the
    seeds both ran, nothing differs (p = 1); the old majority vote of 3 against 2 (a tie wrong) calls one better."""
    runs = seeds_of(np.random.default_rng(1), correct(9_860))
    two = {seed: runs[seed] for seed in (0, 1)}
    common = sorted(runs.keys() & two.keys())
    result = paired(share_right(runs, common), share_right(two, common), tuple(common))
    assert (result.only_first, result.only_second, result.p_value, result.seeds) == (0, 0, 1.0, (0, 1))
    # the premise: the old per-digit majority vote (a tie counts as wrong) over unequal counts sees a difference
    majority_three = 2 * np.stack(list(runs.values())).sum(axis=0) > 3
    majority_two = 2 * np.stack(list(two.values())).sum(axis=0) > 2
    assert paired(majority_three, majority_two).first_is() == "better"


def test_one_seed_against_three_is_paired_on_the_one_seed_they_share():
    rng = np.random.default_rng(2)
    base = correct(9_800)
    three = seeds_of(rng, base)
    better = {0: three[0] | correct(9_900)}  # seed 0 of a setting that gets 100 more digits right
    result = paired(share_right(better, [0]), share_right(three, [0]), (0,))
    assert result.seeds == (0,) and result.only_second == 0 and result.first_is() == "better"
    assert result == paired(better[0], three[0], (0,))  # one seed each: McNemar on the two models


def test_a_known_effect_over_three_seeds_is_found_and_its_size_is_the_mean_accuracy_difference():
    rng = np.random.default_rng(3)
    first, second = seeds_of(rng, correct(9_900)), seeds_of(rng, correct(9_850))
    result = paired(share_right(first, [0, 1, 2]), share_right(second, [0, 1, 2]), (0, 1, 2))
    mean_first = np.mean([vector.mean() for vector in first.values()])
    mean_second = np.mean([vector.mean() for vector in second.values()])
    assert result.accuracy_difference == pytest.approx(mean_first - mean_second)
    assert result.p_value < 0.001 and result.first_is() == "better"
    assert result.p_value == pytest.approx(
        scipy_stats.ttest_1samp(share_right(first, [0, 1, 2]) - share_right(second, [0, 1, 2]), 0).pvalue
    )
    assert result.difference.low < result.accuracy_difference < result.difference.high
    # the sign test on the same digits (how many digits each got right more often) loses the effect
    assert scipy_stats.binomtest(result.only_first, result.only_first + result.only_second).pvalue > 0.05


def test_a_share_outside_zero_to_one_or_nan_is_refused():
    with pytest.raises(ValueError, match="shares of right answers"):
        paired(np.array([0.5, np.nan]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="shares of right answers"):
        paired(np.array([1.5, 0.0]), np.array([0.5, 0.5]))


def test_p_values_are_printed_with_a_floor():
    assert p_text(1e-9) == "p < 0.001" and p_text(0.31) == "p = 0.310"


def test_better_worse_or_level_is_decided_by_the_given_p_value():
    first = correct(9_900)
    second = first.copy()
    second[:60] = False
    assert paired(first, second).first_is() == "better" and paired(second, first).first_is() == "worse"
    assert paired(first, second).first_is(p_value=0.2) == "level"  # e.g. a Holm-adjusted p of a family
    assert paired(first, first.copy()).first_is() == "level"
