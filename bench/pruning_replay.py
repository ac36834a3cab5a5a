"""How good are the pruner's decisions? Replay them on a study that ran without pruning.

    python main.py --study_name unpruned --n_trials 16 --n_jobs 2 --set study.pruner=none
    python -m bench.pruning_replay --study_name unpruned [--pruner median --pruner hyperband]
        [--warmup_steps 0 --warmup_steps 1]    # (one command)

Every trial of such a study ran to its end and reported its quick score at every report point, so
the final value of each trial the pruner would have stopped is known. The trials are replayed in
their order, one at a time, into an in-memory study with the pruner (as a study with one worker
would have seen them): at each report point the trial reports its quick score and asks the pruner.
A pruned trial enters the replay as pruned, with the scores it had reported.

Printed per pruner: how many trials it prunes, the false prunes (pruned trials whose final value
lies in the top half of all trials), whether the best trial survives, how far the best trial it let
finish falls short of the best of all (compare with a value's standard error), and the share of training
budget saved (a trial pruned at report point r, at fraction f of its budget, saves 1 - f of it).
"""

import argparse
import warnings
from dataclasses import dataclass, replace

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from bench.cli import run_cli
from hpo.export import study_base_config
from hpo.sampling import PRUNERS
from hpo.storage import default_storage_url, load_existing_study

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class Replay:
    pruner: str
    trials: int
    pruned: list[int]  # trial numbers
    false_prunes: list[int]
    best_pruned: bool
    regret: float  # best final value of all trials minus the best of those the pruner let finish
    budget_saved: float  # share of the summed training budgets


def replay(trials: list[FrozenTrial], pruner_name: str, study_config, report_points: list[float]) -> Replay:
    """Replay `trials` (complete, with intermediate values at report points 0, 1, ...) under a pruner."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A fixed name: Hyperband assigns trials to brackets by a hash of the study's name and the trial number.
    study = optuna.create_study(
        study_name=f"replay-{pruner_name}", direction="maximize", pruner=PRUNERS[pruner_name](study_config)
    )
    values = np.array([trial.value for trial in trials])
    top_half = values >= np.median(values)
    best = int(np.argmax(values))
    pruned, saved = [], 0.0
    for index, trial in enumerate(trials):
        study.enqueue_trial(trial.params)
        live = study.ask(trial.distributions)
        for report_index in sorted(trial.intermediate_values):
            live.report(trial.intermediate_values[report_index], report_index)
            if live.should_prune():
                pruned.append(index)
                saved += 1.0 - report_points[min(report_index, len(report_points) - 1)]
                study.tell(live, state=TrialState.PRUNED)
                break
        else:
            study.tell(live, trial.value)
    return Replay(
        pruner=pruner_name,
        trials=len(trials),
        pruned=[trials[i].number for i in pruned],
        false_prunes=[trials[i].number for i in pruned if top_half[i]],
        best_pruned=best in pruned,
        regret=float(values.max() - max(v for i, v in enumerate(values) if i not in pruned)),
        budget_saved=saved / len(trials),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study_name", required=True, help="a study run with --set study.pruner=none")
    parser.add_argument("--storage")
    parser.add_argument("--pruner", action="append", choices=sorted(PRUNERS), help="default: the study's own")
    parser.add_argument(
        "--warmup_steps",
        action="append",
        type=int,
        help="report points the median pruner never prunes at (study.pruner_warmup_steps); default: the study's own",
    )
    arguments = parser.parse_args()
    study = load_existing_study(arguments.study_name, arguments.storage or default_storage_url(arguments.study_name))
    config = study_base_config(study)
    trials = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.intermediate_values]
    incomplete = len(study.trials) - len(trials)
    if len(trials) < 4:
        raise SystemExit(f"study {arguments.study_name!r} has {len(trials)} completed trials with reports; need 4")
    pruners = arguments.pruner or [config.study.pruner if config.study.pruner != "none" else "median"]
    print(
        f"study {arguments.study_name!r}: {len(trials)} completed trials replayed in order"
        + (f" ({incomplete} others left out)" if incomplete else "")
        + f"; report points {config.train.report_points}"
    )
    print(
        "| pruner | warm-up | trials | pruned | false prunes (final value in the top half) "
        "| best trial pruned | best finished trial's shortfall | budget saved |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for name in pruners:
        warmups = arguments.warmup_steps if name == "median" and arguments.warmup_steps else [None]
        for warmup in warmups:
            study_config = config.study if warmup is None else replace(config.study, pruner_warmup_steps=warmup)
            result = replay(trials, name, study_config, sorted(config.train.report_points))
            false_share = f"{len(result.false_prunes)} of {len(result.pruned)}" if result.pruned else "0"
            best = "yes" if result.best_pruned else "no"
            shown_warmup = study_config.pruner_warmup_steps if name == "median" else "-"
            print(
                f"| {name} | {shown_warmup} | {result.trials} | {len(result.pruned)} {result.pruned} | {false_share} "
                f"{result.false_prunes or ''} | {best} | {result.regret:.4f} | {100 * result.budget_saved:.0f}% |"
            )


if __name__ == "__main__":
    run_cli(main)
