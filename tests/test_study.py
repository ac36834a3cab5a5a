"""End to end: a tiny study through the CLI into a temporary SQLite file, then resumed."""

import optuna
import pytest

import main

TINY = [
    "data.sources=[wikipedia]",
    "data.seq_len=32",
    "train.batch_size=8",
    "train.budget_tokens=1024",
    "train.validation_sequences=16",
    "probe.max_length=32",
    "probe.quick_rows=200",
    "probe.quick_folds=2",
    "probe.folds=2",
    "probe.max_iter=100",
]


@pytest.mark.slow
def test_study_runs_two_trials_then_resumes_to_four(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    overrides = [*TINY, f"data.cache_dir={tmp_path / 'cache'}"]
    arguments = ["--study_name", "tiny", "--storage", storage, *sum((["--set", o] for o in overrides), [])]

    assert main.main([*arguments, "--n_trials", "2", "--n_jobs", "2"]) == 0
    first = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(first) == 2
    assert main.main([*arguments, "--n_trials", "2", "--n_jobs", "1"]) == 0

    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 4
    assert [(t.number, t.params, t.value) for t in study.trials[:2]] == [(t.number, t.params, t.value) for t in first]
    # Resuming with the same seed must not replay the first run's samples.
    assert study.trials[2].params not in [t.params for t in first]
    dimensions = {
        "model.attention_kind",
        "model.size",
        "model.dropout",
        "masking.strategy",
        "train.learning_rate",
        "train.layer_lr_decay",
    }
    for trial in study.trials:
        assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED), trial.system_attrs
        assert set(trial.params) == dimensions
        assert trial.intermediate_values, "the quick probe reported nothing"
        assert {"tokens_per_second", "parameters", "peak_memory_mb", "wall_seconds"} <= set(trial.user_attrs)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert 0.2 < trial.value < 1.0
            assert 0 < trial.user_attrs["probe_standard_error"] < 0.05
    assert "base_config" in study.user_attrs
    output = capsys.readouterr().out
    assert "trial 3:" in output and "best trial" in output


def test_bad_flag_value_gives_one_line_error(capsys, tmp_path):
    code = main.main(["--study_name", "x", "--storage", f"sqlite:///{tmp_path}/x.db", "--set", "train.schedule=sine"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and "train.schedule = 'sine'" in error
