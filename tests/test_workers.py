"""Worker processes that die (kill -9, the out-of-memory killer): the parent fails and retries their trials at
once and replaces them; many workers on one SQLite file; and the sampler seeds of workers and runs."""

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from trivial_trials import POISON_ATTR, pop_waiting_trials, run_load, self_killing_objective, trivial_objective

import main
from hpo.config import load_config
from hpo.interruption import Interruption
from hpo.study import WORKER_DIED_EXIT_CODE, open_study
from hpo.supervision import WORKER_ATTR, WORKER_SEED_ATTR
from hpo.workers import WorkerPlan, run_processes, run_worker, worker_plans, worker_seeds

pytestmark = pytest.mark.usefixtures("in_tmp_path")  # study files and logs go to tmp_path

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
    command = [sys.executable, str(PROJECT_DIR / "main.py"), "--study_name", "killed", "--storage", storage]
    command += ["--n_trials", "4"]
    command += ["--n_jobs", "2", *tiny_study_flags, "--set", "train.budget_seconds=4"]  # 4 s of training a trial
    process = subprocess.Popen(command, cwd=Path.cwd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    # The run's own last line; multiprocessing's resource tracker may print its shutdown warning after it.
    last_line = [line for line in error.strip().splitlines() if line.startswith("warning: worker ")][-1]
    assert last_line.startswith("warning: worker ") and ") died, killed by SIGKILL" in last_line, last_line
    assert f"trial {victim.number} failed and queued again as trial {retry.number} (retry 1 of 2)" in last_line
    assert last_line.endswith("a new worker took its place")
    assert trials[victim.number].user_attrs["fail_reason"].startswith("its worker process died, killed by SIGKILL")
    assert retry.state in FINISHED and trials[victim.number].params.items() <= retry.params.items()  # kept
    assert len([trial for trial in trials if trial.state in FINISHED]) == 4  # the run still adds the 4 asked for
    assert "fail_reason" not in retry.user_attrs and "Traceback" not in error


@pytest.mark.slow
def test_a_trial_that_kills_its_worker_each_time_fails_for_good_after_max_retries(tmp_path):
    storage = f"sqlite:///{tmp_path / 'poison.db'}"
    config = load_config(CONFIG_PATH, ["study.baseline_trial=false", "study.max_retries=2"])
    study = open_study("poison", storage, config, seed=0)
    study.enqueue_trial({}, user_attrs={POISON_ATTR: True})
    common = WorkerPlan("poison", storage, config, tmp_path, 0, os.getpid(), make_trial_function=self_killing_objective)

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


@pytest.mark.slow
def test_four_workers_record_200_trials_on_one_sqlite_file(tmp_path, capfd):
    study, deaths, seconds = run_load(f"sqlite:///{tmp_path / 'load.db'}", workers=4, trials_each=50)
    output = "".join(capfd.readouterr())
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with capfd.disabled():
        print(f"\nSQLite, 4 workers x 50 trivial trials: {len(complete)} of 200 recorded in {seconds:.1f} s")
    assert "database is locked" not in output and not deaths
    assert len(complete) == 200 == len(study.trials)
    assert len({trial.system_attrs[WORKER_ATTR] for trial in complete}) == 4


def test_each_queued_trial_is_claimed_by_one_worker_alone(tmp_path):
    # Optuna's own claim (read WAITING, then write RUNNING) let two workers take one queued trial on SQLite: with
    # its RDBStorage, 4 processes popping 200 queued trials claimed 223. The second run of a trial then died on
    # "Cannot tell a COMPLETE trial" (a comparison once ended 11 of 12 runs).
    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(study_name="queue", storage=storage)
    for index in range(200):
        study.enqueue_trial({"x": index}, skip_if_exists=False)
    context = multiprocessing.get_context("spawn")
    popped = context.Queue()
    processes = [context.Process(target=pop_waiting_trials, args=(storage, "queue", popped)) for _ in range(4)]
    for process in processes:
        process.start()
    claimed = [trial_id for _ in processes for trial_id in popped.get(timeout=STARTUP_SECONDS)]
    for process in processes:
        process.join()
    assert sorted(claimed) == sorted(trial._trial_id for trial in study.trials)  # each once, none left out
    assert all(trial.state == TrialState.RUNNING and trial.datetime_start for trial in study.trials)


# Seeds -----------------------------------------------------------------------------------------------


def test_seeded_worker_seeds_are_those_of_earlier_releases_and_qmc_workers_share_one():
    assert worker_seeds(0, 2, 0, "tpe") == [2968811710, 3677149159]  # seeded demos reproduce their results
    assert worker_seeds(1, 3, 3, "random") == [4010755824, 4093133998, 1799442052]
    assert worker_seeds(5, 3, 7, "qmc") == [5, 5, 5]  # one Sobol sequence, whatever the run


def test_qmc_workers_of_every_run_use_the_seed_the_study_keeps(tmp_path):
    from hpo.study import study_sampler_seed

    config = load_config(CONFIG_PATH, ["study.sampler=qmc"])
    study = open_study("qmc", f"sqlite:///{tmp_path / 'qmc.db'}", config, seed=11)
    assert study_sampler_seed(study, config.study, 11) == 11
    assert study_sampler_seed(study, config.study, 12) == 11  # a later run, or another machine
    assert study.user_attrs["qmc_seed"] == 11
    tpe = load_config(CONFIG_PATH).study
    assert study_sampler_seed(study, tpe, 12) == 12


def test_each_trial_records_its_worker_and_sampler_seed(tmp_path):
    storage = f"sqlite:///{tmp_path / 'signed.db'}"
    config = load_config(CONFIG_PATH, ["study.baseline_trial=false"])
    open_study("signed", storage, config, seed=0)
    plan = WorkerPlan(
        "signed", storage, config, tmp_path, 1234, os.getpid(), n_trials=2, make_trial_function=trivial_objective
    )
    run_worker(plan, Interruption())
    trials = optuna.load_study(study_name="signed", storage=storage).trials
    assert [trial.system_attrs[WORKER_SEED_ATTR] for trial in trials] == [1234, 1234]
    assert {trial.system_attrs[WORKER_ATTR].rsplit(":", 1)[1] for trial in trials} == {str(os.getpid())}


@pytest.mark.slow
def test_runs_without_a_seed_sample_other_recipes_and_the_printed_seed_replays_one(tmp_path, capsys, tiny_study_flags):
    def first_trial(name: str, *seed: str) -> tuple[dict, int, str]:
        storage = f"sqlite:///{tmp_path / name}.db"
        arguments = ["--study_name", name, "--storage", storage, "--n_trials", "1", *seed, *tiny_study_flags]
        assert main.main([*arguments, "--set", "study.baseline_trial=false"]) == 0
        (trial,) = optuna.load_study(study_name=name, storage=storage).trials
        return trial.params, trial.system_attrs[WORKER_SEED_ATTR], capsys.readouterr().out

    first, first_seed, output = first_trial("first")
    second, second_seed, _ = first_trial("second")  # as another machine, started at the same time, would
    assert first != second and first_seed != second_seed
    (line,) = [line for line in output.splitlines() if "sampler seed" in line]
    run_seed = int(line.split("sampler seed ")[1].split()[0])
    assert "(drawn at random; --seed repeats it)" in line
    replay, replay_seed, _ = first_trial("replay", "--seed", str(run_seed))
    assert replay == first and replay_seed == first_seed == worker_seeds(run_seed, 1, 0, "tpe")[0]


def test_cores_come_from_the_affinity_and_the_container_quota(tmp_path, monkeypatch):
    from data.machine import cgroup_cpu_quota, usable_cpus

    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a container allowed 1.5 cores
    assert cgroup_cpu_quota(tmp_path) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert usable_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").unlink()
    assert cgroup_cpu_quota(tmp_path) is None


def test_workers_share_the_usable_cores_and_cap_every_thread_pool(tmp_path, monkeypatch):
    from trivial_trials import thread_reporting_objective

    import hpo.workers

    monkeypatch.setattr(hpo.workers, "usable_cpus", lambda: 4)  # say, 4 cores of a 64-core machine's container
    config = load_config(CONFIG_PATH, ["study.baseline_trial=false"])
    base = WorkerPlan("threads", "", config, tmp_path, 0, os.getpid(), make_trial_function=thread_reporting_objective)
    assert [plan.threads for plan in worker_plans(base, 4, n_jobs=2, existing=0)] == [2, 2]

    storage = f"sqlite:///{tmp_path / 'threads.db'}"
    open_study("threads", storage, config, seed=0)
    threads = torch.get_num_threads()
    run_worker(dataclasses.replace(base, storage_url=storage, n_trials=1, threads=1), Interruption())
    assert torch.get_num_threads() == threads  # restored after the worker's trials (--n_jobs 1 runs in the command)
    (trial,) = optuna.load_study(study_name="threads", storage=storage).trials
    assert trial.user_attrs["torch_threads"] == 1 and trial.user_attrs["pool_threads"] == [1]
