"""Where a study stands (`main.py status`): trials by state, the best so far, the running trials, and an
estimate of the time the latest run needs to finish."""

import datetime
import os
import socket
import statistics
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.confirmation import describe, load_confirmation
from hpo.curves import latest_point
from hpo.storage import displayed_url, load_existing_study
from hpo.study_values import format_value, objective_name, outcome, ranked_trials, value_error, value_label
from hpo.trial_logs import WORKER_LABEL_ATTR

RUN_ATTR = "last_run"  # the study's user attr describing the latest run, which the estimate is about
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def record_study_run(study: optuna.Study, trials_to_add: int | None, n_jobs: int, timeout: float | None) -> None:
    """Record the run that starts now in the study, for the status command's estimate."""
    study.set_user_attr(
        RUN_ATTR,
        {
            "started": time.time(),
            "trials_to_add": trials_to_add,
            "n_jobs": n_jobs,
            "timeout": timeout,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        },
    )


def format_duration(seconds: float) -> str:
    """3h 05m, 4m 09s or 42s."""
    seconds = round(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def trial_seconds(trial: FrozenTrial) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def counts_line(study: optuna.Study) -> str:
    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    shown = ", ".join(f"{number} {state.name.lower()}" for state, number in counts.items() if number)
    return f"{len(study.trials)} trials: {shown or 'none yet'}"


def best_lines(study: optuna.Study) -> list[str]:
    """The best completed trial: its value, the gain over the same encoder randomly initialised, its parameters."""
    ranked = ranked_trials(study)
    if not ranked:
        return ["best so far: no completed trial yet"]
    best = ranked[0]
    attrs = best.user_attrs
    value = format_value(study, best.value, value_error(study, best))
    line = f"best so far: trial {best.number}, {value_label(study)} {value}"
    if "probe_accuracy" in attrs or objective_name(study) == "probe_accuracy":
        line += f" ({outcome(best)})"
    shown = {name: f"{value:.4g}" if isinstance(value, float) else value for name, value in best.params.items()}
    return [line, *(f"  {name} = {value}" for name, value in shown.items())]


def running_lines(study: optuna.Study, running: list[FrozenTrial], now: datetime.datetime) -> list[str]:
    """Each running trial: its time so far, its worker, and the latest point of its training curve."""
    if not running:
        return ["running: none"]
    lines = ["running:"]
    for trial in running:
        line = (
            f"  trial {trial.number}: {format_duration((now - trial.datetime_start).total_seconds())} so far, "
            f"{trial.user_attrs.get(WORKER_LABEL_ATTR, 'worker unknown')}"
        )
        point = latest_point(study.study_name, trial.number)
        if point is not None:
            line += (
                f"; step {point.step:,} ({point.tokens:,} tokens): loss {point.loss:.3f}, "
                f"{point.tokens_per_second:,.0f} tokens/s"
            )
        lines.append(line)
    return lines


def finish_seconds(running_left: list[float], to_start: int, mean: float, workers: int) -> float:
    """When the last trial ends if each worker takes the next trial as soon as it is free, each trial
    lasting `mean` seconds; running trials need `running_left` seconds more."""
    free_at = sorted([*running_left, *[0.0] * max(0, workers - len(running_left))])
    for _ in range(to_start):
        free_at[0] += mean
        free_at.sort()
    return max(free_at, default=0.0)


def estimate_line(study: optuna.Study, running: list[FrozenTrial], now: datetime.datetime) -> str:
    """The time the latest run needs to finish: its trials not yet started and its running ones, at the mean
    duration of the study's finished (complete and pruned) trials, spread over the run's workers; with a
    --timeout, no trial starts after it."""
    run = study.user_attrs.get(RUN_ATTR)
    if run is None:
        return "estimate: none (no run of this study was recorded by main.py)"
    started = datetime.datetime.fromtimestamp(run["started"])
    about = f"the run started {started.isoformat(sep=' ', timespec='minutes')} on {run['host']}"
    finished = [trial for trial in study.get_trials(deepcopy=False, states=FINISHED) if trial.datetime_complete]
    if not finished:
        return f"estimate: none yet for {about}: no finished trial to time"
    if run["trials_to_add"] is None and run["timeout"] is None:
        return f"estimate: none for {about}: it adds trials up to --max_trials, with no count to go by"
    mean = statistics.fmean(trial_seconds(trial) for trial in finished)
    in_run = [trial for trial in study.trials if trial.datetime_start and trial.datetime_start >= started]
    to_start = max(0, (run["trials_to_add"] or 0) - len(in_run))
    running_left = [max(0.0, mean - (now - trial.datetime_start).total_seconds()) for trial in running]
    if not running and not to_start:
        return f"estimate: {about} has finished"
    basis = f"{to_start} trial(s) to start" if run["trials_to_add"] is not None else "trials until its --timeout"
    basis += (
        f" and {len(running)} running, {run['n_jobs']} worker(s), at the mean {format_duration(mean)} of "
        f"{len(finished)} finished (complete and pruned) trials"
    )
    seconds = finish_seconds(running_left, to_start, mean, run["n_jobs"])
    if run["timeout"] is not None:
        to_deadline = run["started"] + run["timeout"] - now.timestamp()
        last_ends = to_deadline + mean if to_deadline > 0 else max(running_left, default=0.0)
        seconds = last_ends if run["trials_to_add"] is None else min(seconds, last_ends)
        basis += f"; no trial starts after its --timeout of {run['timeout']:g} s"
    stalled = "" if running else " (no trial is running: the run may have stopped)"
    return f"estimate: about {format_duration(seconds)} to finish {about}{stalled}: {basis}"


def describe_status(study: optuna.Study, storage_url: str, now: datetime.datetime | None = None) -> str:
    """The status report as lines of text."""
    now = now or datetime.datetime.now()  # Optuna's trial times are naive local times
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    confirmation = load_confirmation(study)
    lines = [
        f"study {study.study_name!r} in {displayed_url(storage_url)}, maximising {objective_name(study)}",
        counts_line(study),
        *best_lines(study),
        *(describe(confirmation) if confirmation else ["confirmation: none (`main.py confirm`)"]),
        *running_lines(study, running, now),
        estimate_line(study, running, now),
    ]
    return "\n".join(lines)


def print_status(study_name: str, storage_url: str) -> None:
    print(describe_status(load_existing_study(study_name, storage_url), storage_url))
