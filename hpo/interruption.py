"""Ctrl-C, or the death of the parent process -> the running trial is failed cleanly and queued again.

A terminal's Ctrl-C sends SIGINT to every process of its group: the parent and each worker. Inside the
objective the first SIGINT raises KeyboardInterrupt at once, so a long trial stops within one training
step; anywhere else (asking for a trial, telling its result, a callback) it only sets a flag, so that no
storage write is cut in half, and the optimisation loop stops before its next trial.
"""

import _thread
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.trial import TrialState

INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a command stopped by SIGINT
PARENT_POLL_SECONDS = 1.0


class Interruption:
    """Whether, and why, this process was asked to stop; and whether it is inside the objective just now."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.in_objective = False
        self.stopped_trials: list[int] = []  # numbers of the trials stopped here, to queue again once failed
        self._cause = "interrupted by SIGINT (Ctrl-C)"

    def on_sigint(self, signum: int, frame) -> None:
        """The SIGINT handler while trials run: raise only inside the objective, and only once."""
        if self.reason is not None:
            return
        self.reason = self._cause
        if self.in_objective:
            raise KeyboardInterrupt

    @contextmanager
    def requeue_on_stop(self, trial: optuna.Trial) -> Iterator[None]:
        """Run the trial's code inside: a stop (Ctrl-C, or the parent's death) raises KeyboardInterrupt at once
        there, and the trial is then marked "interrupted"; Optuna fails it, and `requeue_stopped` queues it again."""
        self.in_objective = True
        try:
            if self.reason is not None:  # the stop came while this trial was being created
                raise KeyboardInterrupt
            yield
        except KeyboardInterrupt:
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # it fails on purpose: no warning and traceback
            trial.set_user_attr("interrupted", self.reason or "interrupted")
            self.stopped_trials.append(trial.number)
            raise  # Optuna marks the trial FAIL and passes the KeyboardInterrupt on
        finally:
            self.in_objective = False

    def requeue_stopped(self, study: optuna.Study) -> None:
        """Queue the trials this process stopped, once Optuna has failed them (see `requeue`)."""
        while self.stopped_trials:
            requeue(study, self.stopped_trials.pop(0))

    def stop_study(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optimisation callback: no new trial once a stop was asked for between trials."""
        if self.reason is not None:
            study.stop()

    def watch_parent(self, parent_pid: int) -> None:
        """Interrupt this process like a Ctrl-C once its parent is gone (a daemon thread polls for it).

        Polling os.getppid() works wherever Python does and goes through the same SIGINT path as a Ctrl-C,
        so the running trial is failed and queued again; prctl(PR_SET_PDEATHSIG) is Linux-only and fires
        when the parent's starting *thread* ends, not the parent process.
        """

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(PARENT_POLL_SECONDS)
            self._cause = "interrupted: its parent process died"
            _thread.interrupt_main(signal.SIGINT)

        threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


@contextmanager
def sigint_handled_by(interruption: Interruption) -> Iterator[None]:
    """Route SIGINT to `interruption` (main thread only), restoring the previous handler after."""
    previous = signal.signal(signal.SIGINT, interruption.on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a stopped trial's parameters and user attrs (e.g. "baseline"), as the heartbeat's retry of a dead
    worker's trial does, so that the next run of the study runs it first.

    Queued once Optuna has failed the trial, from its final record: a trial Optuna could not fail (still
    RUNNING: its storage write failed) is left to the heartbeat, whose retry would otherwise queue it twice.
    A queued trial stopped before it sampled all its parameters keeps the ones it was queued with.
    """
    stopped = next(trial for trial in study.get_trials(deepcopy=False) if trial.number == number)
    if stopped.state != TrialState.FAIL:
        return
    # Stopped before it sampled anything, an enqueued trial holds its parameters only as fixed_params.
    params = {**stopped.system_attrs.get("fixed_params", {}), **stopped.params}
    carried = {name: value for name, value in stopped.user_attrs.items() if name != "interrupted"}
    study.enqueue_trial(params, user_attrs={**carried, "requeued_from_trial": number})
