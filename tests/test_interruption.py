"""Ctrl-C and a killed parent, on a real study command in its own process group: every process stops, the
running trials end FAIL marked "interrupted", and each is queued again with its parameters."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.interruption import Interruption

pytestmark = pytest.mark.usefixtures("in_tmp_path")  # study files and logs go to tmp_path

PROJECT_DIR = Path(__file__).resolve().parents[1]
LONG_TRIAL = ["--set", "train.budget_seconds=600"]  # 10 minutes of training: a trial is surely running when we stop it
STARTUP_SECONDS = 300  # to import torch, load the data and start the trials on a loaded 2-core machine
STOP_SECONDS = 30  # measured 1-6 s on a loaded 2-core machine (a worker polls for its parent every second)

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc")


@contextlib.contextmanager
def study_command(
    storage: str, n_jobs: int, tiny_study_flags: list[str], background: bool = False
) -> Iterator[subprocess.Popen]:
    """`main.py` with a long trial budget in a new process group; whatever is left of the group is killed after."""
    arguments = ["--n_trials", "4", "--n_jobs", str(n_jobs), *tiny_study_flags, *LONG_TRIAL]
    with main_command(arguments, storage, background) as process:
        yield process


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def main_command(arguments: list[str], storage: str, background: bool = False) -> Iterator[subprocess.Popen]:
    """`main.py ARGUMENTS` on study "stop" in a new process group; whatever is left of the group is killed after.
    background: started as a shell starts `command &`, with SIGINT ignored."""
    command = [sys.executable, str(PROJECT_DIR / "main.py"), *arguments, "--study_name", "stop", "--storage", storage]
    process = subprocess.Popen(
        command,
        cwd=Path.cwd(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigint if background else None,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing left of the group: the test passed
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def communicate_or_fail(process: subprocess.Popen, seconds: float) -> str:
    """The stopped command's stderr; a command still running after `seconds` is killed and the test fails
    with what it printed, so that a slow stop says where it hung."""
    try:
        return process.communicate(timeout=seconds)[1]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, error = process.communicate()
        pytest.fail(f"still running {seconds} s after the signal; stdout:\n{output}\nstderr:\n{error}")


def wait_for_running_trials(process: subprocess.Popen, storage: str, count: int) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(KeyError):  # the study is not created yet
            study = optuna.load_study(study_name="stop", storage=storage)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if len([trial for trial in running if trial.params]) >= count:  # sampled: training, not just created
                return
        time.sleep(0.5)
    pytest.fail(f"{count} trial(s) not running after {STARTUP_SECONDS} s")


def assert_interrupted_trials_are_queued_again(storage: str, count: int) -> None:
    trials = optuna.load_study(study_name="stop", storage=storage).trials
    assert not [trial.number for trial in trials if trial.state == TrialState.RUNNING]
    interrupted = [trial for trial in trials if "interrupted" in trial.user_attrs]
    assert len(interrupted) == count and all(trial.state == TrialState.FAIL for trial in interrupted)
    queued = {t.user_attrs["requeued_from_trial"]: t for t in trials if t.state == TrialState.WAITING}
    assert sorted(queued) == [trial.number for trial in interrupted]
    for trial in interrupted:  # a queued trial (the baseline) stopped while it sampled keeps all it was queued with
        expected = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        assert trial.params and queued[trial.number].system_attrs["fixed_params"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_ctrl_c_stops_every_process_and_queues_the_running_trials(tmp_path, tiny_study_flags, n_jobs):
    storage = f"sqlite:///{tmp_path / 'stop.db'}"
    with study_command(storage, n_jobs, tiny_study_flags) as process:
        wait_for_running_trials(process, storage, n_jobs)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        stopped = time.monotonic()
        error = communicate_or_fail(process, STOP_SECONDS)
        print(f"stopped {time.monotonic() - stopped:.1f} s after SIGINT")

    assert process.returncode == 130, error
    assert "Traceback" not in error
    lines = [line for line in error.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and re.fullmatch(
        r"interrupted: \d+ finished trials are saved; run the same command to resume", lines[0]
    )
    assert_interrupted_trials_are_queued_again(storage, n_jobs)


@pytest.mark.slow
def test_sigint_to_a_background_parent_alone_stops_its_workers(tmp_path, tiny_study_flags):
    """`python main.py ... &` starts with SIGINT ignored; `kill -INT PID` (the parent alone, not the group) must
    still stop the parent, which passes the stop on to its workers."""
    storage = f"sqlite:///{tmp_path / 'stop.db'}"
    with study_command(storage, 2, tiny_study_flags, background=True) as process:
        wait_for_running_trials(process, storage, 2)
        os.kill(process.pid, signal.SIGINT)
        error = communicate_or_fail(process, STOP_SECONDS)
    assert process.returncode == 130 and "Traceback" not in error, error
    assert_interrupted_trials_are_queued_again(storage, 2)


@pytest.mark.slow
def test_a_comparison_stopped_by_ctrl_c_resumes_with_the_same_command(tmp_path, tiny_study_flags):
    storage = f"sqlite:///{tmp_path / 'stop.db'}"
    grid = ["--grid", "model.attention_kind=standard,rope", "--seeds", "1"]
    # Runs of 64 steps: running when stopped (or probing), quick to finish when resumed.
    compare = ["compare", *grid, "--n_jobs", "1", *tiny_study_flags, "--set", "train.budget_tokens=16384"]
    with main_command(compare, storage) as process:
        wait_for_running_trials(process, storage, 1)
        os.killpg(process.pid, signal.SIGINT)
        error = communicate_or_fail(process, STOP_SECONDS)
    assert process.returncode == 130 and "Traceback" not in error, error
    trials = optuna.load_study(study_name="stop", storage=storage).trials
    (interrupted,) = [trial for trial in trials if "interrupted" in trial.user_attrs]
    assert interrupted.state == TrialState.FAIL and not [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [trial for trial in trials if trial.state == TrialState.WAITING]
    again = [trial for trial in waiting if trial.user_attrs.get("requeued_from_trial") == interrupted.number]
    assert len(waiting) == 2 and len(again) == 1  # the stopped run queued again, the other cell still queued
    assert again[0].system_attrs["fixed_params"] == interrupted.params

    resumed = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "main.py"), *compare, "--study_name", "stop", "--storage", storage],
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS + 300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "0 run(s) queued now, 2 to run" in resumed.stdout  # the stopped run and the one not started
    assert "2 of 2 runs done" in resumed.stdout
    study = optuna.load_study(study_name="stop", storage=storage)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(trial.params["model.attention_kind"] for trial in done) == ["rope", "standard"]


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent`, from /proc/<pid>/stat (its 4th field)."""
    children = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                children.append(int(entry.name))
    return children


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status may wait long for its new parent to collect it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@needs_proc
def test_workers_stop_when_the_parent_is_killed(tmp_path, tiny_study_flags):
    storage = f"sqlite:///{tmp_path / 'stop.db'}"
    with study_command(storage, 2, tiny_study_flags) as process:
        wait_for_running_trials(process, storage, 2)
        workers = child_pids(process.pid)
        assert len(workers) >= 2
        process.kill()
        process.wait()
        killed = time.monotonic()
        while any(map(is_running, workers)) and time.monotonic() < killed + STOP_SECONDS:
            time.sleep(0.2)
        print(f"workers gone {time.monotonic() - killed:.1f} s after SIGKILL of the parent")
        assert not [pid for pid in workers if is_running(pid)]

    assert_interrupted_trials_are_queued_again(storage, 2)


def test_a_queued_trial_stopped_before_it_sampled_is_queued_again_with_its_parameters():
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.25})
    interruption = Interruption()
    interruption.reason = "interrupted by SIGINT (Ctrl-C)"  # the stop came while the trial was being created

    def objective(trial: optuna.Trial) -> float:
        with interruption.requeue_on_stop(trial):
            return trial.suggest_float("x", 0, 1)

    verbosity = optuna.logging.get_verbosity()
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    optuna.logging.set_verbosity(verbosity)  # quietened for the failing trial
    interruption.requeue_stopped(study)  # as run_worker does once optimize has failed the trial
    failed, queued = study.trials
    assert failed.state == TrialState.FAIL and failed.params == {}
    assert failed.user_attrs == {"interrupted": "interrupted by SIGINT (Ctrl-C)"}
    assert queued.state == TrialState.WAITING and queued.system_attrs["fixed_params"] == {"x": 0.25}
    assert not interruption.in_objective


def stop_a_trial_after_it_sampled(study: optuna.Study) -> Interruption:
    """One trial that samples x and is then stopped as by Ctrl-C; the Interruption that stopped it."""
    interruption = Interruption()

    def objective(trial: optuna.Trial) -> float:
        with interruption.requeue_on_stop(trial):
            trial.suggest_float("x", 0, 1)
            interruption.reason = "interrupted by SIGINT (Ctrl-C)"
            raise KeyboardInterrupt

    verbosity = optuna.logging.get_verbosity()
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    optuna.logging.set_verbosity(verbosity)  # quietened for the failing trial
    return interruption


def test_an_interrupted_trial_is_queued_again_with_its_user_attrs():
    """The baseline trial, the one most often interrupted, stays the baseline when it runs again."""
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5}, user_attrs={"baseline": True})
    interruption = stop_a_trial_after_it_sampled(study)
    interruption.requeue_stopped(study)
    failed, queued = study.trials
    assert failed.user_attrs == {"baseline": True, "interrupted": "interrupted by SIGINT (Ctrl-C)"}
    assert queued.state == TrialState.WAITING and queued.system_attrs["fixed_params"] == {"x": 0.5}
    assert queued.user_attrs == {"baseline": True, "requeued_from_trial": 0}


def test_a_stopped_trial_is_queued_from_its_failed_record_and_only_once_optuna_failed_it():
    """Queued once failed, from the failed record; a trial Optuna could not fail (still RUNNING) is left to the
    heartbeat, whose retry would otherwise queue it a second time."""
    study = optuna.create_study()
    interruption = stop_a_trial_after_it_sampled(study)
    assert [trial.state for trial in study.trials] == [TrialState.FAIL]  # nothing queued before the failure
    interruption.requeue_stopped(study)
    failed, queued = study.trials
    assert queued.system_attrs["fixed_params"] == failed.params and not interruption.stopped_trials

    running = study.ask()  # the queued copy, claimed; as if Optuna's tell had failed, it stays RUNNING
    interruption.stopped_trials.append(running.number)
    interruption.requeue_stopped(study)
    assert [trial.state for trial in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert not interruption.stopped_trials


def test_a_queued_trial_stopped_while_it_sampled_keeps_every_parameter_it_was_queued_with():
    """The baseline stopped between two suggestions (how a Ctrl-C early in a study lands on a loaded machine):
    its copy runs the whole baseline recipe, not the sampled part of it plus a fresh draw of the rest."""
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5, "y": 0.75}, user_attrs={"baseline": True})
    stop_a_trial_after_it_sampled(study).requeue_stopped(study)
    failed, queued = study.trials
    assert failed.params == {"x": 0.5}
    assert queued.system_attrs["fixed_params"] == {"x": 0.5, "y": 0.75} and queued.user_attrs["baseline"]
