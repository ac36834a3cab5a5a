"""Worker processes that die (kill -9, the out-of-memory killer): the parent fails and retries their trials at
once and replaces them."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from trivial_trials import POISON_ATTR, self_killing_objective

from hpo.config import load_config
from hpo.study import (
    WORKER_DIED_EXIT_CODE,
    WorkerPlan,
    open_study,
    run_processes,
    worker_plans,
)
from hpo.supervision import WORKER_ATTR

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONFIG_PATH = PROJECT_DIR / "config.yaml"
STARTUP_SECONDS = 300  # to import torch, load the data and start the trials on a loaded 2-core machine
NOTICE_SECONDS = 30  # measured about 1 s; the heartbeat's grace (study.grace_seconds) is 90 s
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def running_trial(process: subprocess.Popen, storage: str) -> optuna.trial.FrozenTrial:
    """A trial that trains (its recipe sampled), signed by its worker."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(KeyError):  # the study is not created yet
            study = optuna.load_study(study_name="killed", storage=storage)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.params and WORKER_ATTR in trial.system_attrs:
                    return trial
        time.sleep(0.2)
    pytest.fail(f"no trial running after {STARTUP_SECONDS} s")


@pytest.mark.slow
def test_a_killed_worker_has_its_trial_retried_at_once_and_is_replaced(tmp_path, tiny_study_flags):
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    command = [sys.executable, "main.py", "--study_name", "killed", "--storage", storage, "--n_trials", "4"]
    command += ["--n_jobs", "2", *tiny_study_flags, "--set", "train.budget_seconds=4"]  # 4 s of training a trial
    process = subprocess.Popen(command, cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = running_trial(process, storage)
        os.kill(int(victim.system_attrs[WORKER_ATTR].rsplit(":", 1)[1]), signal.SIGKILL)
        killed = time.monotonic()
        study = optuna.load_study(study_name="killed", storage=storage)
        while study.trials[victim.number].state == TrialState.RUNNING and time.monotonic() < killed + NOTICE_SECONDS:
            time.sleep(0.1)
        print(f"trial failed {time.monotonic() - killed:.1f} s after kill -9 of its worker")
        assert study.trials[victim.number].state == TrialState.FAIL
        _, error = process.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()

    assert process.returncode == WORKER_DIED_EXIT_CODE, error
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    (retry,) = [trial for trial in trials if trial.system_attrs.get("retry_history") == [victim.number]]
    last_line = error.strip().splitlines()[-1]
    assert last_line.startswith("warning: worker ") and ") died, killed by SIGKILL" in last_line, last_line
    assert f"trial {victim.number} failed and queued again as trial {retry.number} (retry 1 of 2)" in last_line
    assert last_line.endswith("a new worker took its place")
    assert trials[victim.number].user_attrs["fail_reason"].startswith("its worker process died, killed by SIGKILL")
    assert retry.state in FINISHED and retry.params == trials[victim.number].params
    assert len([trial for trial in trials if trial.state in FINISHED]) == 4  # the run still adds the 4 asked for
    assert "fail_reason" not in retry.user_attrs and "Traceback" not in error


@pytest.mark.slow
def test_a_trial_that_kills_its_worker_each_time_fails_for_good_after_max_retries(tmp_path):
    storage = f"sqlite:///{tmp_path / 'poison.db'}"
    config = load_config(CONFIG_PATH, ["study.baseline_trial=false", "study.max_retries=2"])
    study = open_study("poison", storage, config, seed=0)
    study.enqueue_trial({}, user_attrs={POISON_ATTR: True})
    common = WorkerPlan("poison", storage, config, tmp_path, 0, os.getpid(), make_objective=self_killing_objective)

    deaths = run_processes(worker_plans(common, n_trials=4, n_jobs=2, existing=0))

    trials = optuna.load_study(study_name="poison", storage=storage).trials
    poisoned = [trial for trial in trials if trial.user_attrs.get(POISON_ATTR)]
    assert [trial.state for trial in poisoned] == [TrialState.FAIL] * 3  # the first try and max_retries retries
    assert [trial.system_attrs.get("retry_history", []) for trial in poisoned] == [
        [],
        [poisoned[0].number],
        [poisoned[0].number, poisoned[1].number],
    ]
    assert poisoned[-1].user_attrs["fail_reason"] == (
        "its worker process died, killed by SIGKILL (kill -9, or the out-of-memory killer); failed for good: "
        "its worker died on each of its 3 tries (study.max_retries = 2)"
    )
    assert len(deaths) == 3 and "failed for good after 3 tries" in deaths[-1].describe()
    assert len([trial for trial in trials if trial.state == TrialState.COMPLETE]) == 3  # 4 asked, 1 failed for good
    assert not [trial for trial in trials if trial.state in (TrialState.RUNNING, TrialState.WAITING)]
