"""`main.py confirm`: a tiny real study's top recipes re-run over paired seeds in the companion study, resumed
and extended; what it found in status, the report and export; and the statistics on a fake companion."""

import math

import numpy as np
import optuna
import pytest
import yaml
from conftest import fake_companion
from optuna.trial import TrialState
from scipy import stats

import main
from hpo.config import load_config
from hpo.confirmation import (
    RECIPES_ATTR,
    SEED_PARAM,
    SEEDS_ATTR,
    TOKENS_PARAM,
    Recipe,
    companion_name,
    describe,
    summarise,
)

pytestmark = pytest.mark.usefixtures("in_tmp_path")  # study files and logs go to tmp_path


@pytest.mark.slow
def test_confirm_reruns_the_top_recipes_with_paired_seeds_and_export_takes_the_leader(
    tmp_path, capsys, tiny_study_flags
):
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    study_flags = ["--study_name", "tiny", "--storage", storage]
    assert (
        main.main([*study_flags, *tiny_study_flags, "--n_trials", "3", "--seed", "1", "--set", "study.pruner=none"])
        == 0
    )
    study = optuna.load_study(study_name="tiny", storage=storage)
    top_two = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda trial: -trial.value)[:2]
    capsys.readouterr()

    assert main.main(["confirm", *study_flags, "--top_k", "2", "--seeds", "2", "--n_jobs", "2"]) == 0

    printed = capsys.readouterr().out
    assert "4 run(s) queued now, 4 to run, in study 'tiny-confirm'" in printed
    companion = optuna.load_study(study_name=companion_name("tiny"), storage=storage)
    runs = companion.get_trials(states=(TrialState.COMPLETE,))
    assert len(runs) == 4 and companion.user_attrs[SEEDS_ATTR] == [1, 2]  # fresh seeds: not the study's own 0
    for trial in top_two:  # each recipe with each seed, on the tokens its trial consumed
        mine = [run for run in runs if all(run.params[name] == value for name, value in trial.params.items())]
        assert sorted(run.params[SEED_PARAM] for run in mine) == [1, 2]
        assert {run.params[TOKENS_PARAM] for run in mine} == {trial.user_attrs["tokens_seen"]}
        assert all(run.value == run.user_attrs["gain_over_random_init"] for run in mine)
        assert all(not run.intermediate_values for run in mine)  # no quick probes: nothing to prune
        # Each seed draws its own starting encoder: each run is read against its own random init.
        assert len({run.user_attrs["random_init_accuracy"] for run in mine}) == 2
    assert "confirmation (study 'tiny-confirm'): 4 of 4 runs done" in printed
    assert "over 2 paired seed(s)" in printed and "P(best)" in printed
    assert len(study.trials) == 3  # the study itself is untouched

    # Resumed: nothing left to run. Extended: one more seed for both recipes.
    assert main.main(["confirm", *study_flags, "--top_k", "2", "--seeds", "2"]) == 0
    assert "0 run(s) queued now, 0 to run" in capsys.readouterr().out
    assert main.main(["confirm", *study_flags, "--top_k", "2", "--seeds", "3"]) == 0
    assert "2 run(s) queued now, 2 to run" in capsys.readouterr().out
    summary = summarise(optuna.load_study(study_name=companion_name("tiny"), storage=storage))
    assert summary.finished and summary.complete_seeds == [1, 2, 3] and len(summary.recipes) == 2

    assert main.main(["export", *study_flags]) == 0
    exported = load_config(tmp_path / "studies/tiny/best_config.yaml")
    leader = summary.leader
    assert exported.provenance["trial"] == leader.recipe.trial
    assert exported.provenance["selection"].startswith("confirmed leader: the highest mean over 3 paired seeds")
    assert exported.provenance["confirmation"]["mean"] == pytest.approx(leader.mean)
    header = (tmp_path / "studies/tiny/best_config.yaml").read_text().splitlines()[1]
    assert header.startswith("# Chosen as: confirmed leader")

    assert main.main(["status", *study_flags]) == 0
    assert "confirmation (study 'tiny-confirm'): 6 of 6 runs done" in capsys.readouterr().out
    assert main.main(["report", *study_flags]) == 0
    report = (tmp_path / "studies/tiny/report.html").read_text()
    assert "Confirmation over seeds" in report and "6 of 6 runs done" in report and "P(best)" in report


def test_summary_pairs_the_seeds_and_waits_for_every_recipe(tmp_path):
    # Recipe 3 beats recipe 1 by 0.01 on every seed although the seeds move both by far more.
    values = {1: {1: 0.04, 2: 0.10, 3: 0.01}, 3: {1: 0.05, 2: 0.11, 3: 0.02}, 5: {1: 0.03, 2: 0.08}}
    summary = summarise(fake_companion(tmp_path, values))

    assert summary.runs_done == 8 and summary.runs_planned == 9 and not summary.finished
    assert summary.complete_seeds == [1, 2]  # recipe 5 has not finished seed 3
    assert [line.recipe.trial for line in summary.recipes] == [3, 1, 5]
    leader, second, third = summary.recipes
    assert leader.values == [0.05, 0.11] and leader.mean == pytest.approx(0.08)
    assert second.difference_to_leader == pytest.approx(-0.01) and second.difference_standard_error == pytest.approx(0)
    # Recipe 1 trails the leader on both seeds by the same margin: never best. Recipe 5 trails by 0.02 and 0.03, a
    # mean of 0.025 over an SE of 0.005 with 1 degree of freedom: best with the paired t's P(t_1 > 5).
    assert second.probability_best == 0.0
    assert third.probability_best == pytest.approx(stats.t.sf(5.0, 1), abs=0.01)
    assert third.difference_to_leader == pytest.approx(-0.025)
    assert math.isclose(sum(line.probability_best for line in summary.recipes), 1.0)
    assert "highest mean over 2 paired seeds (train.seed 1, 2)" in summary.rule()


def test_the_difference_to_the_leader_has_a_t_interval_over_the_paired_seeds(tmp_path):
    values = {1: {1: 0.04, 2: 0.10, 3: 0.01}, 3: {1: 0.05, 2: 0.11, 3: 0.03}, 5: {1: 0.03, 2: 0.08, 3: 0.02}}
    summary = summarise(fake_companion(tmp_path, values))

    leader, *others = summary.recipes
    assert leader.recipe.trial == 3 and leader.difference_interval == (0.0, 0.0)
    for line in others:  # mean ± t with 2 degrees of freedom x SE, of the seed-by-seed differences
        differences = np.array(line.values) - np.array(leader.values)
        half_width = stats.t.ppf(0.975, 2) * differences.std(ddof=1) / math.sqrt(3)
        assert line.difference_interval == pytest.approx(
            (differences.mean() - half_width, differences.mean() + half_width)
        )
    # Trial 1 is behind by 1, 1 and 2 points: -1.33 ± 0.33, and the interval still holds zero with 3 seeds.
    assert "(-1.33 ± 0.33 points [-2.77, +0.10] vs leader)" in "\n".join(describe(summary))


def test_one_paired_seed_gives_no_interval(tmp_path):
    summary = summarise(fake_companion(tmp_path, {1: {1: 0.04}, 3: {1: 0.05}}))
    assert "(-1.00 points vs leader)" in "\n".join(describe(summary))


def test_export_without_two_confirmed_seeds_takes_the_best_trial_and_says_so(tmp_path, make_study, capsys):
    storage = make_study(tmp_path / "fake.db", [({}, 0.05), ({}, 0.07)])
    recipes = optuna.load_study(study_name="fake", storage=storage).trials
    companion = optuna.create_study(study_name="fake-confirm", storage=storage, direction="maximize")
    companion.set_user_attr(
        RECIPES_ATTR, [Recipe(trial.number, trial.params, 1000, trial.value).__dict__ for trial in recipes]
    )
    companion.set_user_attr(SEEDS_ATTR, [1, 2])

    assert main.main(["export", "--study_name", "fake", "--storage", storage]) == 0

    assert "the confirmation of study 'fake' is unfinished (0 of 4 runs)" in capsys.readouterr().err
    written = yaml.safe_load((tmp_path / "studies/fake/best_config.yaml").read_text())
    assert written["provenance"]["trial"] == 1 and "no confirmation over seeds" in written["provenance"]["selection"]


def test_an_unstable_run_is_a_loss_for_its_recipe_not_a_hole_in_every_recipes_seeds(tmp_path):
    # Recipe 3 leads on seeds 1 and 2, then goes non-finite on seed 3. Dropping seed 3 (as for a missing run) would
    # export it as the leader; scored as an encoder that learned nothing readable, it is last.
    companion = fake_companion(tmp_path, {1: {1: 0.05, 2: 0.06, 3: 0.07}, 3: {1: 0.10, 2: 0.12}})
    companion.set_metric_names(["probe_gain_over_random_init"])
    unstable = Recipe(3, {"train.learning_rate": 0.004}, 1000, 0.05).run_params(3)
    distributions = {
        name: optuna.distributions.FloatDistribution(0, 1)
        if name == "train.learning_rate"
        else optuna.distributions.IntDistribution(0, 10**12)
        for name in unstable
    }
    companion.add_trial(
        optuna.trial.create_trial(
            params=unstable,
            distributions=distributions,
            state=TrialState.PRUNED,
            user_attrs={"random_init_accuracy": 0.52, "pruned_reason": "training loss is nan at step 40"},
        )
    )

    summary = summarise(companion)

    assert summary.finished and summary.complete_seeds == [1, 2, 3]
    leader, unstable_line = summary.recipes
    assert leader.recipe.trial == 1
    assert unstable_line.values == pytest.approx([0.10, 0.12, 0.25 - 0.52])  # chance accuracy (1/4) - random init
    assert unstable_line.unstable_runs == 1
    assert "1 run(s) non-finite, scored at chance accuracy" in describe(summary)[-1]
