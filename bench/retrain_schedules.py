"""Which LR schedule (and peak LR) should a full-length retrain use? The default recipe retrained under each
schedule, and each peak LR asked for, at several token budgets from paired seeds, each run beside its own
random-init encoder.

    python -m bench.retrain_schedules           # inherit, cosine, wsd at 3M and 10M tokens, seeds 0 and 1
    python -m bench.retrain_schedules --tokens 3e6 --seeds 0 --jobs 1       # a quicker look
    python -m bench.retrain_schedules --config studies/demo/best_config.yaml
    python -m bench.retrain_schedules --schedules inherit --learning_rates 2e-3,1.3333e-3 --tokens 24e6 --seeds 1,2

Each run is `python main.py retrain` as a user runs it (one torch thread each, `--jobs` at a time), with
`--set retrain.schedule=S --set train.seed=N --budget_tokens T` (and `--set train.learning_rate=LR` for a peak
LR other than the config's, which moves the token table's LR with it through embedding_lr_multiplier); runs go
to WORK/<schedule>_<tokens>_<seed>/ (WORK/<schedule>_lr<LR>_<tokens>_<seed>/ for another LR) and a finished
run (its results.yaml) is not run again, so an interrupted benchmark resumes where it stopped. Every
arm (schedule x peak LR) runs the same seeds, hence the same initial weights and data order: the table gives
each arm's mean gain and its paired difference to the first arm, seed by seed, beside the constant-LR learning
curve of the same recipe (bench/results/learning_curve.json) at the same tokens.
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
    learning_rate: float | None = None  # None: the config's

    @property
    def arm(self) -> str:
        return arm_name(self.schedule, self.learning_rate)

    @property
    def tokens(self) -> int:
        return self.result.tokens


def arm_name(schedule: str, learning_rate: float | None) -> str:
    """The table's name of a schedule at a peak LR (None: the config's own)."""
    return schedule if learning_rate is None else f"{schedule}, LR {learning_rate:g}"


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


def markdown(runs: list[Run], arms: list[str], curve: dict[int, float], seeds: list[int]) -> str:
    """One row per arm and budget; the first arm is the paired reference (arms: Run.arm, in order)."""
    lines = [
        "| arm | tokens | gains by seed (" + ", ".join(map(str, seeds)) + ") | mean gain ± SE "
        f"| paired vs {arms[0]} | test gain (mean) | validation loss (mean) | constant-LR curve, seed 0 |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for tokens in sorted({run.tokens for run in runs}):
        by_arm = {
            arm: sorted((run for run in runs if run.arm == arm and run.tokens == tokens), key=seed_of) for arm in arms
        }
        reference = {run.seed: run.result for run in by_arm[arms[0]]}
        for arm, group in by_arm.items():
            if not group:
                continue
            mean, error = mean_and_standard_error([run.result.gain for run in group])
            if arm == arms[0]:
                paired_text = "–"
            else:
                paired = [run.result.gain - reference[run.seed].gain for run in group if run.seed in reference]
                difference, difference_error = mean_and_standard_error(paired)
                paired_text = f"{points(difference)} ± {100 * difference_error:.1f}"
                paired_test = [
                    run.result.test_gain - reference[run.seed].test_gain for run in group if run.seed in reference
                ]
                test_difference, test_error = mean_and_standard_error(paired_test)
                paired_text += f" (test {points(test_difference)} ± {100 * test_error:.1f})"
            test_mean, _ = mean_and_standard_error([run.result.test_gain for run in group])
            loss, _ = mean_and_standard_error([run.result.validation_loss for run in group])
            lines.append(
                f"| {arm} | {tokens:,} | {', '.join(points(run.result.gain) for run in group)} "
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
    parser.add_argument(
        "--learning_rates",
        type=numbers(float),
        default=None,
        help="peak LRs (default: the config's; the first: reference)",
    )
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--seeds", type=numbers(int), default=",".join(map(str, SEEDS)))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--work", default="studies/bench/retrain_schedules", help="the runs' folders")
    parser.add_argument("--output", default="bench/results", help="folder for retrain_schedules.md and .json")
    args = parser.parse_args()
    schedules, seeds = args.schedules.split(","), args.seeds
    work, config = Path(args.work).resolve(), Path(args.config).resolve()
    from hpo.config import load_config

    peak = load_config(config, args.set).train.learning_rate
    rates = [None if rate == peak else rate for rate in args.learning_rates or []] or [None]
    plan = [
        (schedule, rate, seed, int(float(tokens)))
        for tokens in args.tokens.split(",")
        for seed in seeds
        for rate in rates
        for schedule in schedules
    ]
    requests = [
        RetrainRun(
            config,
            work / (f"{schedule}_{tokens}_{seed}" if rate is None else f"{schedule}_lr{rate:g}_{tokens}_{seed}"),
            tokens,
            (
                f"retrain.schedule={schedule}",
                f"train.seed={seed}",
                *args.set,
                *([f"train.learning_rate={rate!r}"] if rate is not None else []),
            ),
        )
        for schedule, rate, seed, tokens in plan
    ]
    results = retrain_all(requests, args.jobs)
    runs = [Run(schedule, seed, result, rate) for (schedule, rate, seed, _), result in zip(plan, results, strict=True)]
    curve = learning_curve_gains(PROJECT_DIR / "bench" / "results" / "learning_curve.json")
    arms = list(dict.fromkeys(arm_name(schedule, rate) for rate in rates for schedule in schedules))
    table = markdown(runs, arms, curve, seeds)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "retrain_schedules.md").write_text(table)
    saved = {
        "config": str(config),
        "overrides": args.set,
        "peak_learning_rate": peak,
        "runs": [
            {
                "schedule": run.schedule,
                "learning_rate": run.learning_rate or peak,
                "seed": run.seed,
                **asdict(run.result),
            }
            for run in runs
        ],
        "table": table,
    }
    (output / "retrain_schedules.json").write_text(json.dumps(saved, indent=1))
    print(table)
    print(f"wrote {output}/retrain_schedules.md and .json")


if __name__ == "__main__":
    run_cli(main)
