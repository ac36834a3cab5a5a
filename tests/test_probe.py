import numpy as np

from hpo.config import defaults
from training.probe import cross_validated_accuracy, held_out_accuracy


def test_probe_separates_a_toy_separable_set_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    centres = rng.normal(size=(4, 16)) * 0.8  # overlapping a little, so accuracy is high but not 1
    separable = centres[labels] + rng.normal(size=(400, 16))
    config = defaults("probe", folds=5)
    result = cross_validated_accuracy(separable, labels, 5, config)
    assert result.accuracy > 0.85
    assert 0 < result.standard_error < 0.02
    noise = cross_validated_accuracy(rng.normal(size=(400, 16)), labels, 5, config)
    # Chance is 0.25; with 400 rows its standard error is about 0.022: allow 4 of them.
    assert abs(noise.accuracy - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 400)
    train, test = np.arange(400) % 4 != 0, np.arange(400) % 4 == 0
    held_out = held_out_accuracy(separable[train], labels[train], separable[test], labels[test], config)
    assert held_out.accuracy > 0.85 and held_out.rows == 100


def test_probe_reports_nan_for_non_finite_embeddings():
    features = np.full((40, 4), np.nan, dtype=np.float32)
    result = cross_validated_accuracy(features, np.repeat(np.arange(4), 10), 2, defaults("probe"))
    assert np.isnan(result.accuracy)
