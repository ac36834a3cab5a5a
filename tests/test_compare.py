"""`main.py compare`: a grid of settings from the same seeds as a study of fixed trials (resumed, extended,
reported), the paired statistics on hand-made cells, and its one-line refusals."""

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

import main
from hpo.comparison import COMPARISON_ATTR, SEED_PARAM, Cell, paired_test, parse_grid
from hpo.config import ConfigError

pytestmark = pytest.mark.usefixtures("in_tmp_path")  # study files and logs go to tmp_path


@pytest.mark.slow
def test_compare_runs_every_cell_from_the_same_seeds_and_reports_them(tmp_path, capsys, tiny_study_flags):
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    command = [
        "compare",
        *("--study_name", "grid", "--storage", storage),
        *("--grid", "model.attention_kind=standard,rope", "--grid", "train.objective=mlm,clm"),
        *("--seeds", "2", "--n_jobs", "2", *tiny_study_flags),
    ]
    assert main.main(command) == 0

    printed = capsys.readouterr().out
    assert (
        "comparing 4 cell(s) x 2 seed(s) (train.seed 0, 1) at equal tokens (1,024 per run): 8 run(s) queued" in printed
    )
    assert "comparison 'grid' at equal tokens: 1,024 per run: 8 of 8 runs done" in printed
    study = optuna.load_study(study_name="grid", storage=storage)
    runs = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(runs) == 8 and study.user_attrs[COMPARISON_ATTR]["seeds"] == [0, 1]
    cells = {(run.params["model.attention_kind"], run.params["train.objective"]) for run in runs}
    assert len(cells) == 4
    for cell in cells:  # every cell from both seeds: paired
        seeds = [
            run.params[SEED_PARAM]
            for run in runs
            if (run.params["model.attention_kind"], run.params["train.objective"]) == cell
        ]
        assert sorted(seeds) == [0, 1]
    assert all(run.value == run.user_attrs["gain_over_random_init"] for run in runs)
    assert all(run.user_attrs["tokens_seen"] == 1024 for run in runs)

    assert main.main(command) == 0  # resumed: nothing left
    assert "0 run(s) queued now, 0 to run" in capsys.readouterr().out
    assert main.main([*command[: -len(tiny_study_flags)], "--seeds", "3", *tiny_study_flags]) == 0  # one more seed
    assert "4 run(s) queued now, 4 to run" in capsys.readouterr().out

    assert main.main(["report", "--study_name", "grid", "--storage", storage]) == 0
    report = (tmp_path / "studies/grid/report.html").read_text()
    assert "Comparison: cells" in report and "Comparison: paired tests between cells" in report
    assert "Comparison: main effects" in report and "objective=mlm" in report
    assert "equal tokens: 1,024 per run" in report and "Heatmap" in report and "Cohen" in report
    assert "attention_kind=rope, objective=clm" in report


def fake_cell(name: str, values: list[float]) -> Cell:
    trials = {}
    for seed, value in enumerate(values):
        trials[seed] = optuna.trial.create_trial(
            params={"model.pooling": name, SEED_PARAM: seed},
            distributions={
                "model.pooling": optuna.distributions.CategoricalDistribution([name]),
                SEED_PARAM: optuna.distributions.IntDistribution(0, 100),
            },
            value=value,
        )
    return Cell({"model.pooling": name}, trials)


def test_paired_statistics_by_hand():
    # B is A + 0.01 give or take a little, while the seeds move both by much more.
    seed_effect = np.array([0.0, 0.05, -0.04, 0.02, 0.03])
    first = fake_cell("A", list(0.5 + seed_effect + np.array([0.011, 0.009, 0.010, 0.012, 0.008])))
    second = fake_cell("B", list(0.5 + seed_effect))
    test = paired_test(first, second, [0, 1, 2, 3, 4])
    differences = np.array([0.011, 0.009, 0.010, 0.012, 0.008])
    assert test.difference == pytest.approx(0.01)
    assert test.cohens_d == pytest.approx(differences.mean() / differences.std(ddof=1))
    assert test.test == "paired t-test"
    expected = stats.ttest_rel(first.values([0, 1, 2, 3, 4]), second.values([0, 1, 2, 3, 4])).pvalue
    assert test.p_value == pytest.approx(expected) and test.p_value < 1e-3
    # Unpaired, the seeds' spread would swamp it.
    assert stats.ttest_ind(first.values(range(5)), second.values(range(5))).pvalue > 0.5
    assert test.interval[0] < 0.01 < test.interval[1]
    assert paired_test(first, second, [0]) is None  # one seed: no test


def test_skewed_differences_take_the_wilcoxon_test():
    first = fake_cell("A", [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    second = fake_cell("B", [0.49, 0.49, 0.49, 0.49, 0.49, 0.49, 0.49, 0.30])  # one huge outlier
    test = paired_test(first, second, list(range(8)))
    assert test.test == "Wilcoxon signed-rank" and not math.isnan(test.p_value)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["model.attention_kind"], "expected SECTION.KEY=V1,V2"),
        (["attention_kind=standard"], "expected SECTION.KEY=V1,V2"),
        (["model.attention_kind=standard,standard"], "repeats a value"),
        (["train.seed=1,2"], "the seeds are --seeds"),
        ([], "compare needs at least one --grid"),
    ],
)
def test_a_bad_grid_is_named(grid, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(grid)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("model.attention_kind=standard,linear", r"model\.attention_kind = 'linear'"),
        ("model.nothing=1,2", "model has no field 'nothing'"),
        ("model.num_heads=2,3", "model.num_heads=3"),
    ],
)
def test_a_grid_value_the_config_refuses_is_one_line_and_writes_nothing(tmp_path, capsys, grid, message):
    storage = f"sqlite:///{tmp_path / 'bad.db'}"
    assert main.main(["compare", "--study_name", "bad", "--storage", storage, "--grid", grid]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    assert __import__("re").search(message, error), error
    assert not (tmp_path / "bad.db").exists()


def test_main_effects_pair_each_setting_over_the_others_and_the_seeds():
    from hpo.comparison import main_effects

    def cell(kind: str, objective: str, values: list[float]) -> Cell:
        trials = {
            seed: optuna.trial.create_trial(
                params={"model.attention_kind": kind, "train.objective": objective, SEED_PARAM: seed},
                distributions={
                    "model.attention_kind": optuna.distributions.CategoricalDistribution(["standard", "rope"]),
                    "train.objective": optuna.distributions.CategoricalDistribution(["mlm", "clm"]),
                    SEED_PARAM: optuna.distributions.IntDistribution(0, 100),
                },
                value=value,
            )
            for seed, value in enumerate(values)
        }
        return Cell({"model.attention_kind": kind, "train.objective": objective}, trials)

    # clm is mlm + 0.05 in both kinds (give or take 0.001); rope is standard + 0.01; the seeds move everything.
    seed_effect = [0.0, 0.03, -0.02]
    found = [
        cell(
            kind,
            objective,
            [
                0.5 + s + 0.01 * (kind == "rope") + 0.05 * (objective == "clm") + 0.001 * i
                for i, s in enumerate(seed_effect)
            ],
        )
        for kind in ("standard", "rope")
        for objective in ("mlm", "clm")
    ]
    grid = {"model.attention_kind": ["standard", "rope"], "train.objective": ["mlm", "clm"]}
    kinds, objectives = main_effects(found, grid, [0, 1, 2])
    assert (kinds.first, kinds.second, kinds.seeds) == ("attention_kind=standard", "attention_kind=rope", 6)
    assert kinds.difference == pytest.approx(-0.01) and objectives.difference == pytest.approx(-0.05)
    assert objectives.seeds == 6 and objectives.p_value < 1e-6
    assert main_effects(found[:2], {"train.objective": ["mlm", "clm"]}, [0, 1, 2]) == []  # one key: the pairs say it
