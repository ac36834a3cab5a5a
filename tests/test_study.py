"""The study command: a tiny real study resumed, its limits (--n_trials, --max_trials, --timeout), and the
check that a resumed study still measures the same thing."""

import optuna
import pytest
from optuna.trial import TrialState

import main
from hpo.config import ConfigError, load_config
from hpo.study import RunLimits, differing_keys, open_study
from training.config import config_to_dict

pytestmark = pytest.mark.usefixtures("in_tmp_path")  # study files and logs go to tmp_path

CONFIG_PATH = main.PROJECT_DIR / "config.yaml"


@pytest.mark.slow
def test_study_runs_two_trials_then_resumes_to_four(tmp_path, capsys, tiny_study_flags):
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    arguments = ["--study_name", "tiny", "--storage", storage, *tiny_study_flags]

    assert main.main([*arguments, "--n_trials", "2", "--n_jobs", "2"]) == 0
    first = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(first) == 2
    assert main.main([*arguments, "--n_trials", "2", "--n_jobs", "1"]) == 0

    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 4
    assert [(t.number, t.params, t.value) for t in study.trials[:2]] == [(t.number, t.params, t.value) for t in first]
    # Resuming with the same seed must not replay the first run's samples.
    assert study.trials[2].params not in [t.params for t in first]
    space = load_config(CONFIG_PATH).search_space
    dimensions = {f"{section}.{name}" for section, specs in space.items() for name in specs}
    for trial in study.trials:
        assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED), trial.system_attrs
        assert {"model.attention_kind", "model.size", "train.learning_rate"} <= set(trial.params) <= dimensions
        assert trial.intermediate_values, "the quick probe reported nothing"
        assert {"tokens_per_second", "parameters", "peak_memory_mb", "wall_seconds"} <= set(trial.user_attrs)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert 0.2 < trial.user_attrs["probe_accuracy"] < 1.0
            assert trial.value == trial.user_attrs["gain_over_random_init"]  # probe.target: gain
            assert 0 < trial.user_attrs["probe_standard_error"] < 0.05
    assert "base_config" in study.user_attrs
    output = capsys.readouterr().out
    assert "trial 3:" in output and "best trial" in output


def test_bad_flag_value_gives_one_line_error(capsys, tmp_path):
    code = main.main(["--study_name", "x", "--storage", f"sqlite:///{tmp_path}/x.db", "--set", "train.schedule=sine"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and "train.schedule = 'sine'" in error


@pytest.mark.parametrize(
    ("limits", "counted", "expected"),
    [
        (RunLimits(), 7, 10),  # no limit given: the default count
        (RunLimits(n_trials=3), 7, 3),
        (RunLimits(timeout=60), 7, None),  # until the timeout
        (RunLimits(max_trials=9), 7, 2),
        (RunLimits(n_trials=1, max_trials=9), 7, 1),  # whichever comes first
        (RunLimits(n_trials=5, max_trials=9), 7, 2),
        (RunLimits(n_trials=5, max_trials=6), 7, 0),
    ],
)
def test_run_limits_add_trials_until_the_first_limit(limits, counted, expected):
    assert limits.trials_to_add(counted) == expected


def test_max_trials_reached_starts_no_worker(tmp_path, capsys, make_study):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5), ({}, None), ({}, 0.52)])
    assert main.main(["--study_name", "fake", "--storage", storage, "--max_trials", "3", "--n_jobs", "2"]) == 0
    output = capsys.readouterr().out
    assert "study 'fake' already has 3 trials (--max_trials 3): nothing to add" in output
    assert "corpus ready" not in output and "best trial" in output
    assert len(optuna.load_study(study_name="fake", storage=storage).trials) == 3


@pytest.mark.slow
def test_timeout_passed_before_the_first_trial_starts_none(tmp_path, capsys, tiny_study_flags):
    storage = f"sqlite:///{tmp_path / 'late.db'}"
    arguments = ["--study_name", "late", "--storage", storage, *tiny_study_flags, "--timeout", "0.001"]
    assert main.main(arguments) == 0
    trials = optuna.load_study(study_name="late", storage=storage).trials
    assert [(trial.state, trial.user_attrs) for trial in trials] == [(TrialState.WAITING, {"baseline": True})]
    assert "no completed trial yet" in capsys.readouterr().out


def test_differing_keys_are_dotted_paths_including_one_sided_keys():
    stored = {"train": {"budget_tokens": 1, "seed": 0}, "space": {"size": {"choices": ["a", "b"]}}}
    current = {"train": {"budget_tokens": 2, "seed": 0, "new": 1}, "space": {"size": {"choices": ["a"]}}}
    assert differing_keys(stored, current) == ["train.budget_tokens", "train.new", "space.size.choices"]
    assert differing_keys(stored, stored) == []


def reopen(storage: str, overrides: list[str], force: bool = False) -> optuna.Study:
    return open_study("fake", storage, load_config(CONFIG_PATH, overrides), seed=0, force=force)


def test_resume_with_a_different_search_space_or_budget_is_refused(tmp_path, make_study, capsys):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5)])
    changed = ["search_space.model.attention_kind.choices=[rope, exposb]", "train.budget_tokens=5000"]
    with pytest.raises(ConfigError) as refusal:
        reopen(storage, changed)
    message = str(refusal.value)
    assert message.startswith("study 'fake' was created with a different configuration: ")
    assert ": train.budget_tokens, search_space.model.attention_kind.choices differ;" in message
    assert "use a new --study_name, or pass --force to continue anyway" in message
    tokens = load_config(CONFIG_PATH).train.budget_tokens  # what the study was created with
    restore = f"--set train.budget_tokens={tokens} --set search_space.model.attention_kind.choices=[standard, rope, "
    assert f"to resume it as it was created: {restore}exposb, absolute]; else use" in message
    code = main.main(["--study_name", "fake", "--storage", storage, *sum((["--set", o] for o in changed), [])])
    assert code == 2 and capsys.readouterr().err.count("\n") == 1


def test_force_continues_and_records_the_change(tmp_path, make_study, capsys):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5), ({}, 0.6)])
    study = reopen(storage, ["train.budget_tokens=5000"], force=True)
    assert study.user_attrs["config_changes"] == [{"keys": ["train.budget_tokens"], "after_trials": 2}]
    assert "--force" in capsys.readouterr().err
    # The base config stays the one the first trials were measured with.
    assert study.user_attrs["base_config"]["train"]["budget_tokens"] == load_config(CONFIG_PATH).train.budget_tokens


def test_study_settings_may_change_on_resume_with_a_note(tmp_path, make_study, capsys):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5)])
    study = reopen(storage, ["study.pruner=none", "study.heartbeat_seconds=10"])
    assert "config_changes" not in study.user_attrs
    output = capsys.readouterr().out
    assert "note: study 'fake' continues with changed settings" in output
    assert "study.pruner, study.heartbeat_seconds" in output


def test_fields_added_to_the_code_since_the_study_began_are_no_change(tmp_path, make_study, capsys):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5)])
    study = optuna.load_study(study_name="fake", storage=storage)
    stored = config_to_dict(load_config(CONFIG_PATH))
    del stored["train"]["grad_clip"]  # as if train.grad_clip (default 1.0, as in config.yaml) were new
    study.set_user_attr("base_config", stored)
    reopen(storage, [])
    assert capsys.readouterr().out == ""


def test_a_setting_that_does_nothing_under_both_configurations_is_no_change(tmp_path, make_study, capsys):
    """model.attention_multiplier came after the study began (its absence means 1.0; config.yaml says 8.0): under
    the standard parametrisation it does nothing, so the study resumes; under mup it scales the logits: refused;
    so too when the search space samples the parametrisation (a comparison of standard and mup)."""
    grid = "search_space.model.parametrization={type: categorical, choices: [standard, mup]}"
    cases = {"standard": ([], False), "mup": ([], True), "grid": ([grid], True)}
    for name, (space, refused) in cases.items():
        storage = make_study(tmp_path / f"{name}.db", [({}, 0.5)])
        study = optuna.load_study(study_name="fake", storage=storage)
        overrides = [f"model.parametrization={'mup' if name == 'mup' else 'standard'}", *space]
        stored = config_to_dict(load_config(CONFIG_PATH, overrides))
        del stored["model"]["attention_multiplier"]
        study.set_user_attr("base_config", stored)
        assert load_config(CONFIG_PATH).model.attention_multiplier != 1.0
        if refused:
            with pytest.raises(ConfigError, match="model.attention_multiplier differ"):
                reopen(storage, overrides)
        else:
            reopen(storage, overrides)
            assert capsys.readouterr().out == ""


def test_resume_by_other_software_prints_a_note(tmp_path, make_study, capsys):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5)])
    study = optuna.load_study(study_name="fake", storage=storage)
    study.set_user_attr("software", {"git_commit": "0000000", "torch": "0.0.1", "python": None})
    reopen(storage, [])
    output = capsys.readouterr().out
    assert "note: study 'fake' was started by other software (" in output
    assert "git_commit 0000000 -> " in output and "torch 0.0.1 -> " in output and "python" not in output


def test_a_failing_trial_records_why_and_the_progress_line_says_it(tmp_path, data_dir, monkeypatch):
    from conftest import TINY_OVERRIDES

    from hpo.trial import PretrainAndProbe, Resources
    from hpo.workers import _format_trial
    from training.pretrain import Pretrainer

    config = load_config(CONFIG_PATH, [*TINY_OVERRIDES, f"data.cache_dir={tmp_path}"])

    def broken_step(self):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Pretrainer, "train_step", broken_step)
    study = optuna.create_study(direction="maximize")
    study.optimize(PretrainAndProbe(config, Resources.load(config, data_dir)), n_trials=1, catch=(RuntimeError,))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "RuntimeError: CUDA out of memory (simulated)"
    assert "trial 0: fail: RuntimeError: CUDA out of memory (simulated) |" in _format_trial(trial, 0)


def test_a_trial_that_fails_before_training_records_why(tmp_path, data_dir):
    from conftest import TINY_OVERRIDES

    from hpo.trial import PretrainAndProbe, Resources

    # Valid as a config, refused when the run is built: next-sentence pairs need two rows per batch.
    config = load_config(CONFIG_PATH, [*TINY_OVERRIDES, f"data.cache_dir={tmp_path}", "train.nsp=true"])
    config.train.batch_size = 1
    study = optuna.create_study(direction="maximize")
    study.optimize(PretrainAndProbe(config, Resources.load(config, data_dir)), n_trials=1, catch=(ValueError,))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("ConfigError: train.nsp needs at least 2 rows per micro-batch")


def test_completed_trials_carry_the_random_encoder_line_computed_once_per_architecture(tmp_path, data_dir, monkeypatch):
    import torch
    from conftest import TINY_OVERRIDES

    import hpo.trial
    from hpo.trial import RANDOM_INIT_ATTR_PREFIX, RANDOM_INIT_QUICK_ATTR_PREFIX, PretrainAndProbe, Resources
    from model.bert import Encoder
    from training.pretrain import random_init_encoder
    from training.probe import cross_validated_accuracy

    overrides = [*TINY_OVERRIDES, f"data.cache_dir={tmp_path}", "search_space={}", "model.hidden_size=32"]
    config = load_config(CONFIG_PATH, overrides)
    resources = Resources.load(config, data_dir)
    built = []

    def counting_random_init_encoder(*args, **kwargs):
        built.append(args)
        return random_init_encoder(*args, **kwargs)

    monkeypatch.setattr(hpo.trial, "random_init_encoder", counting_random_init_encoder)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(PretrainAndProbe(config, resources), n_trials=2)

    assert len(built) == 1  # the second trial of the same architecture reuses the study's value
    (key,) = [key for key in study.user_attrs if key.startswith(RANDOM_INIT_ATTR_PREFIX)]
    torch.manual_seed(config.train.seed)
    untrained = Encoder(config.model, resources.tokenizer.vocab_size)
    expected = resources.probe.score(untrained, torch.device("cpu"), config.probe.folds).accuracy
    assert study.user_attrs[key] == expected
    # The quick probe's line comes from the same embedding pass, on the quick probe's rows of it.
    features, rows = resources.probe.features(untrained, torch.device("cpu")), resources.quick_rows
    labels = resources.probe.labels[rows]
    assert resources.quick_probe.labels.tolist() == labels.tolist()
    quick = cross_validated_accuracy(features[rows], labels, config.probe.quick_folds, config.probe)
    assert study.user_attrs[key.replace(RANDOM_INIT_ATTR_PREFIX, RANDOM_INIT_QUICK_ATTR_PREFIX)] == quick.accuracy
    assert config.probe.target == "gain"  # the default: the study ranks what pretraining bought
    for trial in study.trials:
        assert trial.user_attrs["random_init_accuracy"] == expected
        assert trial.user_attrs["gain_over_random_init"] == pytest.approx(trial.user_attrs["probe_accuracy"] - expected)
        assert trial.value == trial.user_attrs["gain_over_random_init"]
    # With probe.target = accuracy the value is the accuracy; the random-init line is the same.
    accuracy_config = load_config(CONFIG_PATH, [*overrides, "probe.target=accuracy"])
    accuracy_study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    accuracy_study.optimize(PretrainAndProbe(accuracy_config, resources), n_trials=1)
    (trial,) = accuracy_study.trials
    assert trial.value == trial.user_attrs["probe_accuracy"]
    assert trial.user_attrs["random_init_accuracy"] == expected


def test_a_new_study_names_its_objective_and_lines_label_the_value(tmp_path):
    from hpo.study import open_study
    from hpo.study_values import format_value, value_label

    for target, label, shown in (("gain", "gain over random init", "+5.00 points"), ("accuracy", "accuracy", "5.00%")):
        config = load_config(CONFIG_PATH, [f"probe.target={target}"])
        study = open_study(f"named_{target}", f"sqlite:///{tmp_path / target}.db", config, seed=0)
        assert study.metric_names == [config.probe.metric_name]
        assert value_label(study) == label and format_value(study, 0.05) == shown


def test_workers_are_spread_over_the_visible_gpus_several_per_gpu(monkeypatch, tmp_path):
    import os
    from pathlib import Path

    import torch

    from hpo.workers import WorkerPlan, visible_gpu, worker_plans

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    common = WorkerPlan("s", "sqlite://", load_config(CONFIG_PATH), Path(tmp_path), seed=0, parent_pid=os.getpid())
    plans = worker_plans(common, n_trials=10, n_jobs=5, existing=0)
    assert [plan.gpu for plan in plans] == [0, 1, 0, 1, 0]
    assert len({plan.seed for plan in plans}) == 5 and sum(plan.n_trials for plan in plans) == 10
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")  # as a cluster scheduler may set it
    assert [visible_gpu(plan.gpu) for plan in plans] == ["4", "6", "4", "6", "4"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu(1) == "1"


def test_moving_the_token_cache_is_no_configuration_change(tmp_path, make_study, capsys):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5)])
    study = reopen(storage, [f"data.cache_dir={tmp_path / 'elsewhere'}"])
    assert "config_changes" not in study.user_attrs
    assert "note: study 'fake' continues with changed settings that keep scores comparable: data.cache_dir" in (
        capsys.readouterr().out
    )


def test_a_new_study_runs_its_base_recipe_first(tmp_path):
    from hpo.config import dimensions
    from hpo.space import apply_params, base_params

    config = load_config(CONFIG_PATH)
    params = base_params(config)
    assert set(params) == {name for name, *_ in dimensions(config)}  # every default lies inside the space
    recreated = apply_params(config, params)
    for section in ("model", "train", "masking"):
        assert getattr(recreated, section) == getattr(config, section)
    study = open_study("baseline", f"sqlite:///{tmp_path / 'baseline.db'}", config, seed=0)
    open_study("baseline", f"sqlite:///{tmp_path / 'baseline.db'}", config, seed=0)  # no second copy
    (queued,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == params and queued.user_attrs == {"baseline": True}
    without = load_config(CONFIG_PATH, ["study.baseline_trial=false"])
    assert not open_study("plain", f"sqlite:///{tmp_path / 'plain.db'}", without, seed=0).trials


@pytest.mark.slow
def test_after_a_forced_change_each_trial_still_exports_what_it_ran(tmp_path, capsys, tiny_study_flags):
    storage = f"sqlite:///{tmp_path / 'forced.db'}"
    arguments = ["--study_name", "forced", "--storage", storage, *tiny_study_flags, "--set", "study.pruner=none"]
    assert main.main([*arguments, "--n_trials", "1", "--seed", "0", "--set", "study.baseline_trial=false"]) == 0
    # Resumed with a space that no longer searches model.dropout (a change of meaning: --force).
    narrower = tmp_path / "narrower.yaml"
    narrower.write_text(
        "search_space:\n  train:\n    learning_rate: {type: float, low: 5.0e-4, high: 3.0e-3, log: true}\n"
    )
    assert main.main(["--config", str(narrower), *arguments, "--n_trials", "1", "--seed", "1", "--force"]) == 0
    first, second = optuna.load_study(study_name="forced", storage=storage).trials
    assert "model.dropout" in first.params and "model.dropout" not in second.params
    capsys.readouterr()

    assert main.main(["export", "--study_name", "forced", "--storage", storage, "--top_k", "2"]) == 0

    exported = {
        config.provenance["trial"]: config
        for config in (load_config(tmp_path / f"studies/forced/top_2/rank_{rank}.yaml") for rank in (1, 2))
    }
    assert exported[0].model.dropout == first.params["model.dropout"]
    assert set(exported[0].search_space) == {"model", "train", "masking"}
    assert exported[1].model.dropout == load_config(CONFIG_PATH).model.dropout  # what trial 1 ran: no dropout dim
    assert exported[1].train.learning_rate == second.params["train.learning_rate"]
    assert set(exported[1].search_space) == {"train"}
