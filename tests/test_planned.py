"""Planned runs (hpo/planned.py, the runner of `compare` and `confirm`): only planned runs ever start, each once,
whoever drains the queue; a run left RUNNING by a process group that died is failed and run again on resume."""

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from trivial_trials import drain_queue

import main
from hpo.config import load_config
from hpo.planned import enqueue_missing, fail_stale_runs, planned_trials, run_params
from hpo.study import open_study

pytestmark = pytest.mark.usefixtures("in_tmp_path")  # study files and logs go to tmp_path

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONFIG_PATH = PROJECT_DIR / "config.yaml"
STARTUP_SECONDS = 300  # to import torch, load the data and start the runs on a loaded 2-core machine


def planned_study(storage: str, runs: int) -> tuple[optuna.Study, list[dict]]:
    """A study of the trivial objective's space (x, y, z) and a plan of `runs` runs in it, queued."""
    config = load_config(CONFIG_PATH, ["study.baseline_trial=false"])
    study = open_study("plan", storage, config, seed=0)
    plan = [{"x": index / runs, "y": 0.5, "z": 0.25} for index in range(runs)]
    assert enqueue_missing(study, plan) == runs
    return study, plan


def drain_in_two_processes(storage: str, n_trials: int, queued_only: bool) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=drain_queue, args=(storage, "plan", n_trials, queued_only)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(STARTUP_SECONDS)
        assert process.exitcode == 0


@pytest.mark.slow
def test_two_commands_draining_one_plan_run_each_planned_run_once_and_nothing_else(tmp_path):
    storage = f"sqlite:///{tmp_path / 'plan.db'}"
    study, plan = planned_study(storage, runs=6)
    # Two commands planned at the same moment: both queued every run, and each asks its worker for all 12.
    for params in plan:
        study.enqueue_trial(params, skip_if_exists=False)

    drain_in_two_processes(storage, n_trials=12, queued_only=True)

    trials = optuna.load_study(study_name="plan", storage=storage).trials
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    assert sorted(run_params(trial)["x"] for trial in complete) == [params["x"] for params in plan]  # each once
    assert all(trial.params == run_params(trial) for trial in complete)  # nothing sampled
    copies = [trial for trial in trials if trial.state == TrialState.FAIL]
    assert len(copies) == 6 and len(trials) == 12  # the second copies stepped aside; no trial of its own
    assert all(trial.user_attrs["fail_reason"].startswith("not run: a copy of trial") for trial in copies)


@pytest.mark.slow
def test_without_the_queue_only_rule_a_worker_samples_runs_nobody_planned(tmp_path):
    # The control: the check above can see the failure it guards against.
    storage = f"sqlite:///{tmp_path / 'plan.db'}"
    _, plan = planned_study(storage, runs=3)

    drain_in_two_processes(storage, n_trials=3, queued_only=False)

    trials = optuna.load_study(study_name="plan", storage=storage).trials
    assert len(trials) == 6 and sum(run_params(trial) not in plan for trial in trials) == 3


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_run_whose_heartbeat_stopped_is_failed_and_queued_again(tmp_path):
    storage = f"sqlite:///{tmp_path / 'plan.db'}"
    config = load_config(CONFIG_PATH, ["study.baseline_trial=false", "study.heartbeat_seconds=1"])
    study = open_study("plan", storage, config, seed=0)
    plan = [{"x": 0.5, "y": 0.5, "z": 0.5}]
    enqueue_missing(study, plan)
    trial = study.ask()  # claimed by a worker that then died with its whole process group
    study._storage.record_heartbeat(trial._trial_id)
    assert enqueue_missing(study, plan) == 0  # running: present

    short_grace = ["study.baseline_trial=false", "study.heartbeat_seconds=1", "study.grace_seconds=2"]
    reader = open_study("plan", storage, load_config(CONFIG_PATH, short_grace), seed=0)
    time.sleep(4)  # heartbeats are compared at the database's clock, to the second
    fail_stale_runs(reader)

    assert reader.trials[trial.number].state == TrialState.FAIL
    (retry,) = planned_trials(reader, plan, (TrialState.WAITING,))
    assert retry.system_attrs["retry_history"] == [trial.number]


def first_running_run(process: subprocess.Popen, storage: str, study_name: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(KeyError):  # the study is not created yet
            study = optuna.load_study(study_name=study_name, storage=storage)
            if any(trial.params for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
                return
        time.sleep(0.2)
    pytest.fail(f"no run started after {STARTUP_SECONDS} s")


@pytest.mark.slow
def test_a_comparison_whose_process_group_was_killed_completes_when_run_again(tmp_path, capsys, tiny_study_flags):
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    command = ["compare", "--study_name", "grid", "--storage", storage, "--grid", "model.pooling=mean,first"]
    command += ["--seeds", "2", "--n_jobs", "2", *tiny_study_flags]
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "main.py"), *command],
        cwd=Path.cwd(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: killed whole, as by the OOM killer or a power cut
    )
    try:
        first_running_run(process, storage, "grid")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    study = optuna.load_study(study_name="grid", storage=storage)
    left_running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert left_running  # what the dead command leaves behind

    # Run again: a heartbeat 2 s old is stale (the killed run's workers beat every 30 s and are gone).
    assert main.main([*command, "--set", "study.heartbeat_seconds=1", "--set", "study.grace_seconds=2"]) == 0

    printed = capsys.readouterr().out
    assert "comparison 'grid' at equal tokens: 1,024 per run: 4 of 4 runs done" in printed
    study = optuna.load_study(study_name="grid", storage=storage)
    assert all(study.trials[trial.number].state == TrialState.FAIL for trial in left_running)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
