"""Where a study stands: the status command, the per-trial logs, the progress bars' quiet rule, and the
objective named by the report and the dashboard."""

import datetime
import io
import json
import subprocess
import sys
import threading
import urllib.request
import warnings

import optuna
import pytest
from conftest import CONFIG_PATH
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

import main
from data.progress import progress_bar
from hpo.config import load_config
from hpo.status import RUN_ATTR, describe_status, finish_seconds, format_duration
from hpo.trial_logs import WORKER_LABEL_ATTR, TrialLogs

START = datetime.datetime(2026, 1, 1, 12, 0, 0)
LEARNING_RATE = FloatDistribution(1e-4, 1e-2, log=True)


def finished_trial(number: int, state: TrialState, value: float | None, seconds: float) -> FrozenTrial:
    started = START + datetime.timedelta(minutes=number)
    return FrozenTrial(
        number=number,
        state=state,
        value=value,
        datetime_start=started,
        datetime_complete=started + datetime.timedelta(seconds=seconds),
        params={"train.learning_rate": 0.001 * (number + 1)},
        distributions={"train.learning_rate": LEARNING_RATE},
        user_attrs={
            "probe_accuracy": 0.62 + value,
            "random_init_accuracy": 0.62,
            "probe_standard_error": 0.01,
            "gain_standard_error": 0.006,
        }
        if value is not None
        else {},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


@pytest.fixture
def running_study(tmp_path) -> tuple[str, optuna.Study, datetime.datetime]:
    """Two complete trials (60 s each), one pruned (30 s), one running for 20 s, in a run of 6 trials on
    2 workers; returns the storage, the study and the moment the status is taken."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_metric_names(["probe_gain_over_random_init"])
    for trial in (
        finished_trial(0, TrialState.COMPLETE, 0.05, 60),
        finished_trial(1, TrialState.COMPLETE, 0.08, 60),
        finished_trial(2, TrialState.PRUNED, None, 30),
    ):
        study.add_trial(trial)
    record = {"started": START.timestamp(), "trials_to_add": 6, "n_jobs": 2, "timeout": None, "host": "h", "pid": 1}
    study.set_user_attr(RUN_ATTR, record)
    running = study.ask({"train.learning_rate": LEARNING_RATE})
    running.set_user_attr(WORKER_LABEL_ATTR, "worker 1 (pid 7 on h)")
    (frozen,) = study.get_trials(states=(TrialState.RUNNING,))
    return storage, study, frozen.datetime_start + datetime.timedelta(seconds=20)


def test_status_counts_states_and_shows_the_best_the_running_trial_and_an_estimate(running_study):
    storage, study, now = running_study
    lines = describe_status(study, storage, now).splitlines()
    assert "maximising probe_gain_over_random_init" in lines[0]
    assert lines[1] == "4 trials: 1 running, 2 complete, 1 pruned"
    assert lines[2] == (
        "best so far: trial 1, gain over random init +8.00 ± 0.60 points "
        "(accuracy 70.00% ± 1.00, gain +8.00 ± 0.60 points over random init 62.00%)"
    )
    assert lines[3] == "  train.learning_rate = 0.002"
    assert lines[4] == "confirmation: none (`main.py confirm`)"
    assert lines[5:7] == ["running:", "  trial 3: 20s so far, worker 1 (pid 7 on h)"]
    # Mean of finished trials 50 s; 2 to start (6 - 4 since the run began); the running one needs 30 s more:
    # worker A takes one at 0 (ends 50), worker B at 30 (ends 80).
    assert lines[7].startswith("estimate: about 1m 20s to finish the run started 2026-01-01 12:00 on h: ")
    assert "2 trial(s) to start and 1 running, 2 worker(s), at the mean 50s of 3 finished" in lines[7]


def test_status_command_prints_it(running_study, capsys):
    storage, _, _ = running_study
    assert main.main(["status", "--study_name", "s", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "4 trials: 1 running, 2 complete, 1 pruned" in out and "trial 3:" in out and "estimate:" in out


def test_estimate_is_honest_about_what_it_lacks(running_study):
    storage, study, now = running_study
    study.set_user_attr(RUN_ATTR, {**study.user_attrs[RUN_ATTR], "trials_to_add": None, "timeout": 100.0})
    # The timeout ended 100 s after the start, long ago: only the running trial's 30 s remain.
    assert "about 30s to finish" in describe_status(study, storage, now)
    empty = optuna.create_study(study_name="e", storage=storage)
    assert describe_status(empty, storage).splitlines()[-4:] == [
        "best so far: no completed trial yet",
        "confirmation: none (`main.py confirm`)",
        "running: none",
        "estimate: none (no run of this study was recorded by main.py)",
    ]


def test_finish_time_fills_free_workers_first():
    assert finish_seconds([], to_start=4, mean=10.0, workers=2) == 20.0
    assert finish_seconds([5.0, 5.0, 5.0], to_start=0, mean=10.0, workers=2) == 5.0  # workers of other runs
    assert finish_seconds([30.0], to_start=1, mean=50.0, workers=1) == 80.0
    assert [format_duration(s) for s in (42, 249, 11_100)] == ["42s", "4m 09s", "3h 05m"]


def test_each_trial_logs_its_output_warnings_traceback_and_progress_line(tmp_path):
    logs = TrialLogs(tmp_path / "logs", worker_index=1)

    def objective(trial: optuna.Trial) -> float:
        with logs.capture(trial):
            print(f"training trial {trial.number}")
            warnings.warn("the loss is shaky", UserWarning, stacklevel=1)
            if trial.number == 1:
                raise RuntimeError("out of memory")
            return 0.5

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        logs.append(trial.number, f"trial {trial.number}: {trial.state.name.lower()}")

    study = optuna.create_study()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        study.optimize(objective, n_trials=2, callbacks=[progress], catch=(RuntimeError,))

    first, second = (
        (tmp_path / "logs" / "trial_0000.log").read_text(),
        (tmp_path / "logs" / "trial_0001.log").read_text(),
    )
    assert first.startswith("trial 0 started ") and "by worker 1 (pid " in first.splitlines()[0]
    assert "training trial 0" in first and "UserWarning: the loss is shaky" in first
    assert first.rstrip().endswith("trial 0: complete") and "Traceback" not in first
    assert "Traceback" in second and "RuntimeError: out of memory" in second
    assert second.rstrip().endswith("trial 1: fail")
    assert study.trials[0].user_attrs[WORKER_LABEL_ATTR].startswith("worker 1 (pid ")


def test_a_study_run_writes_trial_logs_and_records_itself(tmp_path, monkeypatch, tiny_study_flags):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    assert main.main(["--study_name", "tiny", "--storage", storage, *tiny_study_flags, "--n_trials", "1"]) == 0
    log = (tmp_path / "studies" / "tiny" / "logs" / "trial_0000.log").read_text()
    assert log.startswith("trial 0 started ") and "[worker 0] trial 0 (baseline): " in log
    study = optuna.load_study(study_name="tiny", storage=storage)
    run = study.user_attrs[RUN_ATTR]
    assert (run["trials_to_add"], run["n_jobs"], run["timeout"]) == (1, 1, None)
    # Its training curve: beside the log, as the trial's artifacts, and as the study's figure in the dashboard.
    from optuna.artifacts import get_all_artifact_meta
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    from training.curves import read_curve

    points = read_curve(tmp_path / "studies" / "tiny" / "logs" / "trial_0000.curve.jsonl")
    trial = study.trials[0]
    assert (
        points and points[-1].step == trial.user_attrs["steps"] and points[-1].tokens == trial.user_attrs["tokens_seen"]
    )
    assert sorted(meta.mimetype for meta in get_all_artifact_meta(trial, storage=study._storage)) == [
        "application/jsonl",
        "image/png",
    ]
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    assert list(get_plotly_graph_objects(system_attrs)) == ["training_curves"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_show_on_a_terminal_only_and_never_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bar(10, "piped").disable
    monkeypatch.setattr("sys.stderr", Terminal())
    assert not progress_bar(10, "terminal").disable
    monkeypatch.setenv("CI", "true")
    assert progress_bar(10, "terminal under CI").disable


def test_report_and_dashboard_name_the_objective(tmp_path, in_tmp_path):  # the dashboard's artifacts go to tmp
    from hpo.dashboard import make_dashboard_server
    from hpo.report import render_report
    from hpo.study import open_study

    storage = f"sqlite:///{tmp_path / 'new.db'}"
    study = open_study("new", storage, load_config(CONFIG_PATH), seed=0)
    assert study.metric_names == ["probe_gain_over_random_init"]
    assert "objective: maximise probe_gain_over_random_init" in render_report(study, storage)
    server, url = make_dashboard_server("new", storage, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = url.replace("/dashboard/studies/", "/api/studies/")
        with urllib.request.urlopen(api, timeout=30) as response:
            assert json.load(response)["objective_names"] == ["probe_gain_over_random_init"]
    finally:
        server.shutdown()
        server.server_close()


def test_the_study_tools_start_without_torch(tmp_path):
    """status, report, export and dashboard read a study and its stored config; none of them loads torch
    (seconds of start-up), and `main.py status` answers without it."""
    storage = f"sqlite:///{tmp_path / 'quiet.db'}"
    optuna.create_study(study_name="quiet", storage=storage, direction="maximize")
    script = (
        "import sys, main, hpo.status, hpo.report, hpo.export, hpo.dashboard\n"
        f"code = main.main(['status', '--study_name', 'quiet', '--storage', {storage!r}])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'triton', 'transformers', 'tiktoken') if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=main.PROJECT_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


def test_training_curves_are_written_read_and_drawn(tmp_path, monkeypatch):
    """A run's curve: one point every CURVE_EVERY_STEPS steps and at the last step, windows averaged."""
    from types import SimpleNamespace

    from hpo.curves import curves_figure, thinned
    from training.curves import CURVE_EVERY_STEPS, TrainingCurve, read_curve

    path = tmp_path / "curve.jsonl"
    curve = TrainingCurve(path)
    steps = 2 * CURVE_EVERY_STEPS + 3
    for step in range(1, steps + 1):
        trainer = SimpleNamespace(
            step=step, train_seconds=0.5 * step, tokens_seen=100 * step, tokens_per_step=100, finished=step == steps
        )
        curve.after_step(trainer, SimpleNamespace(loss=float(step), gradient_norm=2.0, learning_rate=1e-3))
    points = read_curve(path)
    assert [point.step for point in points] == [CURVE_EVERY_STEPS, 2 * CURVE_EVERY_STEPS, steps]
    assert points[0].loss == sum(range(1, CURVE_EVERY_STEPS + 1)) / CURVE_EVERY_STEPS  # the window's mean
    assert points[-1].tokens == 100 * steps and points[0].tokens_per_second == pytest.approx(200.0)
    with open(path, "a") as file:
        file.write('{"step": 5, "tok')  # a line cut by a crash is skipped
    assert len(read_curve(path)) == 3
    assert len(thinned(points * 200)) <= 301
    figure = curves_figure({"trial 0": points}, "training curves")
    assert len(figure.data) == 4 and figure.layout.title.text == "training curves"
