"""Statistics over seeds and recipes (hpo/statistics.py): hand-computed cases and seeded simulations."""

import math

import numpy as np
import pytest

from hpo.statistics import (
    bootstrap_mean_interval,
    holm_adjust,
    mean_and_standard_error,
    pairwise_agreement,
    probability_best,
    rank_agreement,
    ranks,
    spearman_with_interval,
)


def test_holm_adjust_matches_hand_computation():
    # Sorted p: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone at 0.06.
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []


def test_bootstrap_interval_is_seeded_and_as_wide_as_the_standard_error_says():
    values = np.random.default_rng(1).normal(0.55, 0.02, size=40).tolist()
    low, high = bootstrap_mean_interval(values)
    assert (low, high) == bootstrap_mean_interval(values)
    assert low < np.mean(values) < high
    expected_width = 2 * 1.96 * np.std(values) / np.sqrt(len(values))
    assert high - low == pytest.approx(expected_width, rel=0.15)


def test_mean_and_standard_error_by_hand():
    assert mean_and_standard_error([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1 / math.sqrt(3)))
    mean, error = mean_and_standard_error([0.5])
    assert mean == 0.5 and math.isnan(error)


def test_probability_best_keeps_the_seeds_paired():
    # B beats A by 0.01 on every seed while the seeds move both by far more: paired resampling always
    # finds B ahead; an unpaired view of these spreads would hesitate.
    seed_effect = [0.0, 0.3, -0.2, 0.1]
    scores = {"A": [0.5 + effect for effect in seed_effect], "B": [0.51 + effect for effect in seed_effect]}
    assert probability_best(scores) == {"A": 0.0, "B": 1.0}
    assert probability_best({"A": [0.5, 0.5], "B": [0.5, 0.5]}) == {"A": 0.5, "B": 0.5}  # ties split


def test_probability_best_of_equal_recipes_is_spread_evenly():
    rng = np.random.default_rng(0)
    scores = {name: rng.normal(0.0, 1.0, size=200).tolist() for name in "ABC"}
    shares = probability_best(scores, resamples=2_000)
    assert sum(shares.values()) == pytest.approx(1.0)
    # Three equal recipes: about a third each, within what 200 seeds leave to chance.
    assert all(0.05 < share < 0.75 for share in shares.values())


def test_pairwise_agreement_and_ranks_by_hand():
    assert pairwise_agreement([1, 2, 3], [10, 20, 30]) == 1.0
    assert pairwise_agreement([1, 2, 3], [30, 20, 10]) == 0.0
    assert pairwise_agreement([1, 2, 3], [10, 30, 20]) == pytest.approx(2 / 3)
    assert pairwise_agreement([1, 1], [1, 2]) == 0.5
    assert ranks([0.2, 0.9, 0.5]) == [3, 1, 2]


def test_rank_agreement_gathers_spearman_its_interval_and_the_pairs():
    figures = rank_agreement([1, 2, 3, 4, 5], [10, 30, 20, 40, 50])
    assert figures["spearman"] == pytest.approx(0.9) and figures["pairwise"] == pytest.approx(0.9)
    assert figures["spearman_low"] <= figures["spearman"] <= figures["spearman_high"] <= 1.0


def test_spearman_interval_holds_the_estimate_and_narrows_with_items():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=40)
    noisy = (truth + rng.normal(scale=0.5, size=40)).tolist()
    rho, low, high = spearman_with_interval(truth.tolist(), noisy, resamples=2_000)
    assert low < rho < high and rho > 0.6
    few_rho, few_low, few_high = spearman_with_interval(truth[:8].tolist(), noisy[:8], resamples=2_000)
    assert few_high - few_low > high - low
