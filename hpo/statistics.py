"""Statistics of scores over seeds and recipes, shared by the report, `confirm`, `compare` and the benchmarks.

Scores compared across recipes come from paired seeds (common random numbers: every recipe runs with the
same train.seed values, hence the same initial weights and data order), so differences are taken seed by
seed and resampling draws seeds, not single scores. Torch-free (the study's tools load no torch).
"""

import itertools
import math
import statistics

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95  # of every interval printed


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); nan for fewer than two values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t-based interval of the mean: mean ± t(n - 1 degrees of freedom) x SE; nan for fewer than two values.

    Exact for normal values at any n, which matters at the 2 to 5 seeds a comparison or confirmation runs: a
    percentile bootstrap over 3 seeds covers about 75% where it says 95% (tests/test_statistics.py)."""
    mean, error = mean_and_standard_error(values)
    if len(values) < 2:
        return math.nan, math.nan
    half_width = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * error
    return mean - half_width, mean + half_width


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given."""
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(np.argsort(p_values, kind="stable")):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def probability_best(
    scores: dict[str, list[float]], draws: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, float]:
    """For each recipe, the probability that its mean score is the highest: the share of draws of the recipes' means
    from their posterior under a flat prior and normal noise, whose covariance across recipes the shared seeds carry
    (a multivariate t with seeds - 1 degrees of freedom around the observed means). Ties split; nan for every
    recipe with fewer than two seeds (nothing says how far the means may be from the truth).

    scores[name][i] is the score of recipe `name` with the i-th seed, the same seeds for every recipe. For two
    recipes this is the one-sided paired t probability, P(t_{n-1} < mean difference / its SE), so it agrees with
    the paired t-test and its interval. A bootstrap over the seeds said 1.00 for a +0.70 ± 0.59 lead on 3 seeds: with
    3 seeds a resample has at most 10 distinct means, and it ignores that a standard error from 3 values is itself
    uncertain (tests/test_statistics.py: under equal recipes it claimed P > 0.95 about a fifth of the time, where this
    claims it 5% of the time, as a calibrated probability must)."""
    names = list(scores)
    table = np.asarray([scores[name] for name in names], dtype=float)  # (recipes, seeds)
    seeds = table.shape[1]
    if seeds < 2:
        return {name: math.nan for name in names}
    rng = np.random.default_rng(seed)
    centred = table - table.mean(axis=1, keepdims=True)  # (recipes, seeds): each seed's departure from the mean
    normal = rng.standard_normal((seeds, draws))  # the seeds' departures span the noise's covariance
    scale = np.sqrt((seeds - 1) / rng.chisquare(seeds - 1, draws))  # (draws,): a t's share of an unknown variance
    means = table.mean(axis=1, keepdims=True) + centred @ normal / math.sqrt(seeds * (seeds - 1)) * scale
    is_best = np.isclose(means, means.max(axis=0, keepdims=True), rtol=0.0, atol=1e-12)
    wins = (is_best / is_best.sum(axis=0, keepdims=True)).sum(axis=1)
    return {name: float(win) / draws for name, win in zip(names, wins, strict=True)}


def spearman_with_interval(
    first: list[float], second: list[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """Spearman's rank correlation of two scores of the same items, with its interval from Fisher's z and Bonett and
    Wright's (2000) standard error sqrt((1 + rho^2 / 2) / (n - 3)); nan bounds below 4 items.

    At rho = ±1, z is infinite: the far bound is taken from halfway to the nearest value n distinct items allow
    (one adjacent swap: 1 - 12 / (n (n^2 - 1))), the near bound is ±1. Simulated coverage of the true rho_s
    (bivariate normal, 10,000 repetitions each at 5 and 8 items and rho_s 0, 0.48, 0.79, 0.95): 98-99% at 5 items,
    94-96% at 8 (93.7% at rho_s 0.79); the percentile bootstrap over items used before covered 63% at 5 items and
    rho_s 0.95, where all 5 are often ranked alike and every resample says 1 (tests/test_statistics.py)."""
    rho = float(stats.spearmanr(first, second).statistic)
    count = len(first)
    if count < 4 or math.isnan(rho):
        return rho, math.nan, math.nan
    edge = 1 - 6 / (count * (count**2 - 1))
    clipped = max(-edge, min(edge, rho))
    standard_error = math.sqrt((1 + clipped**2 / 2) / (count - 3))
    z, half_width = math.atanh(clipped), float(stats.norm.ppf(0.5 + confidence / 2)) * standard_error
    low = -1.0 if rho <= -edge else math.tanh(z - half_width)
    high = 1.0 if rho >= edge else math.tanh(z + half_width)
    return rho, low, high


def pairwise_agreement(first: list[float], second: list[float]) -> float:
    """The share of pairs of items that the two scores order the same way (a tie on either side counts half)."""
    agreements = []
    for i, j in itertools.combinations(range(len(first)), 2):
        product = np.sign(first[i] - first[j]) * np.sign(second[i] - second[j])
        agreements.append(0.5 if product == 0 else float(product > 0))
    return statistics.fmean(agreements)


def rank_agreement(first: list[float], second: list[float]) -> dict[str, float]:
    """How alike two scores of the same items rank them: Spearman's rho with its 95% interval (Fisher's z,
    spearman_with_interval), and the share of pairs ordered alike."""
    rho, low, high = spearman_with_interval(first, second)
    return {"spearman": rho, "spearman_low": low, "spearman_high": high, "pairwise": pairwise_agreement(first, second)}


def ranks(values: list[float]) -> list[int]:
    """1 for the highest value, 2 for the next, ... (ties in the order given)."""
    order = sorted(range(len(values)), key=lambda index: -values[index])
    result = [0] * len(values)
    for rank, index in enumerate(order, start=1):
        result[index] = rank
    return result
