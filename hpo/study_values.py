"""What a study's values are, how they are written, and its completed trials ranked by them."""

import optuna
from optuna.trial import FrozenTrial, TrialState

from training.config import PROBE_TARGETS


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first (ties keep trial order)."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(completed, key=lambda trial: -trial.value if maximize else trial.value)


def objective_name(study: optuna.Study) -> str:
    """What the study's values are, as Optuna records it (probe.target's metric name); studies made before
    probe.target existed maximised the accuracy."""
    return (study.metric_names or [PROBE_TARGETS["accuracy"]])[0]


def value_label(study: optuna.Study) -> str:
    """The study's value in words, for progress lines, the report and the best-trial line."""
    return {"probe_accuracy": "accuracy", "probe_gain_over_random_init": "gain over random init"}.get(
        objective_name(study), objective_name(study)
    )


def format_value(study: optuna.Study, value: float) -> str:
    """A gain carries its sign."""
    return f"{value:+.4f}" if objective_name(study) == PROBE_TARGETS["gain"] else f"{value:.4f}"
