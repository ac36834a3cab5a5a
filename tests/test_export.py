"""Export: the best trials of a fake study -> full run configs that load_config reads back."""

import platform

import optuna
import pytest
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


def export(storage: str, *flags: str) -> int:
    return main.main(["export", "--study_name", "fake", "--storage", storage, *flags])


def test_a_mup_study_exports_its_leader_at_a_bert_size_with_the_lrs_carried(tmp_path, monkeypatch, capsys, make_study):
    storage = make_study(tmp_path / "fake.db", TRIALS, overrides=["model.parametrization=mup"])
    monkeypatch.chdir(tmp_path)

    assert export(storage, "--target_size", "small", "--top_k", "2") == 0

    printed = capsys.readouterr().out.split()
    assert printed == [
        "studies/fake/best_config_small.yaml",
        *(f"studies/fake/top_2_small/rank_{n}.yaml" for n in (1, 2)),
    ]
    trial = optuna.load_study(study_name="fake", storage=storage).best_trial  # "mini": 192/2/3 under mup from 128
    path = tmp_path / "studies/fake/best_config_small.yaml"
    config = load_config(path)
    assert (config.model.hidden_size, config.model.num_layers, config.model.num_heads) == (512, 4, 8)
    assert config.model.parametrization == "mup" and config.model.base_width == 128  # the width its LRs mean
    assert config.train.learning_rate == trial.params["train.learning_rate"]  # carried by the parametrisation
    assert config.train.embedding_lr_multiplier == trial.params["train.embedding_lr_multiplier"]
    assert config.model.dropout == trial.params["model.dropout"]
    shape = config.provenance["shape"]
    assert shape["base"] == {"hidden_size": 192, "num_layers": 2, "num_heads": 3}
    assert shape["target"] == {"hidden_size": 512, "num_layers": 4, "num_heads": 8}
    assert shape["rule"] == "muP: LRs carried by the parametrisation from base width 128"
    assert shape["depth"].startswith("2 -> 4 layers: muP carries the LRs across width, not depth")
    text = path.read_text()
    assert "# Shape (hidden/layers/heads) 192/2/3 -> 512/4/8; muP: LRs carried by the parametrisation" in text
    commented = [line for line in text.splitlines() if "does not transfer across width (Tensor Programs V)" in line]
    assert [line.split(":")[0] for line in commented] == ["  dropout", "  weight_decay"]
    assert not (tmp_path / "studies/fake/best_config.yaml").exists()  # the study-shape export is not overwritten


def test_a_standard_study_refuses_another_shape_in_one_line_and_exports_its_own(
    tmp_path, monkeypatch, capsys, make_study
):
    storage = make_study(tmp_path / "fake.db", TRIALS, overrides=["model.parametrization=standard"])
    monkeypatch.chdir(tmp_path)

    assert export(storage, "--target_size", "small") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "model.parametrization = standard carries no recipe to another shape" in error
    assert "25 points below its own random-init encoder" in error and "--set model.parametrization=mup" in error
    assert not (tmp_path / "studies/fake").exists()

    # The best trial's own shape ("mini", 192/2/3): the ordinary export, under its target's name.
    assert export(storage, *shape_flags(192, 2, 3)) == 0 and export(storage) == 0
    same = load_config(tmp_path / "studies/fake/best_config_192x2x3.yaml")
    ordinary = load_config(tmp_path / "studies/fake/best_config.yaml")
    assert "shape" not in same.provenance
    assert {**vars(same), "provenance": None} == {**vars(ordinary), "provenance": None}


def shape_flags(hidden: int, layers: int, heads: int) -> list[str]:
    return ["--target_hidden_size", str(hidden), "--target_num_layers", str(layers), "--target_num_heads", str(heads)]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--target_hidden_size", "512"], "go together: give all three"),
        (["--target_size", "base", "--target_num_heads", "4"], "not both"),
        (["--target_size", "huge"], "invalid choice: 'huge'"),
        (shape_flags(512, 4, 3), "shape 512/4/3 (hidden/layers/heads): 3 heads do not divide hidden size 512"),
        (shape_flags(510, 2, 2), "head size 255 must be even"),
        (shape_flags(0, 2, 2), "each must be positive"),
    ],
)
def test_a_target_that_names_no_shape_is_a_one_line_usage_error(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main.main(["export", "--study_name", "fake", "--storage", f"sqlite:///{tmp_path}/none.db", *flags])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.count("\n") == 1 and message in error


@pytest.fixture
def one_thread():
    """One PyTorch thread, as a study's worker and a benchmark's run have (faster on a loaded 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # a one-trial study, its export 2x wider and a 512-token retrain with its probes: about 20 s
@pytest.mark.usefixtures("one_thread")
def test_a_tiny_mup_study_exported_wider_retrains_end_to_end(tmp_path, monkeypatch, capsys, tiny_study_flags):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    study = ["--study_name", "tiny", "--storage", storage]
    space = "search_space={train: {learning_rate: {type: float, low: 0.001, high: 0.003, log: true}}}"
    mup = ["model.parametrization=mup", "model.base_width=32", "model.hidden_size=32", "model.num_heads=1", space]
    assert main.main([*study, *tiny_study_flags, *(f for o in mup for f in ("--set", o)), "--n_trials", "1"]) == 0
    trial = optuna.load_study(study_name="tiny", storage=storage).best_trial

    assert main.main(["export", *study, *shape_flags(64, 2, 2)]) == 0
    path = tmp_path / "studies/tiny/best_config_64x2x2.yaml"
    assert capsys.readouterr().out.split()[-1] == str(path.relative_to(tmp_path))
    assert main.main(["retrain", "--config", str(path), "--budget_tokens", "512"]) == 0

    results = yaml.safe_load((path.parent / "retrain_best_config_64x2x2/results.yaml").read_text())
    model, train = results["config"]["model"], results["config"]["train"]
    assert (model["hidden_size"], model["num_heads"], model["parametrization"], model["base_width"]) == (
        64,
        2,
        "mup",
        32,
    )
    assert train["learning_rate"] == trial.params["train.learning_rate"] and results["tokens"] == 512
    assert results["parameters"] > 0 and 0.25 < results["selection_accuracy"]["accuracy"] < 1
