"""A recorded pool of real trials for judging search strategies (issue 29): a space-filling design over the default
search space, plus config.yaml's own recipe, each recipe trained as a study trial would be and every report
point's quick value kept, so that bench/search_replay.py can replay samplers and pruners over it.

    python -m bench.search_pool --jobs 2              # 120 recipes + config.yaml's, 30 of them with a second seed
    python -m bench.search_pool --export_only         # the table and snapshot of what is done so far (any time)

Each recipe runs on the tokens its architecture (model size x attention kind) reaches in a 150-second trial on one
idle thread here: tokens per second are measured once per architecture (`--calibration_seconds` of training on
one thread) and kept with the pool, so that every run is reproducible bit for bit whatever the load, and a larger
or slower model pays for its cost as it does in a study. The masking rate's cost is not in the calibration (it is
measured at config.yaml's masking). No pruning; quick probes at train.report_points as in a study, their values kept.

The pool is an Optuna study of planned runs (hpo/planned.py, the runner of `confirm` and `compare`): resumable (run
the same command again: the design, seeds and calibration are kept in the study), parallel (--jobs), in the
dashboard. A run's parameters are its recipe's plus train.seed and train.budget_tokens. Writes
OUTPUT/search_pool.csv (one row per finished run: what the replay loads) and OUTPUT/search_pool.db (a snapshot of
the study; on a fresh clone, `--storage sqlite:///bench/results/search_pool.db` resumes from it).
"""

import argparse
import csv
import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bench.cli import run_cli
from data.corpus import load_corpus
from data.files_location import resolve_data_dir
from data.tokenizer import Tokenizer
from hpo.config import DEFAULT_CONFIG_PATH, Config, ConfigError, dimensions, load_config
from hpo.confirm import confirmation_seeds
from hpo.confirmation import SEED_PARAM, TOKENS_PARAM, confirmation_config
from hpo.inputs import check_study_inputs
from hpo.planned import run_params, run_plan
from hpo.space import apply_params, base_params, suggest
from hpo.storage import default_storage_url, load_existing_study, sqlite_database
from hpo.study import open_study
from hpo.study_values import GAIN_ERROR_ATTR, TOKENS_ATTR, objective_name, planned_run_value
from hpo.workers import thread_limits
from training.pretrain import Pretrainer, resolve_device

ARCHITECTURE_PARAMS = ("model.size", "model.attention_kind")  # what decides a step's cost
WARMUP_STEPS = 5  # steps left out of a calibration's timing (allocations, first calls)
PLAN_ATTR = "pool_plan"  # study user attr: {"recipes": [params], "seeds": [[seed, ...] per recipe]}
CALIBRATION_ATTR = "pool_tokens_per_second"  # study user attr: architecture -> tokens/s on one idle thread


def pool_config(base: Config) -> Config:
    """The pool's configuration: a confirmation's (token budgets, seed and tokens as parameters, no pruning, no
    baseline trial) with the study's quick probes kept, so that a replay can prune."""
    config = confirmation_config(base)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, report_points=base.train.report_points))


def design(config: Config, count: int, seed: int) -> list[dict[str, Any]]:
    """config.yaml's own recipe, then `count` distinct recipes of the search space from a scrambled Sobol sequence
    (Optuna's QMC sampler through the space's own suggest calls: presets, log scales and conditions as a study
    samples them). The first n recipes do not depend on `count`: a larger pool extends a smaller one."""
    sampler = optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    study = optuna.create_study(sampler=sampler)
    recipes = [base_params(config)]
    while len(recipes) < count + 1:
        trial = study.ask()
        suggest(trial, config)
        study.tell(trial, 0.0)
        if trial.params not in recipes:
            recipes.append(dict(trial.params))
    return recipes


def architecture(params: dict[str, Any]) -> str:
    return ", ".join(str(params[name]) for name in ARCHITECTURE_PARAMS)


def measure_tokens_per_second(config: Config, params: dict[str, Any], data_dir: Path, seconds: float) -> float:
    """Training tokens per second of the recipe's architecture on one idle thread (config.yaml's other settings),
    after WARMUP_STEPS steps. Timed by the thread's own CPU time, which other work on the machine does not stretch
    as it stretches the wall clock: an idle thread's speed, measured on a busy machine."""
    recipe = {**base_params(config), **{name: params[name] for name in ARCHITECTURE_PARAMS}}
    run = apply_params(config, recipe)
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, budget_seconds=None, budget_tokens=10**12))
    tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
    corpus = load_corpus(data_dir, run.data, tokenizer)
    with thread_limits(1):
        trainer = Pretrainer(run, corpus, tokenizer, resolve_device("cpu"))
        for _ in range(WARMUP_STEPS):
            trainer.train_step()
        started, steps = time.thread_time(), 0
        while time.thread_time() - started < seconds or steps < 2:
            trainer.train_step()
            steps += 1
        elapsed = time.thread_time() - started
    return steps * trainer.tokens_per_step / elapsed


def calibrate(
    study: optuna.Study, config: Config, recipes: list[dict[str, Any]], data_dir: Path, seconds: float
) -> dict[str, float]:
    """Tokens per second of each architecture the recipes use, measured once and kept in the study."""
    rates = dict(study.user_attrs.get(CALIBRATION_ATTR, {}))
    for params in recipes:
        name = architecture(params)
        if name not in rates:
            rates[name] = measure_tokens_per_second(config, params, data_dir, seconds)
            print(f"calibration: {name}: {rates[name]:,.0f} tokens/s on one thread", flush=True)
            study.set_user_attr(CALIBRATION_ATTR, rates)
    return rates


def trial_tokens(rate: float, seconds: float, config: Config) -> int:
    """The tokens a trial of `seconds` reaches at `rate`, in whole steps."""
    tokens_per_step = config.train.batch_size * config.data.seq_len
    return max(1, round(rate * seconds / tokens_per_step)) * tokens_per_step


def pool_plan(
    study: optuna.Study,
    config: Config,
    recipes: int,
    second_seed: int,
    design_seed: int,
    trial_seconds: float,
    confirm: tuple[int, ...] = (),
    confirm_seeds: int = 0,
) -> dict:
    """The recorded plan, extended to `recipes` design points and to a second seed for config.yaml's recipe and the
    first `second_seed` design points, and the recipes `confirm` (indices) to `confirm_seeds` fresh seeds past the
    pool's two (a confirmation of the replay's top recipes); a plan only grows (what ran stays planned), on the
    trial length it began with."""
    recorded = study.user_attrs.get(PLAN_ATTR, {"recipes": [], "seeds": [], "trial_seconds": trial_seconds})
    designed = design(config, max(recipes, len(recorded["recipes"]) - 1), design_seed)
    if designed[: len(recorded["recipes"])] != recorded["recipes"] or recorded["trial_seconds"] != trial_seconds:
        raise ConfigError(
            f"study {study.study_name!r} holds another pool (its design, search space or --trial_seconds "
            f"{recorded['trial_seconds']:g} differ); use a new --study_name or --storage"
        )
    seed = config.train.seed
    seeds = []
    for index in range(len(designed)):
        chosen = {seed, *recorded["seeds"][index]} if index < len(recorded["seeds"]) else {seed}
        if index <= second_seed:
            chosen.add(seed + 1)
        if index in confirm:
            chosen |= set(confirmation_seeds(seed + 1, confirm_seeds))
        seeds.append(sorted(chosen))
    plan = {"recipes": designed, "seeds": seeds, "trial_seconds": trial_seconds}
    study.set_user_attr(PLAN_ATTR, plan)
    return plan


def planned_runs(plan: dict, rates: dict[str, float], config: Config) -> list[dict[str, Any]]:
    """Every run's parameters, seed by seed (the first seed of every recipe before any second one)."""
    runs = []
    for seed in sorted({seed for seeds in plan["seeds"] for seed in seeds}):
        for recipe, seeds in zip(plan["recipes"], plan["seeds"], strict=True):
            if seed in seeds:
                tokens = trial_tokens(rates[architecture(recipe)], plan["trial_seconds"], config)
                runs.append({**recipe, SEED_PARAM: seed, TOKENS_PARAM: tokens})
    return runs


def top_recipes(replay: Path, count: int) -> tuple[int, ...]:
    """The indices of the `count` pool recipes the replay's surrogate ranks highest (bench/search_replay.py)."""
    if not replay.exists():
        raise ConfigError(f"--confirm_top needs the replay's {replay}: run `python -m bench.search_replay` first")
    ranked = json.loads(replay.read_text())["recipes"]  # best surrogate mean first
    return tuple(recipe["recipe"] for recipe in ranked[:count])


# The pool as a table ---------------------------------------------------------------------------------------------

RUN_COLUMNS = ("run", "recipe", "seed", "tokens", "state")
RESULT_ATTRS = (
    "probe_accuracy",
    "random_init_accuracy",
    GAIN_ERROR_ATTR,
    "validation_loss",
    "train_loss",
    "tokens_per_second",
    "wall_seconds",
)


def table_rows(study: optuna.Study, config: Config) -> list[dict[str, Any]]:
    """One row per finished run (complete, or pruned: a run that went non-finite, valued as a confirmation values
    it), in run order: its recipe's index in the design (0: config.yaml's), seed, tokens, parameters, value, the
    quick values at each report point (as the study reported them) and what the trial recorded beside."""
    recipes = study.user_attrs[PLAN_ATTR]["recipes"]
    names = [name for name, *_ in dimensions(config)]
    points = len(config.train.report_points)
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        params = run_params(trial)
        recipe = {name: value for name, value in params.items() if name not in (SEED_PARAM, TOKENS_PARAM)}
        row = {
            "run": trial.number,
            "recipe": recipes.index(recipe) if recipe in recipes else "",
            "seed": params[SEED_PARAM],
            "tokens": trial.user_attrs.get(TOKENS_ATTR, params[TOKENS_PARAM]),
            "state": trial.state.name.lower(),
            **{name: params.get(name, "") for name in names},
            "value": planned_run_value(trial, objective_name(study)),
            **{f"quick_{index}": trial.intermediate_values.get(index, "") for index in range(points)},
            **{name: trial.user_attrs.get(name, "") for name in RESULT_ATTRS},
        }
        rows.append(row)
    return rows


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else list(RUN_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def snapshot(storage_url: str, path: Path) -> bool:
    """A consistent copy of a SQLite study file (SQLite's online backup: safe while workers write); False for
    another database."""
    database = sqlite_database(storage_url)
    if database is None or database.resolve() == path.resolve():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(database) as source, sqlite3.connect(path) as target:
        source.backup(target)
    return True


def export(study: optuna.Study, storage_url: str, config: Config, output: Path) -> None:
    rows = table_rows(study, config)
    write_table(rows, output / "search_pool.csv")
    copied = snapshot(storage_url, output / "search_pool.db")
    planned = sum(len(seeds) for seeds in study.user_attrs[PLAN_ATTR]["seeds"])
    unstable = sum(row["state"] == "pruned" for row in rows)
    print(
        f"{len(rows)} of {planned} runs finished ({unstable} non-finite) -> {output / 'search_pool.csv'}"
        + (f" and {output / 'search_pool.db'}" if copied else ""),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study_name", default="search_pool")
    parser.add_argument("--storage", help="default: studies/STUDY_NAME.db")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="the base config (its search space)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--recipes", type=int, default=120, help="design points, besides config.yaml's recipe")
    parser.add_argument("--second_seed", type=int, default=30, help="design points run with a second seed too")
    parser.add_argument("--design_seed", type=int, default=0, help="the Sobol sequence's scrambling seed")
    parser.add_argument("--calibration_seconds", type=float, default=30.0, help="of training per architecture")
    parser.add_argument(
        "--trial_seconds", type=float, default=150.0, help="the trial a run stands for (config.yaml's budget_seconds)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each on a CPU)")
    parser.add_argument("--data_dir")
    parser.add_argument("--output", default="bench/results", help="folder for search_pool.csv and .db")
    parser.add_argument("--export_only", action="store_true", help="write the table and snapshot, run nothing")
    parser.add_argument(
        "--confirm_top",
        type=int,
        default=0,
        help="re-run the replay's top recipes by surrogate mean (OUTPUT/search_replay.json) on fresh seeds",
    )
    parser.add_argument("--confirm_seeds", type=int, default=3, help="fresh seeds per confirmed recipe")
    args = parser.parse_args()
    storage = args.storage or default_storage_url(args.study_name)
    data_dir = resolve_data_dir(args.data_dir)
    base = load_config(args.config, args.set)
    config = pool_config(base)
    output = Path(args.output)
    if args.export_only:
        export(load_existing_study(args.study_name, storage), storage, base, output)
        return
    check_study_inputs(config, data_dir, storage)
    study = open_study(args.study_name, storage, config, seed=0)
    confirm = top_recipes(output / "search_replay.json", args.confirm_top) if args.confirm_top else ()
    plan = pool_plan(
        study, base, args.recipes, args.second_seed, args.design_seed, args.trial_seconds, confirm, args.confirm_seeds
    )
    rates = calibrate(study, base, plan["recipes"], data_dir, args.calibration_seconds)
    runs = planned_runs(plan, rates, base)
    tokens = [run[TOKENS_PARAM] for run in runs]
    what = (
        f"search pool: config.yaml's recipe and {len(plan['recipes']) - 1} of a Sobol design, {len(runs)} runs on "
        f"{min(tokens):,}-{max(tokens):,} tokens"
    )
    try:
        run_plan(study, storage, config, data_dir, args.jobs, runs, what)
    finally:
        export(optuna.load_study(study_name=args.study_name, storage=storage), storage, base, output)


if __name__ == "__main__":
    run_cli(main)
