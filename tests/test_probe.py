import numpy as np
import pytest

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


def test_a_gain_is_paired_so_its_error_comes_from_the_discordant_rows():
    from training.results import format_accuracy, format_gain, pack_correct, paired_gain, unpack_correct

    rng = np.random.default_rng(0)
    reference = rng.random(5000) < 0.5
    flips = rng.random(5000) < 0.06  # the pretrained encoder changes 6% of the rows' outcomes
    correct = np.where(flips & ~reference, True, reference)  # ... each flip from wrong to right
    gain, error = paired_gain(correct, reference)
    assert gain == pytest.approx(correct.mean() - reference.mean())
    better = int((correct & ~reference).sum())
    assert error == pytest.approx(np.sqrt((better / 5000 - gain**2) / 5000))
    # Far below the binomial error of either accuracy (about 0.0071 on 5,000 rows).
    assert error < 0.5 * np.sqrt(0.25 / 5000)
    # The sample spread of a paired bootstrap agrees.
    draws = rng.integers(0, 5000, size=(2000, 5000))
    bootstrap = (correct[draws].mean(1) - reference[draws].mean(1)).std()
    assert error == pytest.approx(bootstrap, rel=0.1)
    assert (unpack_correct(pack_correct(correct), 5000) == correct).all()
    assert format_accuracy(0.56431, 0.00702) == "56.43% ± 0.70" and format_gain(0.0532, 0.0061) == "+5.32 ± 0.61 points"
