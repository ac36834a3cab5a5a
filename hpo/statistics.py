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


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); nan for fewer than two values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def bootstrap_mean_interval(
    values: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean."""
    rng = np.random.default_rng(seed)
    means = rng.choice(np.asarray(values, dtype=float), size=(resamples, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given."""
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(np.argsort(p_values, kind="stable")):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def probability_best(
    scores: dict[str, list[float]], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, float]:
    """For each recipe, the share of bootstrap resamples of the seeds in which its mean score is the highest.

    scores[name][i] is the score of recipe `name` with the i-th seed, the same seeds for every recipe: a
    resample draws seed indices once and applies them to every recipe, keeping the pairing. Ties split."""
    names = list(scores)
    table = np.asarray([scores[name] for name in names], dtype=float)  # (recipes, seeds)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, table.shape[1], size=(resamples, table.shape[1]))  # (resamples, seeds)
    means = table[:, draws].mean(axis=2)  # (recipes, resamples)
    is_best = means == means.max(axis=0, keepdims=True)
    wins = (is_best / is_best.sum(axis=0, keepdims=True)).sum(axis=1)
    return {name: float(win) / resamples for name, win in zip(names, wins, strict=True)}


def spearman_with_interval(
    first: list[float], second: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """Spearman's rank correlation of two scores of the same items, with a percentile bootstrap 95% interval
    over the items (resamples where either side is constant are skipped)."""
    rho = float(stats.spearmanr(first, second).statistic)
    first_array, second_array = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    rng = np.random.default_rng(seed)
    resampled = []
    for _ in range(resamples):
        index = rng.integers(0, len(first_array), size=len(first_array))
        if np.ptp(first_array[index]) == 0 or np.ptp(second_array[index]) == 0:
            continue
        resampled.append(stats.spearmanr(first_array[index], second_array[index]).statistic)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return rho, float(low), float(high)


def pairwise_agreement(first: list[float], second: list[float]) -> float:
    """The share of pairs of items that the two scores order the same way (a tie on either side counts half)."""
    agreements = []
    for i, j in itertools.combinations(range(len(first)), 2):
        product = np.sign(first[i] - first[j]) * np.sign(second[i] - second[j])
        agreements.append(0.5 if product == 0 else float(product > 0))
    return statistics.fmean(agreements)


def rank_agreement(first: list[float], second: list[float]) -> dict[str, float]:
    """How alike two scores of the same items rank them: Spearman's rho with its bootstrap 95% interval, and the
    share of pairs ordered alike."""
    rho, low, high = spearman_with_interval(first, second)
    return {"spearman": rho, "spearman_low": low, "spearman_high": high, "pairwise": pairwise_agreement(first, second)}


def ranks(values: list[float]) -> list[int]:
    """1 for the highest value, 2 for the next, ... (ties in the order given)."""
    order = sorted(range(len(values)), key=lambda index: -values[index])
    result = [0] * len(values)
    for rank, index in enumerate(order, start=1):
        result[index] = rank
    return result
