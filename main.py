"""Command line: run a study of pretraining recipes (the default command)."""

import argparse
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
COMMANDS = ("study",)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Hyperparameter study of BERT-style pretraining recipes, scored by an AG News linear probe."
    )
    parser.add_argument("command", choices=COMMANDS, help="what to do (default: study)")
    parser.add_argument("--study_name", required=True, help="name of the study (and of studies/<name>.db)")
    parser.add_argument("--n_trials", type=int, default=10, help="trials to add in this run (default 10)")
    parser.add_argument("--n_jobs", type=int, default=1, help="worker processes sharing the study (default 1)")
    parser.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///studies/<study_name>.db)")
    parser.add_argument("--config", default=str(PROJECT_DIR / "config.yaml"), help="config file (default config.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.budget_tokens=200000 (repeatable)",
    )
    parser.add_argument(
        "--data-dir", dest="data_dir", help="data folder (default: $HPO_DATA_DIR, else the bundled data)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    if not argv or argv[0] not in COMMANDS:
        argv = ["study", *argv]
    args = parser.parse_args(argv)
    if args.n_trials < 1 or args.n_jobs < 1:
        parser.error(f"--n_trials ({args.n_trials}) and --n_jobs ({args.n_jobs}) must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from data.files_location import resolve_data_dir
    from hpo.config import ConfigError, load_config
    from hpo.study import default_storage_url, run_study

    try:
        config = load_config(args.config, args.overrides)
        data_dir = resolve_data_dir(args.data_dir)
        storage = args.storage or default_storage_url(args.study_name)
        study = run_study(args.study_name, storage, config, data_dir, args.n_trials, args.n_jobs, args.seed)
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are saved; run the same command to resume", file=sys.stderr)
        return 130
    completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if not completed:
        print("no completed trial yet")
        return 0
    best = study.best_trial
    print(f"best trial {best.number}: accuracy {best.value:.4f} ± {best.user_attrs.get('probe_standard_error', 0):.4f}")
    for name, value in best.params.items():
        print(f"  {name} = {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
