"""A worker process that dies (kill -9, the out-of-memory killer, a segfault) -> its running trial is failed
at once and retried, up to study.max_retries times, the way the heartbeat retries a silent worker's trial.

Each worker signs the trials it runs (system attr "worker": host and pid), so its parent, which sees the
death within a moment through the process's sentinel, can tell which trials were its own without waiting
for the heartbeat's grace period.
"""

import copy
import dataclasses
import os
import signal
import socket

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

WORKER_ATTR = "worker"  # trial system attr: the process that runs the trial, "host:pid"
WORKER_SEED_ATTR = "worker_seed"  # trial system attr: that worker's sampler seed, to replay the study
WORKER_ATTRS = (WORKER_ATTR, WORKER_SEED_ATTR)


def worker_id(pid: int | None = None) -> str:
    """The name a worker signs its trials with: this host and the pid (default: this process)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def sign_trial(trial: optuna.Trial, seed: int) -> None:
    """Record on the trial which worker process runs it and with which sampler seed."""
    trial.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_id())
    trial.storage.set_trial_system_attr(trial._trial_id, WORKER_SEED_ATTR, seed)


def exit_cause(exit_code: int) -> str:
    """A process's exit code in words: multiprocessing reports death by signal N as -N."""
    if exit_code >= 0:
        return f"exited with code {exit_code}"
    name = signal.Signals(-exit_code).name
    return f"killed by {name}" + (" (kill -9, or the out-of-memory killer)" if name == "SIGKILL" else "")


@dataclasses.dataclass(frozen=True)
class WorkerDeath:
    """A worker process that died, and what became of the trials it was running."""

    worker_index: int
    pid: int
    cause: str
    trials: tuple[str, ...]  # one outcome per trial, e.g. "trial 3 failed and queued again as trial 7 (...)"
    replaced: bool

    def describe(self) -> str:
        trials = "; ".join(self.trials) or "it was running no trial"
        after = "a new worker took its place" if self.replaced else "no new worker took its place"
        return f"worker {self.worker_index} (pid {self.pid}) died, {self.cause}: {trials}; {after}"


def trials_of(study: optuna.Study, worker: str, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
    """The study's trials in these states that this worker signed."""
    return [
        trial
        for trial in study.get_trials(deepcopy=False, states=states)
        if trial.system_attrs.get(WORKER_ATTR) == worker
    ]


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, cause: str, max_retries: int) -> tuple[bool, str]:
    """Fail a dead worker's running trial with its reason (user attr fail_reason), and queue it again through
    the storage's heartbeat retry callback unless it already had max_retries retries; returns whether it was
    queued again, and what happened in words."""
    storage = study._storage
    tries = len(trial.system_attrs.get("retry_history", [])) + 1
    retried = tries <= max_retries
    reason = f"its worker process died, {cause}"
    if not retried:
        reason += f"; failed for good: its worker died on each of its {tries} tries (study.max_retries = {max_retries})"
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:  # another machine's heartbeat check failed (and retried) it first
        return True, f"trial {trial.number} was already failed (and queued again) by the heartbeat"
    if not retried:
        return False, f"trial {trial.number} failed for good after {tries} tries (study.max_retries = {max_retries})"
    # The retry inherits the trial's attrs, but not this failure's reason nor the dead worker's signature.
    failed = copy.deepcopy(trial)
    failed.state = TrialState.FAIL
    failed.system_attrs = {key: value for key, value in failed.system_attrs.items() if key not in WORKER_ATTRS}
    storage.get_heartbeat_stale_trial_callback()(study, failed)
    (retry,) = [
        waiting
        for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting.system_attrs.get("retry_history", [])[-1:] == [trial.number]
    ]
    return (
        True,
        f"trial {trial.number} failed and queued again as trial {retry.number} (retry {tries} of {max_retries})",
    )
