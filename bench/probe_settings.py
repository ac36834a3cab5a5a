"""Does a cheaper probe setting keep the study's decisions? The same seeded study run twice, with the current
settings and with a candidate (`--set`), then compared trial by trial.

    python -m bench.probe_settings --set probe.quick_rows=1000 --set train.validation_sequences=128
    python -m bench.probe_settings --set probe.max_iter=100 --n_trials 6 --budget_tokens 1500000

Both runs are `main.py --n_trials N --n_jobs J --seed S` with pruning off (every trial reports at every report
point and finishes) and a token budget (so a trial's training is the same in both: only what the probe and the
validation loss compute differs). The sampler's seed gives both runs the same recipes (paired by their
parameters: which worker takes which trial number is a race). Printed
and written (OUTPUT/probe_settings.md): each trial's final value and its quick values at the report points under
both settings; per report point and for the final value, Spearman's rho between the two rankings and the share
of trial pairs they order the same way; which trials the median pruner would stop (bench/pruning_replay.py's
replay) under each; and the share of each trial's wall time outside training (the worker's own clock: from the
trial's start to its final score). Runs are resumable: the studies live in WORK/probe_settings.db and a rerun
adds only the missing trials.
"""

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from bench.pruning_replay import replay
from hpo.export import study_base_config
from hpo.statistics import rank_agreement
from hpo.study_values import TOKENS_ATTR

PROJECT_DIR = Path(__file__).resolve().parents[1]


def run_study(name: str, storage: str, arguments: argparse.Namespace, overrides: list[str]) -> None:
    command = [
        sys.executable,
        str(PROJECT_DIR / "main.py"),
        "--study_name",
        name,
        "--storage",
        storage,
        "--max_trials",
        str(arguments.n_trials),
        "--n_jobs",
        str(arguments.n_jobs),
        "--seed",
        str(arguments.seed),
        "--set",
        "study.pruner=none",
        "--set",
        "train.budget_seconds=null",
        "--set",
        f"train.budget_tokens={arguments.budget_tokens}",
    ]
    for override in overrides:
        command += ["--set", override]
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=PROJECT_DIR, check=True)


def completed(name: str, storage: str) -> list[FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda trial: trial.number)


def outside_share(trial: FrozenTrial) -> float:
    """1 - training seconds / the trial's wall seconds (record_training's attributes)."""
    attrs = trial.user_attrs
    training = attrs[TOKENS_ATTR] / attrs["tokens_per_second"]
    return 1.0 - training / attrs["wall_seconds"]


def agreement(first: list[float], second: list[float]) -> str:
    figures = rank_agreement(first, second)
    return (
        f"Spearman {figures['spearman']:+.2f} [{figures['spearman_low']:+.2f}, {figures['spearman_high']:+.2f}], "
        f"pairs ordered alike {100 * figures['pairwise']:.0f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", required=True, metavar="KEY=VALUE", help="the candidate setting")
    parser.add_argument("--n_trials", type=int, default=6)
    parser.add_argument("--n_jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget_tokens", type=int, default=1_500_000)
    parser.add_argument("--work", default="studies/bench/probe_settings")
    parser.add_argument("--output", default="bench/results")
    arguments = parser.parse_args()

    work = PROJECT_DIR / arguments.work
    work.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{work / 'probe_settings.db'}"
    material = f"{arguments.seed}:{arguments.budget_tokens}:{arguments.n_trials}"
    tag = hashlib.sha256(material.encode()).hexdigest()[:8]
    candidate_tag = hashlib.sha256((material + "|" + "|".join(arguments.set)).encode()).hexdigest()[:8]
    names = {"current": f"current-{tag}", "candidate": f"candidate-{candidate_tag}"}
    run_study(names["current"], storage, arguments, [])
    run_study(names["candidate"], storage, arguments, arguments.set)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    current, candidate = (completed(names[key], storage) for key in ("current", "candidate"))
    # The seeded workers draw the same recipes in both runs, but which worker takes which trial number is a race:
    # trials are paired by their parameters.
    by_params = {json.dumps(trial.params, sort_keys=True): trial for trial in candidate}
    pairs = [
        (trial, by_params[key]) for trial in current if (key := json.dumps(trial.params, sort_keys=True)) in by_params
    ]
    if len(pairs) < 3:
        raise SystemExit(f"{len(pairs)} trials completed in both runs; need 3")
    config = study_base_config(optuna.load_study(study_name=names["current"], storage=storage))
    report_points = sorted(config.train.report_points)

    lines = [
        f"Candidate: {' '.join(arguments.set)}; {len(pairs)} trials, --seed {arguments.seed}, "
        f"{arguments.budget_tokens:,} tokens each, pruning off.",
        "",
        "| trial | recipe | final, current | final, candidate | "
        + " | ".join(f"quick @{point:g}, current / candidate" for point in report_points)
        + " | outside training, current / candidate |",
        "|---:|---|---:|---:|" + "---:|" * len(report_points) + "---:|",
    ]
    for first, second in pairs:
        keys = ("model.attention_kind", "model.size", "masking.strategy")
        recipe = " ".join(str(first.params[key]) for key in keys if key in first.params)
        recipe += "" if first.number == second.number else f" (candidate's trial {second.number})"
        quick = [
            f"{100 * first.intermediate_values[index]:+.2f} / {100 * second.intermediate_values[index]:+.2f}"
            for index in range(len(report_points))
        ]
        lines.append(
            f"| {first.number} | {recipe} | {100 * first.value:+.2f} | {100 * second.value:+.2f} | "
            + " | ".join(quick)
            + f" | {100 * outside_share(first):.1f}% / {100 * outside_share(second):.1f}% |"
        )
    lines.append("")
    identical = all(first.value == second.value for first, second in pairs)
    lines.append(
        f"- final values: {agreement([t.value for t, _ in pairs], [t.value for _, t in pairs])}"
        + ("; identical bit for bit" if identical else "")
    )
    for index, point in enumerate(report_points):
        first_values = [first.intermediate_values[index] for first, _ in pairs]
        second_values = [second.intermediate_values[index] for _, second in pairs]
        lines.append(f"- quick values at report point {point:g}: {agreement(first_values, second_values)}")
    for label, trials in (("current", [t for t, _ in pairs]), ("candidate", [t for _, t in pairs])):
        # Replayed in the current run's order in both, so that only the scores differ.
        result = replay(trials, "median", config.study, report_points)
        numbers = {second.number: first.number for first, second in pairs} if label == "candidate" else {}
        pruned = [numbers.get(number, number) for number in result.pruned]
        false_prunes = [numbers.get(number, number) for number in result.false_prunes]
        lines.append(
            f"- median pruner replayed (current's trial numbers), {label}: prunes trials {pruned or 'none'} "
            f"(false prunes {false_prunes or 'none'}), budget saved {100 * result.budget_saved:.0f}%"
        )
    losses = [[trial.user_attrs["validation_loss"] for trial in side] for side in zip(*pairs, strict=True)]
    lines.append(f"- validation losses: {agreement(*losses)}")
    for label, trials in (("current", [t for t, _ in pairs]), ("candidate", [t for _, t in pairs])):
        shares = [outside_share(trial) for trial in trials]
        walls = [trial.user_attrs["wall_seconds"] for trial in trials]
        lines.append(
            f"- outside training, {label}: {100 * np.mean(shares):.1f}% of a trial's wall time on average "
            f"(first trial of each worker included; {np.mean(walls):.0f} s a trial)"
        )
    text = "\n".join(lines)
    print(text)
    output = PROJECT_DIR / arguments.output
    output.mkdir(parents=True, exist_ok=True)
    (output / "probe_settings.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
