"""Objectives without pretraining, for tests of the worker processes and the storage: module-level factories
(WorkerPlan.make_trial_function), so that a spawned worker imports them by name."""

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


def run_load(storage_url: str, workers: int, trials_each: int) -> tuple[optuna.Study, list, float]:
    """`workers` worker processes of the project's own (hpo.storage, hpo.sampling, hpo.workers) add
    `trials_each` trivial trials each to a new study; returns it, the workers that died and the wall time."""
    from hpo.config import load_config
    from hpo.study import open_study
    from hpo.workers import WorkerPlan, run_processes, worker_plans

    config = load_config(Path(__file__).resolve().parents[1] / "config.yaml", ["study.baseline_trial=false"])
    open_study("load", storage_url, config, seed=0)
    common = WorkerPlan("load", storage_url, config, Path(), 0, os.getpid(), make_trial_function=trivial_objective)
    started = time.monotonic()
    deaths = run_processes(worker_plans(common, workers * trials_each, workers, existing=0))
    return optuna.load_study(study_name="load", storage=storage_url), deaths, time.monotonic() - started


def thread_reporting_objective(config: Config, data_dir: Path) -> Callable[[optuna.Trial], float]:
    """Records, per trial, the threads PyTorch and the BLAS/OpenMP pools would use (user attrs)."""
    import threadpoolctl
    import torch

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("torch_threads", torch.get_num_threads())
        trial.set_user_attr("pool_threads", sorted({pool["num_threads"] for pool in threadpoolctl.threadpool_info()}))
        return 0.0

    return objective


def pop_waiting_trials(storage_url: str, study_name: str, popped) -> None:
    """Claim queued trials as a worker's study.optimize does, until none is left; put the claimed ids on `popped`."""
    from hpo.config import defaults
    from hpo.storage import make_storage

    study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url, defaults("study")))
    claimed = []
    while (trial_id := study._pop_waiting_trial_id()) is not None:
        claimed.append(trial_id)
    popped.put(claimed)


def fixed_trivial_objective(config: Config, data_dir: Path) -> Callable[[optuna.Trial], float]:
    """The trivial objective, slowed a little so that two workers overlap on a queue."""
    trivial = trivial_objective(config, data_dir)

    def objective(trial: optuna.Trial) -> float:
        time.sleep(0.05)
        return trivial(trial)

    return objective


def drain_queue(storage_url: str, study_name: str, n_trials: int, queued_only: bool) -> None:
    """One command's worker on a plan's queue, as `compare` and `confirm` run it (queued_only: queued trials only),
    asked for n_trials: the number of runs its command saw waiting."""
    from hpo.config import load_config
    from hpo.interruption import Interruption
    from hpo.workers import WorkerPlan, run_worker

    config = load_config(Path(__file__).resolve().parents[1] / "config.yaml", ["study.baseline_trial=false"])
    plan = WorkerPlan(
        study_name,
        storage_url,
        config,
        Path(),
        0,
        os.getpid(),
        n_trials=n_trials,
        queued_only=queued_only,
        make_trial_function=fixed_trivial_objective,
    )
    run_worker(plan, Interruption())
