"""Which LR schedule should a full-length retrain use? The default recipe retrained under each schedule at
several token budgets from paired seeds, each run beside its own random-init encoder.

    python -m bench.retrain_schedules           # inherit, cosine, wsd at 3M and 10M tokens, seeds 0 and 1
    python -m bench.retrain_schedules --tokens 3e6 --seeds 0 --jobs 1       # a quicker look
    python -m bench.retrain_schedules --config studies/demo/best_config.yaml

Each run is `python main.py retrain` as a user runs it (one torch thread each, `--jobs` at a time), with
`--set retrain.schedule=S --set train.seed=N --budget_tokens T`; runs go to WORK/<schedule>_<tokens>_<seed>/
and a finished run (its results.yaml) is not run again, so an interrupted benchmark resumes where it
stopped. Every schedule runs the same seeds, hence the same initial weights and data order: the table
gives each schedule's mean gain and its paired difference to the first schedule, seed by seed, beside
the constant-LR learning curve of the same recipe (bench/results/learning_curve.json) at the same tokens.
Writes OUTPUT/retrain_schedules.md and .json.
"""

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.cli import numbers, run_cli
from bench.retrain_runs import PROJECT_DIR, RetrainResult, RetrainRun, retrain_all
from hpo.statistics import mean_and_standard_error

SCHEDULES = ("inherit", "cosine", "wsd")
TOKENS = (3_000_000, 10_000_000)
SEEDS = (0, 1)


@dataclass(frozen=True)
class Run:
    schedule: str
    seed: int
    result: RetrainResult

    @property
    def tokens(self) -> int:
        return self.result.tokens


def learning_curve_gains(path: Path) -> dict[int, float]:
    """Planned tokens -> gain of the recorded constant-LR learning curve of the default recipe (seed 0)."""
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    curve = next((curve for curve in saved["curves"] if curve["recipe"] == "default"), None)
    if curve is None:
        return {}
    return {point["tokens"]: point["accuracy"] - curve["random_init_accuracy"] for point in curve["points"]}


def nearest_curve_point(curve: dict[int, float], tokens: int) -> str:
    """The curve's gain at the point nearest `tokens` (within 1%), in points, or a dash."""
    near = [point for point in curve if abs(point - tokens) <= 0.01 * tokens]
    return f"{100 * curve[near[0]]:+.1f} at {near[0]:,}" if near else "–"


def points(value: float) -> str:
    return f"{100 * value:+.1f}"


def markdown(runs: list[Run], schedules: list[str], curve: dict[int, float], seeds: list[int]) -> str:
    lines = [
        "| schedule | tokens | gains by seed (" + ", ".join(map(str, seeds)) + ") | mean gain ± SE "
        f"| paired vs {schedules[0]} | test gain (mean) | validation loss (mean) | constant-LR curve, seed 0 |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for tokens in sorted({run.tokens for run in runs}):
        by_schedule = {
            schedule: sorted((run for run in runs if run.schedule == schedule and run.tokens == tokens), key=seed_of)
            for schedule in schedules
        }
        reference = {run.seed: run.result.gain for run in by_schedule[schedules[0]]}
        for schedule, group in by_schedule.items():
            if not group:
                continue
            mean, error = mean_and_standard_error([run.result.gain for run in group])
            paired = [run.result.gain - reference[run.seed] for run in group if run.seed in reference]
            if schedule == schedules[0]:
                paired_text = "–"
            else:
                difference, difference_error = mean_and_standard_error(paired)
                paired_text = f"{points(difference)} ± {100 * difference_error:.1f}"
            test_mean, _ = mean_and_standard_error([run.result.test_gain for run in group])
            loss, _ = mean_and_standard_error([run.result.validation_loss for run in group])
            lines.append(
                f"| {schedule} | {tokens:,} | {', '.join(points(run.result.gain) for run in group)} "
                f"| {points(mean)} ± {100 * error:.1f} | {paired_text} | {points(test_mean)} | {loss:.3f} "
                f"| {nearest_curve_point(curve, tokens)} |"
            )
    return "\n".join(lines) + "\n"


def seed_of(run: Run) -> int:
    return run.seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(PROJECT_DIR / "config.yaml"), help="the recipe (default config.yaml)")
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="the first is the paired reference")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--seeds", type=numbers(int), default=",".join(map(str, SEEDS)))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--work", default="studies/bench/retrain_schedules", help="the runs' folders")
    parser.add_argument("--output", default="bench/results", help="folder for retrain_schedules.md and .json")
    args = parser.parse_args()
    schedules = args.schedules.split(",")
    seeds = args.seeds
    work, config = Path(args.work).resolve(), Path(args.config).resolve()
    plan = [
        (schedule, seed, int(float(tokens)))
        for tokens in args.tokens.split(",")
        for seed in seeds
        for schedule in schedules
    ]
    requests = [
        RetrainRun(
            config,
            work / f"{schedule}_{tokens}_{seed}",
            tokens,
            (f"retrain.schedule={schedule}", f"train.seed={seed}", *args.set),
        )
        for schedule, seed, tokens in plan
    ]
    results = retrain_all(requests, args.jobs)
    runs = [Run(schedule, seed, result) for (schedule, seed, _), result in zip(plan, results, strict=True)]
    curve = learning_curve_gains(PROJECT_DIR / "bench" / "results" / "learning_curve.json")
    table = markdown(runs, schedules, curve, seeds)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "retrain_schedules.md").write_text(table)
    saved = {
        "config": str(config),
        "overrides": args.set,
        "runs": [{"schedule": run.schedule, "seed": run.seed, **asdict(run.result)} for run in runs],
        "table": table,
    }
    (output / "retrain_schedules.json").write_text(json.dumps(saved, indent=1))
    print(table)
    print(f"wrote {output}/retrain_schedules.md and .json")


if __name__ == "__main__":
    run_cli(main)
