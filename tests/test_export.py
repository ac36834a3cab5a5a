"""Export: the best trials of a fake study -> full run configs that load_config reads back."""

import platform

import optuna
import yaml

import main
from hpo.config import load_config

TRIALS = [
    ({"model.attention_kind": "rope", "model.size": "mini", "masking.strategy": "span"}, 0.61),
    ({"model.attention_kind": "standard", "model.size": "tiny"}, 0.55),
    ({}, None),
    ({"model.attention_kind": "exposb", "model.size": "tiny", "masking.strategy": "whole_word"}, 0.58),
]


def test_best_config_is_the_full_run_config_of_the_best_trial(tmp_path, monkeypatch, capsys, make_study):
    # The study's own base config (budget 12345) must win over config.yaml's default.
    storage = make_study(tmp_path / "fake.db", TRIALS, overrides=["train.budget_tokens=12345"])
    monkeypatch.chdir(tmp_path)

    assert main.main(["export", "--study_name", "fake", "--storage", storage]) == 0

    assert capsys.readouterr().out.split() == ["studies/fake/best_config.yaml"]
    config = load_config(tmp_path / "studies/fake/best_config.yaml")
    best = optuna.load_study(study_name="fake", storage=storage).best_trial
    assert config.model.attention_kind == "rope" and config.masking.strategy == "span"
    assert (config.model.hidden_size, config.model.num_layers, config.model.num_heads) == (192, 2, 3)  # "mini"
    assert config.model.dropout == best.params["model.dropout"]
    assert config.train.learning_rate == best.params["train.learning_rate"]
    assert config.train.budget_tokens == 12345
    provenance = config.provenance
    assert (provenance["study"], provenance["trial"], provenance["rank"]) == ("fake", best.number, 1)
    assert provenance["value"] == best.value and provenance["standard_error"] == 0.012
    assert provenance["storage"] == storage and provenance["python"] == platform.python_version()
    assert provenance["optuna"] == optuna.__version__ and provenance["trial_attributes"]["tokens_per_second"] > 0
    assert {"torch", "triton", "git_commit", "exported"} <= set(provenance)


def test_top_k_writes_ranked_configs_and_stops_at_the_completed_trials(tmp_path, monkeypatch, capsys, make_study):
    storage = make_study(tmp_path / "fake.db", TRIALS)
    monkeypatch.chdir(tmp_path)

    assert main.main(["export", "--study_name", "fake", "--storage", storage, "--top_k", "5"]) == 0

    printed = capsys.readouterr()
    assert printed.out.split()[1:] == [f"studies/fake/top_5/rank_{rank}.yaml" for rank in (1, 2, 3)]
    assert "only 3 completed trial(s)" in printed.err
    ranked = [load_config(tmp_path / f"studies/fake/top_5/rank_{rank}.yaml") for rank in (1, 2, 3)]
    assert [config.model.attention_kind for config in ranked] == ["rope", "exposb", "standard"]
    assert [config.provenance["value"] for config in ranked] == [0.61, 0.58, 0.55]
    best = yaml.safe_load((tmp_path / "studies/fake/best_config.yaml").read_text())
    rank_one = yaml.safe_load((tmp_path / "studies/fake/top_5/rank_1.yaml").read_text())
    assert {**best, "provenance": None} == {**rank_one, "provenance": None}


def test_study_without_completed_trials_is_a_one_line_error(tmp_path, monkeypatch, capsys, make_study):
    storage = make_study(tmp_path / "fake.db", [({}, None)])
    monkeypatch.chdir(tmp_path)
    assert main.main(["export", "--study_name", "fake", "--storage", storage]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no completed trial yet (pruned trial 0)" in error
    assert not (tmp_path / "studies/fake/best_config.yaml").exists()
