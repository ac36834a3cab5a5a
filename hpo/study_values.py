"""What a study's values are, how they are written, and its completed trials ranked by them."""

import optuna
from optuna.trial import FrozenTrial, TrialState

from training.config import PROBE_TARGETS

RUN_CONFIGS_ATTR = "run_configs"  # study user attr: every configuration its runs used, by run_config_key
RUN_CONFIG_ATTR = "run_config"  # trial user attr: the key of the configuration it ran with (before its params)
TOKENS_ATTR = "tokens_seen"  # trial user attr: the tokens it trained on
OLD_TOKENS_ATTR = (
    "budget_tokens"  # the same in studies from before 2026-12-04 (planned, for pruned token-budget trials)
)


def trial_tokens(trial: FrozenTrial) -> int | None:
    """The tokens a trial trained on, from its user attrs (older studies: the attr of the time)."""
    value = trial.user_attrs.get(TOKENS_ATTR, trial.user_attrs.get(OLD_TOKENS_ATTR))
    return None if value is None else int(value)


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
