"""A study's confirmation: its top recipes re-run over paired seeds, in a companion study, and what it found.

A trial's value carries a training noise of a couple of points from seed to seed, and the study's best trial
is the maximum of noisy values (the winner's curse). `main.py confirm` (hpo/confirm.py) re-runs the top-k
recipes of a study with the same fresh train.seed values (common random numbers: for a given seed, every
recipe starts from its own architecture's weights drawn from that seed and sees the same data order), each
on the tokens its trial consumed, each against its own random-init encoder. The runs are trials of the
companion study NAME-confirm in the same storage: resumable, parallel and visible in the dashboard like any
study, without touching the study's own ranking, sampler or importances. A run's parameters say all it runs:
the recipe's, plus train.seed and train.budget_tokens (dimensions the companion's search space adds).

This module reads and describes a confirmation without torch (export, status and the report use it).
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import Config, ConfigError, ParamSpec
from hpo.statistics import mean_and_standard_error, probability_best, t_interval
from hpo.study_values import (
    PLANNED_RUN_STATES,
    TOKENS_ATTR,
    format_metric,
    metric_label,
    objective_name,
    planned_run_value,
    trial_tokens,
    unstable_note,
)
from training.results import format_gain

SUFFIX = "-confirm"
RECIPES_ATTR = "confirmed_recipes"  # companion study user attr: the recipes, as the study ranked them
SEEDS_ATTR = "confirmation_seeds"  # companion study user attr: the train.seed values every recipe runs with
PARENT_ATTR = "confirms"  # companion study user attr: the study it confirms
SEED_PARAM, TOKENS_PARAM = "train.seed", "train.budget_tokens"
SEED_RANGE, TOKENS_RANGE = (0, 2**31 - 1), (1, 10**12)  # wide fixed ranges: more seeds or recipes fit later


def companion_name(study_name: str) -> str:
    return study_name + SUFFIX


@dataclass(frozen=True)
class Recipe:
    """One of the study's top trials: its parameters, the tokens it consumed and the value it scored."""

    trial: int
    params: dict[str, Any]
    tokens: int
    value: float

    def run_params(self, seed: int) -> dict[str, Any]:
        """The parameters of this recipe's confirmation run with train.seed = seed."""
        return {**self.params, SEED_PARAM: seed, TOKENS_PARAM: self.tokens}


def top_recipes(ranked: list[FrozenTrial], top_k: int) -> list[Recipe]:
    """The first top_k distinct recipes of the ranked trials (a retried trial repeats its recipe)."""
    recipes: list[Recipe] = []
    for trial in ranked:
        if len(recipes) == top_k:
            break
        if any(recipe.params == trial.params for recipe in recipes):
            continue
        tokens = trial_tokens(trial)
        if tokens is None:
            raise ConfigError(f"trial {trial.number} has no '{TOKENS_ATTR}' user attr, so it cannot be re-run alike")
        recipes.append(Recipe(trial.number, dict(trial.params), tokens, trial.value))
    return recipes


def confirmation_config(base: Config) -> Config:
    """The companion's configuration: the study's, with token budgets (so a run is reproducible whatever the
    machine's load), no quick probes and no pruning (every run finishes), no baseline trial, and a search
    space that adds train.seed and train.budget_tokens to the study's."""
    space = {section: dict(params) for section, params in base.search_space.items()}
    train_space = space.setdefault("train", {})
    for name, (low, high) in ((SEED_PARAM, SEED_RANGE), (TOKENS_PARAM, TOKENS_RANGE)):
        field_name = name.split(".")[1]
        if field_name in train_space:
            raise ConfigError(f"the study's search space samples {name}, which a confirmation sets itself")
        train_space[field_name] = ParamSpec(type="int", low=low, high=high)
    train = dataclasses.replace(base.train, budget_seconds=None, report_points=[])
    study = dataclasses.replace(base.study, pruner="none", baseline_trial=False)
    return dataclasses.replace(base, train=train, study=study, search_space=space, provenance=None)


@dataclass(frozen=True)
class RecipeResult:
    """A recipe's confirmation runs: value by seed, and the seeds whose run went non-finite (scored at chance)."""

    recipe: Recipe
    values: dict[int, float]
    unstable_seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class RecipeSummary:
    """A recipe over the seeds every recipe has finished: its mean ± SE, the paired difference to the leader
    ± SE (seed by seed) with its t-based 95% interval (seeds - 1 degrees of freedom), and the probability that it
    is the best (hpo.statistics.probability_best; nan from one seed)."""

    recipe: Recipe
    values: list[float]
    mean: float
    standard_error: float
    difference_to_leader: float
    difference_standard_error: float
    difference_interval: tuple[float, float]
    probability_best: float
    unstable_runs: int = 0  # of its runs on these seeds, those that went non-finite (scored at chance accuracy)

    def difference_text(self) -> str:
        """The paired difference to the leader, e.g. "-0.70 ± 0.59 points [-3.24, +1.84]"; no interval from 1 seed."""
        text = format_gain(self.difference_to_leader, self.difference_standard_error)
        low, high = self.difference_interval
        return text if math.isnan(low) else f"{text} [{100 * low:+.2f}, {100 * high:+.2f}]"


@dataclass(frozen=True)
class ConfirmationSummary:
    study_name: str
    metric: str  # what the runs' values are (the study's objective name)
    seeds: list[int]  # asked for
    complete_seeds: list[int]  # finished by every recipe: the paired comparison uses these
    runs_done: int
    runs_planned: int
    recipes: list[RecipeSummary]  # best mean first; empty until one seed is done by every recipe

    @property
    def leader(self) -> RecipeSummary | None:
        return self.recipes[0] if self.recipes else None

    @property
    def finished(self) -> bool:
        return self.runs_done == self.runs_planned

    def rule(self) -> str:
        """How the leader was chosen, in words (export writes it into the file)."""
        leader = self.leader
        seeds = ", ".join(map(str, self.complete_seeds))
        mean = format_metric(self.metric, leader.mean, leader.standard_error)
        return (
            f"confirmed leader: the highest mean over {len(self.complete_seeds)} paired seeds (train.seed {seeds}) "
            f"among the study's top {len(self.recipes)} recipes, re-run on each trial's tokens (study "
            f"{self.study_name!r}); trial {leader.recipe.trial}: {mean}, "
            f"probability best {probability_text(leader.probability_best)}"
        )


def probability_text(probability: float) -> str:
    """A probability best as printed: two decimals, or "–" where one seed leaves it undefined."""
    return "–" if math.isnan(probability) else f"{probability:.2f}"


def recipe_results(companion: optuna.Study) -> list[RecipeResult]:
    """Each recorded recipe with the values of its finished runs by seed (an unstable run's at chance accuracy)."""
    recipes = [Recipe(**recipe) for recipe in companion.user_attrs.get(RECIPES_ATTR, [])]
    metric = objective_name(companion)
    finished = companion.get_trials(deepcopy=False, states=PLANNED_RUN_STATES)
    results = []
    for recipe in recipes:
        values, unstable = {}, []
        for trial in finished:
            seed = trial.params.get(SEED_PARAM)
            if trial.params == recipe.run_params(seed):
                values[seed] = planned_run_value(trial, metric)
                if trial.state == TrialState.PRUNED:
                    unstable.append(seed)
        results.append(RecipeResult(recipe, values, tuple(sorted(unstable))))
    return results


def summarise(companion: optuna.Study) -> ConfirmationSummary:
    """What the confirmation found so far: each recipe over the seeds all of them have finished."""
    seeds = list(companion.user_attrs.get(SEEDS_ATTR, []))
    results = recipe_results(companion)
    complete_seeds = [seed for seed in seeds if all(seed in result.values for result in results)]
    summaries = []
    if results and complete_seeds:
        table = {str(result.recipe.trial): [result.values[seed] for seed in complete_seeds] for result in results}
        best_shares = probability_best(table)
        means = {name: mean_and_standard_error(values) for name, values in table.items()}
        leader = max(table, key=lambda name: means[name][0])
        for result in results:
            name = str(result.recipe.trial)
            differences = [value - other for value, other in zip(table[name], table[leader], strict=True)]
            difference, difference_error = mean_and_standard_error(differences)
            if name == leader:  # no difference to itself, even from one seed
                difference_error, interval = 0.0, (0.0, 0.0)
            else:
                interval = t_interval(differences)
            summaries.append(
                RecipeSummary(
                    result.recipe,
                    table[name],
                    *means[name],
                    difference,
                    difference_error,
                    interval,
                    best_shares[name],
                    sum(seed in result.unstable_seeds for seed in complete_seeds),
                )
            )
        summaries.sort(key=lambda summary: -summary.mean)
    return ConfirmationSummary(
        study_name=companion.study_name,
        metric=objective_name(companion),
        seeds=seeds,
        complete_seeds=complete_seeds,
        runs_done=sum(len(result.values) for result in results),
        runs_planned=len(results) * len(seeds),
        recipes=summaries,
    )


def describe(summary: ConfirmationSummary) -> list[str]:
    """The confirmation as lines of text: progress, then one line per recipe, best mean first."""
    lines = [
        f"confirmation (study {summary.study_name!r}): {summary.runs_done} of {summary.runs_planned} runs done; "
        f"train.seed {', '.join(map(str, summary.seeds))}, each recipe on its trial's tokens"
    ]
    if not summary.recipes:
        return [*lines, "  no seed finished by every recipe yet"]
    lines.append(
        f"  over {len(summary.complete_seeds)} paired seed(s), best mean first ({metric_label(summary.metric)}; the "
        "paired difference to the leader ± SE [t-based 95% interval]; the study's own trial value beside):"
    )
    for line in summary.recipes:
        recipe = line.recipe
        paired = "leader" if line is summary.leader else f"{line.difference_text()} vs leader"
        lines.append(
            f"  trial {recipe.trial}: mean {format_metric(summary.metric, line.mean, line.standard_error)} ({paired}), "
            f"P(best) {probability_text(line.probability_best)} | study value "
            f"{format_metric(summary.metric, recipe.value)} | {recipe.tokens:,} tokens"
            + unstable_note(line.unstable_runs)
        )
    return lines


def load_confirmation(study: optuna.Study) -> ConfirmationSummary | None:
    """The confirmation of `study` in its storage, or None when it has none."""
    name = companion_name(study.study_name)
    storage = study._storage
    if name not in optuna.get_all_study_names(storage):
        return None
    return summarise(optuna.load_study(study_name=name, storage=storage))
