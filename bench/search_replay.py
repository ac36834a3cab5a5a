"""Samplers and pruners replayed over the recorded search pool (issue 29): does a study's search beat random search
and config.yaml's recipe at equal compute, and which sampler, pruner and number of trials should a user pick?

    python -m bench.search_replay                         # every pairing, 50 repeats of 100 trials, from the pool
    python -m bench.search_replay --repeats 10 --trials 50 --pairings tpe+median,random+none
    python -m bench.search_replay --pairings tpe+median:pruner_warmup_steps=1,tpe+median:pruner_startup_trials=5

Running many real studies per sampler is too slow here, so this replays them, as HPO benchmarks do (HPOBench, YAHPO
Gym): a surrogate fitted on the pool (bench/search_pool.py's table) stands for each recipe's true mean value, and
every simulated trial observes it plus the pool's own seed-to-seed noise. The surrogate is chosen among a few
scikit-learn regressors by how well it ranks recipes it was not fitted on (grouped cross-validation over recipes;
printed beside the ranking two seeds of the same recipes agree on, the noise's ceiling), so the reader knows how
far to trust it. Each report point's quick value has its own surrogate, and a trial's noise at its report points
and at its end is drawn jointly, with the covariance of the pool's seed-paired differences (half of it: the
variance of one run), so pruners see quick values as noisy and as correlated with the end as real ones.

A simulated study is the real one: the project's search space and suggest calls, its samplers and pruners
(hpo/sampling.py: tpe, random, qmc, gp; median, successive halving, hyperband, none), with config.yaml's study
settings but those a pairing names (the pruner's warm-up and startup trials), config.yaml's recipe enqueued first
as a study does. Optuna's WilcoxonPruner is not among them: it tests a trial's per-instance scores (folds,
problems) against the best trial's, and a trial here reports one training curve, not instances. Compute is
counted in trial budgets: a trial pruned at report point k used that point's share of its budget. Regret is the
surrogate's true value of the best in the space (the maximum over a dense Sobol sample and the pool's recipes) minus
that of the recipe the study would pick: its best observed trial, or (the winner's curse) the best of its top 3
re-run on 3 fresh seeds each, 9 more budgets. Each (pairing, repeat) is cached in WORK, keyed by a digest of the
pool's table, the surrogate, the space and the pairing: a stopped replay resumes. Writes OUTPUT/search_replay.md,
.json and .png.
"""

import argparse
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from scipy import stats

from bench.cli import run_cli
from hpo.config import DEFAULT_CONFIG_PATH, Config, ConfigError, StudyConfig, dimensions, load_config
from hpo.sampling import PRUNERS, SAMPLERS, make_pruner, make_sampler
from hpo.space import base_params, suggest
from hpo.statistics import mean_and_standard_error, rank_agreement, t_interval
from hpo.study_values import CHANCE_ACCURACY

optuna.logging.set_verbosity(optuna.logging.WARNING)

CHECKPOINTS = (6, 20, 50, 100)  # trials after which a study's pick is read
REFERENCE = "random+none"  # the search every other pairing is held against
CONFIRM_TOP, CONFIRM_SEEDS = 3, 3  # the winner's-curse remedy: the top recipes, each re-run on fresh seeds
SPACE_SAMPLE = 4096  # Sobol points over the space, for its best true value
FOLDS = 5


# The pool -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """The recorded runs: each run's recipe (params), seed, value at its end and quick values at the report points."""

    params: list[dict[str, Any]]
    recipes: np.ndarray  # (runs,) recipe index
    seeds: np.ndarray  # (runs,)
    values: np.ndarray  # (runs, points + 1): quick values at each report point, then the end's value

    def subset(self, keep: np.ndarray) -> "Pool":
        return Pool(
            [p for p, kept in zip(self.params, keep, strict=True) if kept],
            *(array[keep] for array in (self.recipes, self.seeds, self.values)),
        )

    def design_runs(self) -> "Pool":
        """The pool's own runs (its first two seeds), without the confirmation runs of its top recipes."""
        return self.subset(self.seeds <= self.seeds.min() + 1)

    def confirmation_runs(self) -> "Pool":
        return self.subset(self.seeds > self.seeds.min() + 1)

    def digest(self) -> str:
        material = [self.params, self.recipes.tolist(), self.seeds.tolist(), self.values.tolist()]
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def parse_cell(text: str) -> Any:
    """A CSV cell back to a number where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_pool(path: Path, config: Config) -> Pool:
    """The pool's finished runs. A run that went non-finite ends at chance accuracy (as a confirmation scores it,
    hpo.study_values.planned_run_value) and its quick values after it stopped likewise."""
    import csv

    if not path.exists():
        raise ConfigError(f"no pool table {path}: run `python -m bench.search_pool` (or --export_only) first")
    with path.open() as file:
        rows = list(csv.DictReader(file))
    names = [name for name, *_ in dimensions(config)]
    points = len(config.train.report_points)
    params, recipes, seeds, values = [], [], [], []
    for row in rows:
        chance = CHANCE_ACCURACY - float(row["random_init_accuracy"])
        run_values = [parse_cell(row[f"quick_{index}"]) for index in range(points)] + [parse_cell(row["value"])]
        params.append({name: parse_cell(row[name]) for name in names if row.get(name, "") != ""})
        recipes.append(int(row["recipe"]))
        seeds.append(int(row["seed"]))
        values.append([chance if value == "" else value for value in run_values])
    if not rows:
        raise ConfigError(f"the pool table {path} holds no finished run yet")
    return Pool(params, np.array(recipes), np.array(seeds), np.array(values, dtype=float))


# Recipes as features ------------------------------------------------------------------------------------------------


def encode(params: dict[str, Any], config: Config) -> np.ndarray:
    """A recipe as numbers: each choice one-hot, each range scaled to [0, 1] (on its log scale where it has one); a
    dimension its conditions left out takes its range's middle (its parent's one-hot says it is absent)."""
    features = []
    for name, _, _, spec in dimensions(config):
        if spec.type == "fixed":
            continue
        if spec.type == "categorical":
            features += [float(params.get(name) == choice) for choice in spec.choices]
            continue
        low, high = (math.log(spec.low), math.log(spec.high)) if spec.log else (spec.low, spec.high)
        value = params.get(name)
        position = 0.5 if value is None else ((math.log(value) if spec.log else value) - low) / (high - low)
        features.append(position)
    return np.array(features)


# Surrogates ---------------------------------------------------------------------------------------------------------


def gaussian_process():
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel() * Matern(length_scale=1.0, nu=2.5) + WhiteKernel()
    return GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0)


def random_forest():
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=300, min_samples_leaf=3, random_state=0)


def gradient_boosting():
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8, random_state=0)


def ridge():
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=np.logspace(-3, 3, 13))


SURROGATES: dict[str, Callable[[], Any]] = {
    "gaussian_process": gaussian_process,
    "random_forest": random_forest,
    "gradient_boosting": gradient_boosting,
    "ridge": ridge,
}


def recipe_means(pool: Pool, column: int) -> tuple[np.ndarray, np.ndarray]:
    """Each recipe's mean over its seeds of one value column; the recipes in index order."""
    recipes = np.unique(pool.recipes)
    return recipes, np.array([pool.values[pool.recipes == recipe, column].mean() for recipe in recipes])


def held_out_agreement(features: np.ndarray, pool: Pool, column: int, make: Callable[[], Any]) -> dict[str, float]:
    """How a surrogate ranks recipes it was not fitted on: out-of-fold predictions (folds of whole recipes) against
    the recipes' observed means (Spearman with its interval, pairs ordered alike)."""
    from sklearn.model_selection import GroupKFold

    predicted = np.empty(len(pool.recipes))
    for train, test in GroupKFold(n_splits=FOLDS).split(features, groups=pool.recipes):
        predicted[test] = make().fit(features[train], pool.values[train, column]).predict(features[test])
    recipes, observed = recipe_means(pool, column)
    predicted_means = [predicted[pool.recipes == recipe].mean() for recipe in recipes]
    return rank_agreement(list(predicted_means), list(observed))


def noise_ceiling(pool: Pool, column: int) -> dict[str, float] | None:
    """How alike two seeds of the same recipes rank them (the best any surrogate of one seed's values could do)."""
    first, second = paired_values(pool, column)
    return rank_agreement(list(first), list(second)) if len(first) >= 4 else None


def paired_values(pool: Pool, column: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of one column for the recipes run with two seeds: (first seed's, second seed's)."""
    first, second = [], []
    for recipe in np.unique(pool.recipes):
        rows = np.flatnonzero(pool.recipes == recipe)
        if len(rows) >= 2:
            ordered = rows[np.argsort(pool.seeds[rows])]
            first.append(pool.values[ordered[0], column])
            second.append(pool.values[ordered[1], column])
    return np.array(first), np.array(second)


def run_noise(pool: Pool) -> np.ndarray:
    """The covariance of one run's noise over its report points and end: half that of the seed-paired differences."""
    columns = pool.values.shape[1]
    differences = np.stack([np.subtract(*paired_values(pool, column)) for column in range(columns)], axis=1)
    if len(differences) < 3:
        raise ConfigError(f"the pool has {len(differences)} recipes with two seeds; its noise needs at least 3")
    return np.cov(differences, rowvar=False) / 2


@dataclass
class Surrogate:
    """The fitted stand-in for the truth: one model per value column (report points, then the end), its name, and
    the noise of one run."""

    name: str
    models: list[Any]
    noise: np.ndarray  # (columns, columns)

    def true_values(self, features: np.ndarray) -> np.ndarray:
        """(n, columns): the surrogate's mean value of each recipe at each report point and at its end."""
        return np.stack([model.predict(features) for model in self.models], axis=1)


def fit_surrogate(pool: Pool, config: Config, name: str) -> Surrogate:
    features = np.stack([encode(params, config) for params in pool.params])
    models = [SURROGATES[name]().fit(features, pool.values[:, column]) for column in range(pool.values.shape[1])]
    return Surrogate(name, models, run_noise(pool))


# A simulated study --------------------------------------------------------------------------------------------------


# The study.* settings a pairing may set for itself
PAIRING_SETTINGS = ("sampler_startup_trials", "pruner_startup_trials", "pruner_warmup_steps")


@dataclass(frozen=True)
class Pairing:
    """A sampler and a pruner, with study settings of their own (the rest are config.yaml's): `tpe+median` or
    `tpe+median:pruner_warmup_steps=1:pruner_startup_trials=5`."""

    sampler: str
    pruner: str
    settings: tuple[tuple[str, int], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.sampler}+{self.pruner}" + "".join(f":{key}={value}" for key, value in self.settings)

    @classmethod
    def parse(cls, text: str) -> "Pairing":
        head, *assignments = text.split(":")
        sampler, _, pruner = head.partition("+")
        if sampler not in SAMPLERS or pruner not in PRUNERS:
            raise ConfigError(
                f"--pairings {text!r}: expected SAMPLER+PRUNER[:SETTING=N...], samplers {', '.join(SAMPLERS)}, "
                f"pruners {', '.join(PRUNERS)}"
            )
        settings = []
        for assignment in assignments:
            key, _, value = assignment.partition("=")
            if key not in PAIRING_SETTINGS or not value.isdigit():
                raise ConfigError(
                    f"--pairings {text!r}: {assignment!r} is not SETTING=N with N >= 0 and SETTING one of "
                    f"{', '.join(PAIRING_SETTINGS)}"
                )
            settings.append((key, int(value)))
        return cls(sampler, pruner, tuple(settings))

    def study(self, config: Config) -> StudyConfig:
        """config.yaml's study settings with this pairing's own."""
        return dataclasses.replace(config.study, sampler=self.sampler, pruner=self.pruner, **dict(self.settings))


def simulate(config: Config, surrogate: Surrogate, pairing: Pairing, repeat: int, trials: int) -> list[dict]:
    """One study of `trials` trials over the surrogate: each trial's cost (budgets), state, observed and true end
    value. config.yaml's recipe runs first, as in a study."""
    rng = np.random.default_rng([repeat, 29])
    settings = pairing.study(config)
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(settings, repeat), pruner=make_pruner(settings)
    )
    study.enqueue_trial(base_params(config))
    points = config.train.report_points
    records = []

    def objective(trial: optuna.Trial) -> float:
        suggest(trial, config)
        true = surrogate.true_values(encode(trial.params, config)[None])[0]
        observed = true + rng.multivariate_normal(np.zeros(len(true)), surrogate.noise)
        record = {"cost": 1.0, "state": "complete", "observed": float(observed[-1]), "true": float(true[-1])}
        records.append(record)
        for index in range(len(points)):
            trial.report(float(observed[index]), index)
            if trial.should_prune():
                record.update(cost=points[index], state="pruned", observed=None)
                raise optuna.TrialPruned()
        return float(observed[-1])

    study.optimize(objective, n_trials=trials)
    return records


def pick(records: list[dict], count: int) -> dict | None:
    """The completed trial a study of the first `count` trials would export: the best observed value."""
    completed = [record for record in records[:count] if record["state"] == "complete"]
    return max(completed, key=lambda record: record["observed"]) if completed else None


def confirmed_pick(records: list[dict], count: int, noise_sd: float, rng: np.random.Generator) -> dict | None:
    """The winner's-curse remedy: the top CONFIRM_TOP completed trials re-run on CONFIRM_SEEDS fresh seeds each,
    the best mean taken."""
    completed = sorted(
        (record for record in records[:count] if record["state"] == "complete"), key=lambda r: -r["observed"]
    )[:CONFIRM_TOP]
    if not completed:
        return None
    means = [record["true"] + rng.normal(0, noise_sd, CONFIRM_SEEDS).mean() for record in completed]
    return completed[int(np.argmax(means))]


# Replays, cached ----------------------------------------------------------------------------------------------------


def replay_key(pool: Pool, config: Config, surrogate: str, pairing: Pairing, repeat: int, trials: int) -> str:
    """A digest of everything that shapes one replay: the runs the surrogate is fitted on, the space, the study's
    sampler and pruner settings, the surrogate, the pairing, the repeat and the trials."""
    material = {
        "pool": pool.digest(),
        "space": repr(config.search_space),
        "report_points": config.train.report_points,
        "study": repr(config.study),
        "surrogate": surrogate,
        "pairing": pairing.name,
        "repeat": repeat,
        "trials": trials,
        "optuna": optuna.__version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def replay_job(job: tuple) -> tuple[str, list[dict]]:
    """One (pairing, repeat) in a worker process: simulate and cache it."""
    config, surrogate, pairing, repeat, trials, path = job
    records = simulate(config, surrogate, pairing, repeat, trials)
    path.write_text(json.dumps(records))
    return pairing.name, records


def replay_all(
    config: Config,
    surrogate: Surrogate,
    pool: Pool,
    pairings: list[Pairing],
    repeats: int,
    trials: int,
    work: Path,
    jobs: int,
) -> dict[str, list[list[dict]]]:
    """Every pairing's repeats, read back where cached, the rest run `jobs` at a time (a progress line each)."""
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, list[dict]]] = {pairing.name: {} for pairing in pairings}
    pending = []
    for pairing in pairings:
        for repeat in range(repeats):
            key = replay_key(pool, config, surrogate.name, pairing, repeat, trials)
            path = work / f"{pairing.name.replace(':', '-')}_{repeat}_{key}.json"
            if path.exists():
                results[pairing.name][repeat] = json.loads(path.read_text())
            else:
                pending.append((config, surrogate, pairing, repeat, trials, path))
    print(f"{sum(map(len, results.values()))} replays read back; {len(pending)} to run, {jobs} at a time", flush=True)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for done, ((name, records), job) in enumerate(zip(pool.map(replay_job, pending), pending, strict=True), 1):
            results[name][job[3]] = records
            if done % 10 == 0 or done == len(pending):
                print(f"  {done} of {len(pending)} replays run", flush=True)
    return {name: [by_repeat[index] for index in sorted(by_repeat)] for name, by_repeat in results.items()}


# What the replays show ----------------------------------------------------------------------------------------------


def space_best(config: Config, surrogate: Surrogate, pool: Pool) -> float:
    """The best true end value in the space: the surrogate's maximum over a dense Sobol sample of it (through the
    space's own suggest calls) and the pool's recipes."""
    study = optuna.create_study(sampler=optuna.samplers.QMCSampler(seed=0, warn_independent_sampling=False))
    recipes = list(pool.params)
    for _ in range(SPACE_SAMPLE):
        trial = study.ask()
        suggest(trial, config)
        study.tell(trial, 0.0)
        recipes.append(trial.params)
    return float(surrogate.true_values(np.stack([encode(params, config) for params in recipes]))[:, -1].max())


def regrets(replays: list[list[dict]], count: int, best: float) -> np.ndarray:
    """(repeats,): the regret of each repeat's pick after its first `count` trials."""
    return np.array([best - pick(records, count)["true"] for records in replays])


def compute_curve(replays: list[list[dict]], best: float, grid: np.ndarray) -> np.ndarray:
    """(repeats, grid): each repeat's regret once it has spent each amount of compute (nan before its first
    completed trial)."""
    curves = np.full((len(replays), len(grid)), np.nan)
    for row, records in enumerate(replays):
        spent = np.cumsum([record["cost"] for record in records])
        for column, budget in enumerate(grid):
            count = int(np.searchsorted(spent, budget + 1e-9, side="right"))
            chosen = pick(records, count)
            if chosen is not None:
                curves[row, column] = best - chosen["true"]
    return curves


def mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean over repeats (axis 0) and the half-width of its t-based 95% interval."""
    count = np.sum(~np.isnan(values), axis=0)
    mean = np.nanmean(values, axis=0)
    spread = np.nanstd(values, axis=0, ddof=1) / np.sqrt(count)
    return mean, stats.t.ppf(0.975, np.maximum(count - 1, 1)) * spread


def probability_lower(first: np.ndarray, second: np.ndarray, resamples: int = 2000) -> tuple[float, float, float]:
    """P(a repeat of the first has lower regret than one of the second), ties half, over all pairs of repeats; with
    a percentile bootstrap 95% interval over both sets of repeats (50 each: well past the few-seed regime)."""

    def share(a: np.ndarray, b: np.ndarray) -> float:
        below = (a[:, None] < b[None, :]).mean()
        return float(below + 0.5 * (a[:, None] == b[None, :]).mean())

    rng = np.random.default_rng(0)
    draws = [share(rng.choice(first, len(first)), rng.choice(second, len(second))) for _ in range(resamples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return share(first, second), float(low), float(high)


def confirmed_regrets(replays: list[list[dict]], count: int, best: float, noise_sd: float) -> np.ndarray:
    rng = np.random.default_rng([count, 3])
    return np.array([best - confirmed_pick(records, count, noise_sd, rng)["true"] for records in replays])


def summarise(
    replays: dict[str, list[list[dict]]], best: float, baseline: float, noise_sd: float, trials: int
) -> dict[str, Any]:
    """Per pairing: regret at each checkpoint (mean, 95% half-width), P(beats random search) and P(beats config.yaml's
    recipe) there, the compute to reach random search's 50-trial regret, and the winner's curse at each checkpoint."""
    checkpoints = [count for count in CHECKPOINTS if count <= trials]
    grid = np.arange(1, trials + 1, dtype=float)
    reference = replays.get(REFERENCE)
    target = None
    if reference is not None and 50 <= trials:
        target = float(mean_band(regrets(reference, 50, best)[:, None])[0][0])
    summary = {}
    for name, runs in replays.items():
        mean, half = mean_band(compute_curve(runs, best, grid))
        reached = np.flatnonzero(mean <= target) if target is not None else np.array([])
        rows = {}
        for count in checkpoints:
            mine = regrets(runs, count, best)
            confirmed = confirmed_regrets(runs, count, best, noise_sd)
            rows[count] = {
                "regret": float(mine.mean()),
                "regret_half_width": float(mean_band(mine[:, None])[1][0]),
                "beats_random": probability_lower(mine, regrets(reference, count, best)) if reference else None,
                "beats_baseline": float(np.mean(best - mine > baseline + 1e-9)),
                "confirmed_regret": float(confirmed.mean()),
                "confirmed_better": float(np.mean(confirmed < mine) + 0.5 * np.mean(confirmed == mine)),
            }
        summary[name] = {
            "checkpoints": rows,
            "curve": {"compute": grid.tolist(), "mean": mean.tolist(), "half_width": half.tolist()},
            "compute_to_random_50": float(grid[reached[0]]) if len(reached) else None,
            "pruned_share": float(np.mean([record["state"] == "pruned" for records in runs for record in records])),
        }
    return {"target_regret": target, "best": best, "baseline": baseline, "pairings": summary}


# Report -------------------------------------------------------------------------------------------------------------


def points(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown(fit: dict[str, Any], summary: dict[str, Any], repeats: int, trials: int) -> str:
    lines = [
        f"Pool: {fit['runs']} runs of {fit['recipes']} recipes, {fit['paired']} of them on two seeds. One run's noise "
        f"(SD, points): {', '.join(points(sd) for sd in fit['noise_sd'][:-1])} at the report points, "
        f"{points(fit['noise_sd'][-1])} at the end.",
        "",
        "Surrogates, ranking recipes they were not fitted on (grouped 5-fold CV; Spearman [95%, Fisher z] between "
        "out-of-fold predictions and observed recipe means; share of pairs ordered alike):",
        "",
        "| surrogate | Spearman | pairs alike |",
        "|---|---:|---:|",
    ]
    for name, agreement in fit["surrogates"].items():
        chosen = " (chosen)" if name == fit["chosen"] else ""
        lines.append(
            f"| {name}{chosen} | {agreement['spearman']:.2f} [{agreement['spearman_low']:.2f}, "
            f"{agreement['spearman_high']:.2f}] | {100 * agreement['pairwise']:.0f}% |"
        )
    ceiling = fit["ceiling"]
    if ceiling is not None:
        lines.append(
            f"| seed vs seed (the noise's ceiling, {fit['paired']} recipes) | {ceiling['spearman']:.2f} "
            f"[{ceiling['spearman_low']:.2f}, {ceiling['spearman_high']:.2f}] | {100 * ceiling['pairwise']:.0f}% |"
        )
    checkpoints = list(next(iter(summary["pairings"].values()))["checkpoints"])
    lines += [
        "",
        f"The space's best true gain {points(summary['best'])} points (surrogate); config.yaml's recipe "
        f"{points(summary['baseline'])} (regret {points(summary['best'] - summary['baseline'])}). {repeats} repeats "
        f"of {trials} trials per pairing; regret in points of gain, mean ± 95% half-width over repeats; P(beats "
        f"random search) over all pairs of repeats [bootstrap 95%]; P(beats config.yaml) the share of repeats whose "
        "pick is truly better than config.yaml's recipe.",
        "",
        "| pairing | pruned | "
        + " | ".join(f"regret @{count}" for count in checkpoints)
        + " | "
        + " | ".join(f"P(beats random) @{count}" for count in checkpoints)
        + " | "
        + " | ".join(f"P(beats config.yaml) @{count}" for count in checkpoints)
        + " | budgets to random's @50 |",
        "|---|---:|" + "---:|" * (3 * len(checkpoints) + 1),
    ]
    target = summary["target_regret"]
    for name, row in summary["pairings"].items():
        cells = [
            f"{points(row['checkpoints'][c]['regret'])} ± {points(row['checkpoints'][c]['regret_half_width'])}"
            for c in checkpoints
        ]
        beats = []
        for count in checkpoints:
            value = row["checkpoints"][count]["beats_random"]
            beats.append("–" if value is None else f"{value[0]:.2f} [{value[1]:.2f}, {value[2]:.2f}]")
        baseline = [f"{row['checkpoints'][count]['beats_baseline']:.2f}" for count in checkpoints]
        reach = row["compute_to_random_50"]
        speed = "–" if target is None else ("not reached" if reach is None else f"{reach:g} (x{50 / reach:.1f})")
        lines.append(
            f"| {name} | {100 * row['pruned_share']:.0f}% | " + " | ".join(cells + beats + baseline) + f" | {speed} |"
        )
    lines += [
        "",
        f"The winner's curse: regret of the best single trial against the best of the top {CONFIRM_TOP} re-run on "
        f"{CONFIRM_SEEDS} fresh seeds each ({CONFIRM_TOP * CONFIRM_SEEDS} more budgets; P(confirmed better), ties "
        "half):",
        "",
        "| pairing | "
        + " | ".join(f"@{count}: best trial / confirmed top {CONFIRM_TOP}" for count in checkpoints)
        + " |",
        "|---|" + "---:|" * len(checkpoints),
    ]
    for name, row in summary["pairings"].items():
        cells = [
            f"{points(row['checkpoints'][c]['regret'])} / {points(row['checkpoints'][c]['confirmed_regret'])} "
            f"(P {row['checkpoints'][c]['confirmed_better']:.2f})"
            for c in checkpoints
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, keep, title in (
        (axes[0], lambda name: name.endswith("+none"), "samplers, no pruning"),
        (axes[1], lambda name: not name.endswith("+none") or name == REFERENCE, "pruners"),
    ):
        for name, row in summary["pairings"].items():
            if not keep(name):
                continue
            curve = row["curve"]
            compute, mean, half = (np.array(curve[key], dtype=float) for key in ("compute", "mean", "half_width"))
            line = axis.plot(compute, 100 * mean, label=name)[0]
            axis.fill_between(compute, 100 * (mean - half), 100 * (mean + half), color=line.get_color(), alpha=0.15)
        axis.set(title=title, xlabel="compute (trial budgets)", xscale="log")
        axis.legend(fontsize=8)
    axes[0].set_ylabel("regret (points of gain), mean and 95% band")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


DEFAULT_PAIRINGS = (
    "random+none,qmc+none,tpe+none,gp+none,tpe+median,tpe+successive_halving,tpe+hyperband,gp+median,"
    "random+median,random+successive_halving,random+hyperband,"
    "tpe+median:pruner_warmup_steps=1,tpe+median:pruner_startup_trials=5"
)


def fit_report(pool: Pool, config: Config) -> dict[str, Any]:
    """Every surrogate's held-out ranking of the pool's recipes, the noise's ceiling, and the chosen one."""
    features = np.stack([encode(params, config) for params in pool.params])
    end = pool.values.shape[1] - 1
    agreements = {name: held_out_agreement(features, pool, end, make) for name, make in SURROGATES.items()}
    return {
        "runs": len(pool.recipes),
        "recipes": len(np.unique(pool.recipes)),
        "paired": len(paired_values(pool, end)[0]),
        "surrogates": agreements,
        "chosen": max(agreements, key=lambda name: agreements[name]["spearman"]),
        "ceiling": noise_ceiling(pool, end),
    }


def ranked_recipes(pool: Pool, surrogate: Surrogate, config: Config) -> list[dict[str, Any]]:
    """The pool's recipes, best surrogate mean first: its index, the surrogate's mean and its observed mean."""
    recipes, observed = recipe_means(pool, pool.values.shape[1] - 1)
    params = {recipe: pool.params[int(np.flatnonzero(pool.recipes == recipe)[0])] for recipe in recipes}
    predicted = surrogate.true_values(np.stack([encode(params[recipe], config) for recipe in recipes]))[:, -1]
    ranked = [
        {"recipe": int(recipe), "surrogate": float(mean), "observed": float(seen), "params": params[recipe]}
        for recipe, mean, seen in zip(recipes, predicted, observed, strict=True)
    ]
    return sorted(ranked, key=lambda recipe: -recipe["surrogate"])


def confirmation_check(pool: Pool, ranked: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the recipes re-run on fresh seeds (bench/search_pool.py --confirm_top) land against where the surrogate
    put them: their confirmed means ± SE, paired with the confirmed leader seed by seed, and the rank agreement."""
    confirmation = pool.confirmation_runs()
    if not len(confirmation.recipes):
        return None
    end = pool.values.shape[1] - 1
    surrogate = {recipe["recipe"]: recipe["surrogate"] for recipe in ranked}
    recipes = [recipe for recipe in surrogate if recipe in set(confirmation.recipes.tolist())]
    seeds = sorted(set.intersection(*(set(confirmation.seeds[confirmation.recipes == r].tolist()) for r in recipes)))
    table = {
        recipe: [
            confirmation.values[(confirmation.recipes == recipe) & (confirmation.seeds == seed), end][0]
            for seed in seeds
        ]
        for recipe in recipes
    }
    leader = max(table, key=lambda recipe: np.mean(table[recipe]))
    rows = []
    for recipe in recipes:
        differences = np.subtract(table[recipe], table[leader])
        rows.append(
            {
                "recipe": recipe,
                "surrogate": surrogate[recipe],
                "confirmed": mean_and_standard_error(table[recipe]),
                "difference_to_leader": (float(differences.mean()), *t_interval(list(differences)))
                if recipe != leader
                else None,
            }
        )
    agreement = rank_agreement([surrogate[r] for r in recipes], [float(np.mean(table[r])) for r in recipes])
    return {"seeds": seeds, "recipes": rows, "leader": leader, "agreement": agreement if len(recipes) >= 3 else None}


def confirmation_markdown(check: dict[str, Any]) -> str:
    lines = [
        "",
        f"The surrogate's top recipes re-run on fresh seeds ({', '.join(map(str, check['seeds']))}): confirmed gain "
        "mean ± SE over those seeds, paired difference to the confirmed leader [t-based 95%]:",
        "",
        "| recipe | surrogate | confirmed | vs confirmed leader |",
        "|---:|---:|---:|---:|",
    ]
    for row in check["recipes"]:
        mean, error = row["confirmed"]
        difference = row["difference_to_leader"]
        versus = (
            "leader"
            if difference is None
            else (f"{points(difference[0])} [{points(difference[1])}, {points(difference[2])}]")
        )
        lines.append(f"| {row['recipe']} | {points(row['surrogate'])} | {points(mean)} ± {points(error)} | {versus} |")
    if check["agreement"] is not None:
        agreement = check["agreement"]
        lines.append(
            f"\nSurrogate vs confirmed ranking of these recipes: Spearman {agreement['spearman']:.2f} "
            f"[{agreement['spearman_low']:.2f}, {agreement['spearman_high']:.2f}], {100 * agreement['pairwise']:.0f}% "
            "of pairs alike."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="bench/results/search_pool.csv", help="bench/search_pool.py's table")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="the pool's base config (its space)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as the pool was run")
    parser.add_argument(
        "--pairings",
        default=DEFAULT_PAIRINGS,
        help="SAMPLER+PRUNER[:SETTING=N...], comma-separated; SETTING: a study.* setting of "
        + ", ".join(PAIRING_SETTINGS),
    )
    parser.add_argument("--surrogate", choices=list(SURROGATES), help="default: the best held-out ranking")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--work", default="studies/bench/search_replay", help="the cached replays")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = load_config(args.config, args.set)
    pairings = [Pairing.parse(text.strip()) for text in args.pairings.split(",") if text.strip()]
    everything = load_pool(Path(args.pool), config)
    pool = everything.design_runs()  # the surrogate learns from the design alone; confirmations check it
    fit = fit_report(pool, config)
    fit["chosen"] = args.surrogate or fit["chosen"]
    surrogate = fit_surrogate(pool, config, fit["chosen"])
    fit["noise_sd"] = np.sqrt(np.diag(surrogate.noise)).tolist()
    best = space_best(config, surrogate, pool)
    baseline = float(surrogate.true_values(encode(base_params(config), config)[None])[0, -1])
    replays = replay_all(config, surrogate, pool, pairings, args.repeats, args.trials, Path(args.work), args.jobs)
    # A sampler may find a recipe past the Sobol sample's best: the best is the highest true value seen anywhere.
    best = max([best, *(record["true"] for runs in replays.values() for records in runs for record in records)])
    summary = summarise(replays, best, baseline, fit["noise_sd"][-1], args.trials)
    ranked = ranked_recipes(pool, surrogate, config)
    check = confirmation_check(everything, ranked)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    table = markdown(fit, summary, args.repeats, args.trials) + ("" if check is None else confirmation_markdown(check))
    (output / "search_replay.md").write_text(table)
    saved = {"fit": fit, "summary": summary, "recipes": ranked, "confirmation": check}
    (output / "search_replay.json").write_text(json.dumps(saved, indent=1, default=str))
    plot(summary, output / "search_replay.png")
    print(table)
    print(f"wrote {output}/search_replay.md, .json and .png")


if __name__ == "__main__":
    run_cli(main)
