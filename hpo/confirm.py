"""`main.py confirm`: re-run a study's top recipes over paired seeds, in its companion study (hpo/confirmation.py),
with the study's workers; then print what the confirmation found."""

import dataclasses
from pathlib import Path

import optuna

from hpo.config import ConfigError, run_config_key
from hpo.confirmation import (
    PARENT_ATTR,
    RECIPES_ATTR,
    SEEDS_ATTR,
    Recipe,
    companion_name,
    confirmation_config,
    describe,
    summarise,
    top_recipes,
)
from hpo.export import trial_base_config
from hpo.planned import run_plan
from hpo.storage import load_existing_study
from hpo.study import StudyRun, open_study
from hpo.study_values import ranked_trials


def confirmation_seeds(study_seed: int, count: int) -> list[int]:
    """Fresh train.seed values: not the study's own, whose draws chose the top trials (the winner's curse)."""
    return [study_seed + 1 + index for index in range(count)]


def merge_recipes(companion: optuna.Study, recipes: list[Recipe]) -> list[Recipe]:
    """The recipes recorded by earlier runs of confirm, then the new ones: a later, larger --top_k adds recipes."""
    recorded = [Recipe(**recipe) for recipe in companion.user_attrs.get(RECIPES_ATTR, [])]
    return recorded + [recipe for recipe in recipes if all(recipe.params != old.params for old in recorded)]


def run_confirmation(
    study_name: str, storage_url: str, data_dir: Path, top_k: int, seeds: int, n_jobs: int
) -> StudyRun | None:
    """Confirm the study's top_k recipes over `seeds` paired seeds; returns the companion's run (None when every
    run was done already). Run it again to resume, or with a larger --top_k or --seeds to extend it."""
    study = load_existing_study(study_name, storage_url)
    ranked = ranked_trials(study)
    if not ranked:
        raise ConfigError(f"study {study_name!r} has no completed trial yet; run trials before confirming them")
    new_recipes = top_recipes(ranked, top_k)
    trials = {trial.number: trial for trial in ranked}
    bases = {run_config_key(trial_base_config(study, trials[recipe.trial])) for recipe in new_recipes}
    if len(bases) > 1:
        raise ConfigError(
            f"the top {len(new_recipes)} recipes of study {study_name!r} ran under {len(bases)} configurations "
            "(a --force resume changed it), so their runs could not be paired; confirm fewer with --top_k"
        )
    base = trial_base_config(study, trials[new_recipes[0].trial])
    config = confirmation_config(base)
    companion = open_study(companion_name(study_name), storage_url, config, seed=0)
    recipes = merge_recipes(companion, new_recipes)
    all_seeds = sorted({*companion.user_attrs.get(SEEDS_ATTR, []), *confirmation_seeds(base.train.seed, seeds)})
    companion.set_user_attr(PARENT_ATTR, study_name)
    companion.set_user_attr(RECIPES_ATTR, [dataclasses.asdict(recipe) for recipe in recipes])
    companion.set_user_attr(SEEDS_ATTR, all_seeds)
    # Seed by seed, so that a stopped confirmation has whole seeds done: only those pair the recipes.
    plan = [recipe.run_params(seed) for seed in all_seeds for recipe in recipes]
    what = (
        f"confirming {len(recipes)} recipe(s) of study {study_name!r} (trials "
        f"{', '.join(str(recipe.trial) for recipe in recipes)}) with train.seed {', '.join(map(str, all_seeds))}"
    )
    return run_plan(companion, storage_url, config, data_dir, n_jobs, plan, what)


def print_confirmation(study_name: str, storage_url: str) -> None:
    study = load_existing_study(study_name, storage_url)
    companion = optuna.load_study(study_name=companion_name(study_name), storage=study._storage)
    print("\n".join(describe(summarise(companion))))
