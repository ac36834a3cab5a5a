"""Objectives without pretraining, for tests of the worker processes and the storage: module-level factories
(WorkerPlan.make_objective), so that a spawned worker imports them by name."""

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from hpo.config import Config

POISON_ATTR = "kills_its_worker"  # user attr of a queued trial whose objective kills its own process


def trivial_objective(config: Config, data_dir: Path) -> Callable[[optuna.Trial], float]:
    """A few storage writes per trial, as a real trial makes: three parameters, three reports, a user attr."""

    def objective(trial: optuna.Trial) -> float:
        values = [trial.suggest_float(name, 0.0, 1.0) for name in ("x", "y", "z")]
        for step in range(3):
            trial.report(sum(values) * (step + 1) / 3, step)
        trial.set_user_attr("wall_seconds", 0.0)
        return sum(values)

    return objective


def self_killing_objective(config: Config, data_dir: Path) -> Callable[[optuna.Trial], float]:
    """The trivial objective, except that a trial marked POISON_ATTR kills its worker with SIGKILL, as the
    out-of-memory killer would."""
    trivial = trivial_objective(config, data_dir)

    def objective(trial: optuna.Trial) -> float:
        if trial.user_attrs.get(POISON_ATTR):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.5)  # the poisoned trial is taken by a worker before the others run out of trials
        return trivial(trial)

    return objective
