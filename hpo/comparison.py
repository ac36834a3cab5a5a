"""A controlled comparison: every cell of a grid of settings (say, attention kind x objective) run from the same
seeds, all other settings fixed, with the statistics a paper's table needs.

`main.py compare` (hpo/compare.py) runs the grid as an Optuna study of fixed trials (each cell x seed enqueued:
resumable, parallel, visible in the dashboard, shareable over PostgreSQL like any study). A run's parameters
say all it runs: one value per grid key, and train.seed. For a given seed every cell starts from its own
architecture's weights drawn from that seed and sees the same data order (common random numbers), so cells
are compared seed by seed: the mean paired difference with its t-based 95% interval, d_z (that mean over the
differences' standard deviation), a paired t-test, Holm correction over all pairs.

The budget is the comparison's currency, named in every title: equal tokens (what a setting learns per token)
or equal seconds (what it learns per second on the machine at hand, where, on a CPU, exposb runs its PyTorch
reference at about a third of the speed of the softmax kinds).

This module reads and describes a comparison without torch (the report uses it).
"""

import dataclasses
import itertools
import math
import re
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from hpo.config import TYPED_SECTIONS, Config, ConfigError, ParamSpec, convert_field, dimensions
from hpo.statistics import holm_adjust, mean_and_standard_error, t_interval
from hpo.study_values import GAIN_ERROR_ATTR, PLANNED_RUN_STATES, TOKENS_ATTR, objective_name, planned_run_value
from training.config import PROBE_TARGETS

COMPARISON_ATTR = "comparison"  # study user attr: {"grid": {key: [values]}, "seeds": [...], "budget": ...}
SEED_PARAM = "train.seed"
SEED_RANGE = (0, 2**31 - 1)
BUDGETS = ("tokens", "seconds")
SIGNIFICANCE_LEVEL = 0.05


def parse_grid(assignments: list[str]) -> dict[str, list[Any]]:
    """["model.attention_kind=standard,rope", "train.objective=mlm,clm"] -> {key: [values]}, each value read as --set
    reads it (YAML, then checked against the setting's type: 1e-3 is a float)."""
    grid: dict[str, list[Any]] = {}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        key = key.strip()
        texts = [value.strip() for value in text.split(",") if value.strip()]
        if not separator or key.count(".") != 1 or not texts:
            raise ConfigError(
                f"--grid {assignment!r}: expected SECTION.KEY=V1,V2,..., e.g. --grid model.attention_kind=standard,rope"
            )
        values = [grid_value(key, value) for value in texts]
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; give all its values in one --grid")
        if len(set(map(str, values))) != len(values):
            raise ConfigError(f"--grid {assignment!r} repeats a value")
        grid[key] = values
    if not grid:
        raise ConfigError(
            "compare needs at least one --grid KEY=V1,V2,... (e.g. --grid model.attention_kind=standard,rope)"
        )
    if SEED_PARAM in grid:
        raise ConfigError(f"--grid {SEED_PARAM}: the seeds are --seeds, the same for every cell")
    return grid


def grid_value(key: str, text: str) -> Any:
    """One value of --grid SECTION.KEY=..., as --set reads it; a ConfigError naming it if the key or value is bad."""
    section, field_name = key.split(".")
    section_type = typing.get_type_hints(Config).get(section)
    names = [field.name for field in dataclasses.fields(section_type)] if dataclasses.is_dataclass(section_type) else []
    if not names:
        raise ConfigError(f"--grid {key}: no section {section!r}; sections: {', '.join(TYPED_SECTIONS)}")
    if field_name not in names:
        raise ConfigError(f"--grid {key}: {section} has no field {field_name!r}; its fields: {', '.join(names)}")
    return convert_field(section_type, field_name, yaml.safe_load(text), f"--grid {key}")


def comparison_config(base: Config, grid: dict[str, list[Any]], budget: str) -> Config:
    """The comparison study's configuration: `base` with a search space of exactly the grid's keys (each a choice
    of its values) and train.seed, the chosen budget, no quick probes, no pruning and no baseline trial."""
    if budget not in BUDGETS:
        raise ConfigError(f"--budget {budget!r}; expected one of {', '.join(BUDGETS)}")
    train = dataclasses.replace(base.train, report_points=[])
    if budget == "tokens":
        train = dataclasses.replace(train, budget_seconds=None)
    elif train.budget_seconds is None:
        raise ConfigError("--budget seconds needs train.budget_seconds (e.g. --set train.budget_seconds=150)")
    space: dict[str, dict[str, ParamSpec]] = {}
    for key, values in grid.items():
        section, field_name = key.split(".")
        space.setdefault(section, {})[field_name] = ParamSpec(type="categorical", choices=list(values))
    space.setdefault("train", {})["seed"] = ParamSpec(type="int", low=SEED_RANGE[0], high=SEED_RANGE[1])
    study = dataclasses.replace(base.study, pruner="none", baseline_trial=False)
    config = dataclasses.replace(base, train=train, study=study, search_space=space, provenance=None)
    try:
        config.validate()  # each grid key a field, each value valid, every combination of them too
    except ConfigError as error:  # said in the words of the command: the grid is this study's search space
        message = re.sub(r"^search_space\.(\S+) choice (\S+) gives", r"--grid \1=\2 gives", str(error))
        message = re.sub(r"^search_space: (.*) together give", r"--grid \1 together give", message)
        raise ConfigError(message) from error
    return config


def cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the grid's order."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def run_params(cell: dict[str, Any], seed: int) -> dict[str, Any]:
    return {**cell, SEED_PARAM: seed}


@dataclass(frozen=True)
class Cell:
    """One cell's runs: its finished trials by seed (a run that went non-finite is scored at chance accuracy)."""

    settings: dict[str, Any]
    trials: dict[int, FrozenTrial]
    metric: str = PROBE_TARGETS["gain"]  # what the trials' values are (the study's objective)

    @property
    def label(self) -> str:
        return ", ".join(f"{key.split('.')[-1]}={value}" for key, value in self.settings.items())

    def mean(self, attribute: str) -> float:
        values = [trial.user_attrs[attribute] for trial in self.trials.values() if attribute in trial.user_attrs]
        return statistics_mean(values)

    def values(self, seeds: list[int]) -> list[float]:
        return [planned_run_value(self.trials[seed], self.metric) for seed in seeds]

    @property
    def unstable_runs(self) -> int:
        return sum(trial.state == TrialState.PRUNED for trial in self.trials.values())


def statistics_mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


@dataclass(frozen=True)
class PairedTest:
    """Two settings on the seeds both finished: the mean paired difference (first minus second), its t-based 95%
    interval, d_z (the mean difference over the differences' standard deviation: an effect size of the pairs,
    not Cohen's d of two groups) and the paired t-test's p-value, with seeds - 1 degrees of freedom."""

    first: str
    second: str
    seeds: int
    difference: float
    interval: tuple[float, float]
    d_z: float
    p_value: float
    adjusted_p_value: float = math.nan

    @property
    def significant(self) -> bool:
        return self.adjusted_p_value < SIGNIFICANCE_LEVEL

    @property
    def degrees_of_freedom(self) -> int:
        return self.seeds - 1


@dataclass(frozen=True)
class ComparisonSummary:
    grid: dict[str, list[Any]]
    seeds: list[int]
    budget: str
    budget_description: str  # e.g. "equal tokens: 2,000,000 per run"
    cells: list[Cell]
    tests: list[PairedTest]
    effects: list[PairedTest] = dataclasses.field(default_factory=list)  # main effects (main_effects)

    @property
    def runs_done(self) -> int:
        return sum(len(cell.trials) for cell in self.cells)

    @property
    def runs_planned(self) -> int:
        return len(self.cells) * len(self.seeds)


def paired_test(first: Cell, second: Cell, seeds: list[int]) -> PairedTest | None:
    """The paired comparison of two cells on `seeds`; None with fewer than two seeds."""
    if len(seeds) < 2:
        return None
    return paired_values_test(first.label, second.label, first.values(seeds), second.values(seeds))


def main_effects(found: list[Cell], grid: dict[str, list[Any]], seeds: list[int]) -> list[PairedTest]:
    """Each grid key's values compared two by two: within each seed, each value's mean over the grid's other
    settings, then those means paired over the seeds (the seed is the unit that repeats; the other settings' runs
    of one seed share its data order and weights, so pooling them as pairs would count one seed several times).
    A seed counts when every cell of both values finished it. Only for a grid of two keys or more (with one key,
    the pairs of cells are these comparisons); their interaction shows in the cells."""
    if len(grid) < 2:
        return []
    effects = []
    for key, values in grid.items():
        name = key.split(".")[-1]
        for first_value, second_value in itertools.combinations(values, 2):
            first_cells = [cell for cell in found if cell.settings[key] == first_value]
            second_cells = [cell for cell in found if cell.settings[key] == second_value]
            shared = [seed for seed in seeds if all(seed in cell.trials for cell in first_cells + second_cells)]
            if len(shared) >= 2:
                first_means = [statistics_mean([cell.trials[seed].value for cell in first_cells]) for seed in shared]
                second_means = [statistics_mean([cell.trials[seed].value for cell in second_cells]) for seed in shared]
                effects.append(
                    paired_values_test(f"{name}={first_value}", f"{name}={second_value}", first_means, second_means)
                )
    return effects


def paired_values_test(
    first_label: str, second_label: str, first_values: list[float], second_values: list[float]
) -> PairedTest:
    """Paired difference of matched values (first minus second), its t-based 95% interval, d_z and paired t-test.

    The test is the paired t-test at every n, so that its p (before Holm) is below 0.05 exactly when the printed
    interval excludes zero. No normality test chooses it: a Shapiro-Wilk test at 3 pairs has almost no power (it
    rejects exponential differences 7% of the time, against 5% for normal ones), and the usual alternative, the
    Wilcoxon signed-rank test, cannot reach p < 0.05 with 5 or fewer pairs (its smallest two-sided p is 2 / 2^n,
    0.0625 at 5). With many seeds the t-test holds for non-normal differences too (the mean nears normal)."""
    differences = np.array(first_values) - np.array(second_values)
    mean = float(differences.mean())
    spread = float(differences.std(ddof=1))
    d_z = mean / spread if spread > 0 else math.copysign(math.inf, mean) if mean else 0.0
    if spread == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(stats.ttest_1samp(differences, 0.0).pvalue)
    interval = t_interval(differences.tolist())
    return PairedTest(first_label, second_label, len(differences), mean, interval, d_z, p_value)


def describe_budget(config: Config, budget: str) -> str:
    if budget == "tokens":
        return f"equal tokens: {config.train.budget_tokens:,} per run"
    return f"equal seconds: {config.train.budget_seconds:g} s of training per run, on the machine that ran it"


def summarise(study: optuna.Study, config: Config) -> ComparisonSummary:
    """What the comparison found so far: each cell over its finished seeds, and every pair of cells tested on
    the seeds both finished (Holm-corrected together)."""
    comparison = study.user_attrs[COMPARISON_ATTR]
    grid, seeds = comparison["grid"], comparison["seeds"]
    finished = study.get_trials(deepcopy=False, states=PLANNED_RUN_STATES)
    found = []
    for settings in cells(grid):
        trials = {}
        for trial in finished:
            seed = trial.params.get(SEED_PARAM)
            if trial.params == run_params(settings, seed):
                trials[seed] = trial
        found.append(Cell(settings, trials, objective_name(study)))
    tests = []
    for first, second in itertools.combinations(found, 2):
        shared = [seed for seed in seeds if seed in first.trials and seed in second.trials]
        test = paired_test(first, second, shared)
        if test is not None:
            tests.append(test)
    adjusted = holm_adjust([test.p_value for test in tests])
    tests = [dataclasses.replace(test, adjusted_p_value=value) for test, value in zip(tests, adjusted, strict=True)]
    effects = main_effects(found, grid, seeds)
    adjusted = holm_adjust([test.p_value for test in effects])
    effects = [dataclasses.replace(test, adjusted_p_value=value) for test, value in zip(effects, adjusted, strict=True)]
    budget = comparison["budget"]
    return ComparisonSummary(grid, seeds, budget, describe_budget(config, budget), found, tests, effects)


def cell_row(cell: Cell, seeds: list[int]) -> dict[str, Any]:
    """One cell's figures: mean value ± SE over its seeds, and the means of what a person reads beside it."""
    done = [seed for seed in seeds if seed in cell.trials]
    mean, error = mean_and_standard_error(cell.values(done)) if done else (math.nan, math.nan)
    return {
        "cell": cell.label,
        "seeds": len(done),
        "mean": mean,
        "standard_error": error,
        "accuracy": cell.mean("probe_accuracy"),
        "random_init_accuracy": cell.mean("random_init_accuracy"),
        "probe_error": cell.mean(GAIN_ERROR_ATTR),
        "validation_loss": cell.mean("validation_loss"),
        "tokens": cell.mean(TOKENS_ATTR),
        "tokens_per_second": cell.mean("tokens_per_second"),
        "unstable_runs": cell.unstable_runs,
    }


def grid_dimensions_match(config: Config, grid: dict[str, list[Any]]) -> bool:
    """Whether the configuration's search space is exactly this grid (and the seed)."""
    names = {name for name, *_ in dimensions(config)}
    return names == {*grid, SEED_PARAM}
