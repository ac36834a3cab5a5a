"""Planned runs: a study of fixed trials (a comparison's cells x seeds, a confirmation's recipes x seeds) run to
its plan and no further. One runner serves `compare` and `confirm`:

1. a run left RUNNING by a process that died with its whole group (kill -9, out of memory, power loss) is
   failed, and queued again, once its heartbeat is older than study.grace_seconds (the heartbeat's rule);
2. every planned run the study does not hold (done, running, queued, or ended unstable) is queued;
3. workers run queued runs only: a worker that finds the queue empty stops, it never samples a run of its
   own from the companion's search space (whose seed and token ranges are wide open);
4. while planned runs still run elsewhere (another terminal, another machine), the command waits for them,
   so that what it prints at the end is the whole plan.
"""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import Config
from hpo.study import RunLimits, StudyRun, run_study

# A planned run in one of these states needs no new copy: done, running, queued, or pruned (a run that went
# non-finite, which the same seed and data would only repeat: it is scored as a loss, hpo.study_values).
PRESENT_STATES = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)


def run_params(trial: FrozenTrial) -> dict[str, Any]:
    """The planned parameters a trial runs: those it was queued with (set before it samples anything), else its
    own (a trial recorded by an older version)."""
    return trial.system_attrs.get("fixed_params") or trial.params


def planned_trials(study: optuna.Study, plan: Sequence[dict[str, Any]], states: tuple[TrialState, ...]) -> list:
    """The study's trials in these states whose parameters are a planned run's."""
    return [trial for trial in study.get_trials(deepcopy=False, states=states) if run_params(trial) in plan]


def fail_stale_runs(study: optuna.Study) -> None:
    """Fail the runs whose heartbeat is older than the grace period; the storage's callback queues each again
    (up to study.max_retries times). Optuna does this only inside optimize(), which a plan with nothing queued
    never reaches."""
    optuna.storages.fail_stale_trials(study)


def enqueue_missing(study: optuna.Study, plan: Sequence[dict[str, Any]]) -> int:
    """Queue every planned run the study does not hold, in the plan's order; returns how many were queued."""
    present = [run_params(trial) for trial in study.get_trials(deepcopy=False, states=PRESENT_STATES)]
    missing = [params for params in plan if params not in present]
    for params in missing:
        study.enqueue_trial(params, skip_if_exists=False)
    return len(missing)


def run_plan(
    study: optuna.Study,
    storage_url: str,
    config: Config,
    data_dir: Path,
    n_jobs: int,
    plan: Sequence[dict[str, Any]],
    what: str,
    force: bool = False,
) -> StudyRun | None:
    """Run the planned runs the study lacks, after a line that says `what` and how many runs were queued now and
    wait; return when no planned run is queued or running. None when this command ran none."""
    fail_stale_runs(study)
    queued = enqueue_missing(study, plan)
    waiting = len(planned_trials(study, plan, (TrialState.WAITING,)))
    print(f"{what}: {queued} run(s) queued now, {waiting} to run, in study {study.study_name!r}", flush=True)
    run, said_waiting = None, False
    while True:
        waiting = len(planned_trials(study, plan, (TrialState.WAITING,)))
        if waiting:
            limits = RunLimits(n_trials=waiting, queued_only=True)
            ran = run_study(study.study_name, storage_url, config, data_dir, limits, n_jobs, 0, force)
            deaths = [*(run.worker_deaths if run else []), *ran.worker_deaths]
            run = StudyRun(ran.study, deaths)
        fail_stale_runs(study)
        if planned_trials(study, plan, (TrialState.WAITING,)):
            continue  # a stale run was queued again
        running = planned_trials(study, plan, (TrialState.RUNNING,))
        if not running:
            return run
        if not said_waiting:
            print(
                f"waiting for {len(running)} planned run(s) running elsewhere (trials "
                f"{', '.join(str(trial.number) for trial in running)}); one whose process died is failed and run "
                f"here once its heartbeat is {config.study.grace_seconds} s old",
                flush=True,
            )
            said_waiting = True
        time.sleep(config.study.heartbeat_seconds)
