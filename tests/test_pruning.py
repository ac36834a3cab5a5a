"""Pruning decides on report points, not step numbers, so trials with time budgets are compared; the
replay bench counts the pruner's false prunes on a study that ran without pruning."""

import itertools

import numpy as np
import optuna
import pytest
from conftest import CONFIG_PATH, TINY_OVERRIDES
from optuna.trial import TrialState

import hpo.trial
from bench.pruning_replay import replay
from hpo.config import defaults, load_config
from hpo.trial import PretrainAndProbe, Resources
from training.pretrain import Pretrainer
from training.probe import ProbeResult


def test_trials_with_a_time_budget_are_pruned_at_the_same_report_point(tmp_path, data_dir, monkeypatch):
    """Two trials whose steps last 0.1 s and 0.05 s reach the report points of a 2 s budget at different
    step numbers; the second, whose quick scores are lower, is pruned at the first report point."""
    overrides = [*TINY_OVERRIDES, f"data.cache_dir={tmp_path}", "search_space={}", "train.budget_seconds=2.0"]
    config = load_config(CONFIG_PATH, overrides)
    resources = Resources.load(config, data_dir)
    step_seconds = iter([0.1, 0.05])

    class FakeClockPretrainer(Pretrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seconds, ticks = next(step_seconds), itertools.count()
            self.clock = lambda: next(ticks) * seconds / 2  # read twice a step

    quick_scores = iter([0.60, 0.61, 0.62, 0.40, 0.41, 0.42])
    monkeypatch.setattr(hpo.trial, "Pretrainer", FakeClockPretrainer)
    monkeypatch.setattr(resources.quick_probe, "score", lambda *args: ProbeResult(next(quick_scores), 0.01, 200))
    rows = len(resources.probe.labels)  # the final probe's rows right or wrong: the gain is paired on them
    monkeypatch.setattr(
        hpo.trial,
        "random_init_scores",
        lambda *args: hpo.trial.RandomInit(accuracy=0.5, quick_accuracy=0.5, correct=np.zeros(rows, dtype=bool)),
    )
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.optimize(PretrainAndProbe(config, resources), n_trials=2)

    first, second = study.trials
    assert first.state == TrialState.COMPLETE and sorted(first.intermediate_values) == [0, 1, 2]
    assert second.state == TrialState.PRUNED and list(second.intermediate_values) == [0]
    assert first.user_attrs["steps"] != second.user_attrs["steps"]  # different step counts, same report point
    assert second.user_attrs["pruned_reason"].startswith("quick gain -10.00 points at report point 0 (step ")


def unpruned_trials(finals: list[float], quick: list[list[float]]) -> list[optuna.trial.FrozenTrial]:
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0)
    trials = []
    for number, (final, reports) in enumerate(zip(finals, quick, strict=True)):
        trial = optuna.trial.create_trial(
            params={"x": number / len(finals)},
            distributions={"x": distribution},
            value=final,
            intermediate_values=dict(enumerate(reports)),
        )
        trial.number = number  # as in the stored study
        trials.append(trial)
    return trials


def test_replay_counts_false_prunes_and_the_budget_saved():
    # Trial 2 looks poor early but finishes best: the median pruner stops it, a false prune.
    finals = [0.50, 0.52, 0.70, 0.40, 0.45]
    quick = [[0.50, 0.50], [0.52, 0.52], [0.30, 0.60], [0.35, 0.36], [0.60, 0.61]]
    result = replay(unpruned_trials(finals, quick), "median", defaults("study", pruner_startup_trials=2), [0.25, 0.5])
    assert result.pruned == [2, 3]
    assert result.false_prunes == [2] and result.best_pruned
    assert result.budget_saved == pytest.approx(2 * 0.75 / 5)
    assert result.regret == pytest.approx(0.70 - 0.52)  # the best trial left to finish is trial 1
    nothing = replay(unpruned_trials(finals, quick), "none", defaults("study"), [0.25, 0.5])
    assert nothing.pruned == [] and nothing.budget_saved == 0 and nothing.regret == 0
    # Warm-up: with one report point of warm-up, trial 2 (0.60 at the second point) survives.
    warm_config = defaults("study", pruner_startup_trials=2, pruner_warmup_steps=1)
    warm = replay(unpruned_trials(finals, quick), "median", warm_config, [0.25, 0.5])
    assert 2 not in warm.pruned and not warm.best_pruned
