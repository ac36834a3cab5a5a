"""What a study's values are, how they are written, and its completed trials ranked by them."""

import optuna
from optuna.trial import FrozenTrial, TrialState

from training.config import PROBE_TARGETS
from training.results import format_accuracy, format_gain

RUN_CONFIGS_ATTR = "run_configs"  # study user attr: every configuration its runs used, by run_config_key
RUN_CONFIG_ATTR = "run_config"  # trial user attr: the key of the configuration it ran with (before its params)
GAIN_ERROR_ATTR = "gain_standard_error"  # trial user attr: the paired standard error of its gain over random init
TOKENS_ATTR = "tokens_seen"  # trial user attr: the tokens it trained on
# A planned run (a confirmation's, a comparison's) whose training went non-finite ends pruned: its encoder carries
# nothing the probe can read, so it scores chance accuracy, a quarter for AG News's four balanced classes.
CHANCE_ACCURACY = 0.25
PLANNED_RUN_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # the runs that count, unstable ones at chance


def unstable_note(count: int) -> str:
    """ " | N run(s) non-finite, scored at chance accuracy" for a recipe or cell with such runs, else ""."""
    return f" | {count} run(s) non-finite, scored at chance accuracy" if count else ""


OLD_TOKENS_ATTR = (
    "budget_tokens"  # the same in studies from before 2026-12-04 (planned, for pruned token-budget trials)
)


def trial_tokens(trial: FrozenTrial) -> int | None:
    """The tokens a trial trained on, from its user attrs (older studies: the attr of the time)."""
    value = trial.user_attrs.get(TOKENS_ATTR, trial.user_attrs.get(OLD_TOKENS_ATTR))
    return None if value is None else int(value)


def planned_run_value(trial: FrozenTrial, metric: str) -> float:
    """A planned run's value: a completed run's own; an unstable run's (pruned: planned runs have no quick probes
    to prune on) is that of chance accuracy, its gain chance minus its own random-init accuracy. An unstable run
    is thus a loss for its recipe, never a hole that drops its seed from every recipe's mean."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if metric == PROBE_TARGETS["gain"]:
        return CHANCE_ACCURACY - trial.user_attrs["random_init_accuracy"]
    return CHANCE_ACCURACY


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first (ties keep trial order)."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(completed, key=lambda trial: -trial.value if maximize else trial.value)


def objective_name(study: optuna.Study) -> str:
    """What the study's values are, as Optuna records it (probe.target's metric name); studies made before
    probe.target existed maximised the accuracy."""
    return (study.metric_names or [PROBE_TARGETS["accuracy"]])[0]


def metric_label(metric: str) -> str:
    """A metric in words, for progress lines, the report and the best-trial line."""
    return {"probe_accuracy": "accuracy", "probe_gain_over_random_init": "gain over random init"}.get(metric, metric)


def value_label(study: optuna.Study) -> str:
    return metric_label(objective_name(study))


def format_metric(metric: str, value: float, standard_error: float | None = None) -> str:
    """A value of the metric `metric` in points: a gain as "+5.32 ± 0.61 points", an accuracy as "56.43% ± 0.70"."""
    if metric == PROBE_TARGETS["gain"]:
        return format_gain(value, standard_error)
    return format_accuracy(value, standard_error)


def format_value(study: optuna.Study, value: float, standard_error: float | None = None) -> str:
    return format_metric(objective_name(study), value, standard_error)


def value_error(study: optuna.Study, trial: FrozenTrial) -> float | None:
    """The standard error of a trial's value: of its gain (paired on the probe's rows and folds), or of its
    accuracy; None for a trial from before the gain's own error was recorded."""
    if objective_name(study) == PROBE_TARGETS["gain"]:
        return trial.user_attrs.get(GAIN_ERROR_ATTR)
    return trial.user_attrs.get("probe_standard_error")


def outcome(trial: FrozenTrial) -> str:
    """A completed trial's probe figures in words: accuracy, gain and the random-init line."""
    attrs = trial.user_attrs
    accuracy = attrs.get("probe_accuracy", trial.value)
    text = f"accuracy {format_accuracy(accuracy, attrs.get('probe_standard_error'))}"
    if "random_init_accuracy" in attrs:
        gain = format_gain(accuracy - attrs["random_init_accuracy"], attrs.get(GAIN_ERROR_ATTR))
        text += f", gain {gain} over random init {format_accuracy(attrs['random_init_accuracy'])}"
    return text
