"""Command line: run a study of pretraining recipes (the default command); report, export, browse, retrain its best."""

import argparse
import signal
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if typing.TYPE_CHECKING:
    from model.shapes import Shape

PROJECT_DIR = Path(__file__).resolve().parent


def add_data_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data_dir",
        "--data-dir",  # the older spelling, kept working
        dest="data_dir",
        help="data folder (default: $HPO_DATA_DIR, else the bundled data)",
    )


def add_override_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.budget_tokens=200000 (repeatable)",
    )
    add_data_dir_flag(parser)


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n_trials",
        type=int,
        help="trials to add in this run (default 10; no count limit when --timeout or --max_trials is given)",
    )
    parser.add_argument(
        "--max_trials",
        type=int,
        metavar="N",
        help="stop once the study holds N trials: complete, pruned, failed and running ones count, queued ones "
        "do not (with --n_trials, whichever comes first)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="start no new trial SECONDS after the run started (running trials finish)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="resume a study created with different data/model/masking/train/probe settings or search space "
        "(the change is recorded in the study)",
    )
    parser.add_argument("--n_jobs", type=int, default=1, help="worker processes sharing the study (default 1)")
    parser.add_argument("--config", default=str(PROJECT_DIR / "config.yaml"), help="config file (default config.yaml)")
    add_override_flags(parser)
    parser.add_argument(
        "--seed",
        type=int,
        help="sampler seed, to repeat a run's samples (default: drawn at random, so that runs on several machines "
        "sample different recipes)",
    )


def add_export_flags(parser: argparse.ArgumentParser) -> None:
    from model.shapes import BERT_SIZES

    parser.add_argument(
        "--top_k", type=int, default=0, help="also write the K best trials to studies/<name>/top_K/rank_N.yaml"
    )
    sizes = ", ".join(f"{name} {shape}" for name, shape in BERT_SIZES.items())
    parser.add_argument(
        "--target_size",
        choices=list(BERT_SIZES),
        help=f"export at the size of the full run, one of BERT's (hidden/layers/heads): {sizes}; a study under "
        "model.parametrization=mup only (its LRs carry across width); writes best_config_NAME.yaml",
    )
    for name, what in (("hidden_size", "hidden size"), ("num_layers", "layers"), ("num_heads", "attention heads")):
        parser.add_argument(
            f"--target_{name}",
            type=int,
            metavar="N",
            help=f"the target shape's {what} (give all three, not with --target_size); writes best_config_HxLxA.yaml",
        )


def add_confirm_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top_k", type=int, default=5, help="re-run the K best recipes of the study (default 5)")
    parser.add_argument(
        "--seeds", type=int, default=3, help="train.seed values every recipe runs with (default 3: the study's + 1..3)"
    )
    parser.add_argument("--n_jobs", type=int, default=1, help="worker processes (default 1)")
    add_data_dir_flag(parser)


def add_compare_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a setting and the values to compare, e.g. --grid model.attention_kind=standard,rope (repeatable: "
        "every combination is a cell)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="runs per cell, train.seed = the config's + 0..N-1")
    parser.add_argument(
        "--budget",
        choices=("tokens", "seconds"),
        default="tokens",
        help="the comparison's currency: equal train.budget_tokens (default) or equal train.budget_seconds",
    )
    parser.add_argument("--n_jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--config", default=str(PROJECT_DIR / "config.yaml"), help="config file (default config.yaml)")
    parser.add_argument("--force", action="store_true", help="resume a comparison whose other settings changed")
    add_override_flags(parser)


def add_dashboard_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")


def add_retrain_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="an exported config, e.g. studies/NAME/best_config.yaml")
    add_override_flags(parser)
    parser.add_argument(
        "--budget_tokens", type=int, help="pretraining tokens (default: the config's retrain.budget_tokens)"
    )
    parser.add_argument(
        "--output", help="output folder (default: retrain_<config name>/ beside the config, e.g. retrain_best_config/)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in the output folder"
    )
    parser.add_argument(
        "--checkpoint_every", type=int, help="steps between checkpoints (default: retrain.checkpoint_every_steps)"
    )


def exit_code(run) -> int:
    """0, or WORKER_DIED_EXIT_CODE after a line for each worker that died (what the run lost and what became of it),
    the command's last lines; `run` is the StudyRun of the trials run, None when none was to run."""
    from hpo.study import WORKER_DIED_EXIT_CODE

    if run is None or not run.worker_deaths:
        return 0
    for death in run.worker_deaths:
        print(f"warning: {death.describe()}", file=sys.stderr)
    return WORKER_DIED_EXIT_CODE


def run_study_command(args: argparse.Namespace, storage: str) -> int:
    from data.files_location import resolve_data_dir
    from hpo.config import load_config
    from hpo.inputs import check_study_inputs
    from hpo.study import RunLimits, run_study
    from hpo.study_values import format_value, value_error, value_label

    config = load_config(args.config, args.overrides)
    data_dir = resolve_data_dir(args.data_dir)
    check_study_inputs(config, data_dir, storage)
    limits = RunLimits(args.n_trials, args.max_trials, args.timeout)
    run = run_study(args.study_name, storage, config, data_dir, limits, args.n_jobs, args.seed, args.force)
    study = run.study
    completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if not completed:
        print("no completed trial yet")
    else:
        best = study.best_trial
        value = format_value(study, best.value, value_error(study, best))
        print(f"best trial {best.number}: {value_label(study)} {value}")
        for name, value in best.params.items():
            print(f"  {name} = {value}")
    return exit_code(run)


def run_confirm_command(args: argparse.Namespace, storage: str) -> int:
    from data.files_location import resolve_data_dir
    from hpo.confirm import print_confirmation, run_confirmation

    run = run_confirmation(
        args.study_name, storage, resolve_data_dir(args.data_dir), args.top_k, args.seeds, args.n_jobs
    )
    print_confirmation(args.study_name, storage)
    return exit_code(run)


def run_compare_command(args: argparse.Namespace, storage: str) -> int:
    from data.files_location import resolve_data_dir
    from hpo.compare import comparison_lines, run_comparison
    from hpo.comparison import comparison_config, parse_grid
    from hpo.config import load_config
    from hpo.inputs import check_study_inputs

    grid = parse_grid(args.grid)
    config = comparison_config(load_config(args.config, args.overrides), grid, args.budget)
    data_dir = resolve_data_dir(args.data_dir)
    check_study_inputs(config, data_dir, storage)
    run = run_comparison(
        args.study_name, storage, config, grid, args.seeds, args.budget, data_dir, args.n_jobs, args.force
    )
    print("\n".join(comparison_lines(args.study_name, storage, config)))
    print(f"the tables, heatmap and paired tests: python main.py report --study_name {args.study_name}")
    return exit_code(run)


def run_report_command(args: argparse.Namespace, storage: str) -> int:
    from hpo.report import write_report

    print(write_report(args.study_name, storage, Path("studies") / args.study_name))
    return 0


def export_target(args: argparse.Namespace) -> "tuple[str | None, Shape | None]":
    """(name for the files or None, Shape) of the target the export flags name, or (None, None); a ValueError says
    why the flags name no shape."""
    from model.shapes import BERT_SIZES, Shape

    explicit = [args.target_hidden_size, args.target_num_layers, args.target_num_heads]
    if args.target_size is not None:
        if any(value is not None for value in explicit):
            raise ValueError("give --target_size or --target_hidden_size/num_layers/num_heads, not both")
        return args.target_size, BERT_SIZES[args.target_size]
    if all(value is None for value in explicit):
        return None, None
    if any(value is None for value in explicit):
        raise ValueError("--target_hidden_size, --target_num_layers and --target_num_heads go together: give all three")
    shape = Shape(*explicit)
    if shape.problem():
        raise ValueError(f"--target_*: {shape.problem()}")
    return None, shape


def run_export_command(args: argparse.Namespace, storage: str) -> int:
    from hpo.export import export_best

    name, target = export_target(args)
    for path in export_best(args.study_name, storage, Path("studies") / args.study_name, args.top_k, target, name):
        print(path)
    return 0


def run_status_command(args: argparse.Namespace, storage: str) -> int:
    from hpo.status import print_status

    print_status(args.study_name, storage)
    return 0


def run_dashboard_command(args: argparse.Namespace, storage: str) -> int:
    from hpo.dashboard import serve_dashboard

    serve_dashboard(args.study_name, storage, args.host, args.port)
    return 0


def retrain_output_folder(args: argparse.Namespace) -> Path:
    """--output, or retrain_<config name>/ beside the config: each exported file retrains into its own folder."""
    config_path = Path(args.config)
    return Path(args.output) if args.output else config_path.parent / f"retrain_{config_path.stem}"


def run_retrain_command(args: argparse.Namespace, storage: str | None) -> int:
    from data.files_location import resolve_data_dir
    from hpo.config import load_config
    from hpo.export import exported_trial_score
    from training.retrain import retrain

    overrides = list(args.overrides)
    if args.budget_tokens is not None:
        overrides.append(f"retrain.budget_tokens={args.budget_tokens}")
    if args.checkpoint_every is not None:
        overrides.append(f"retrain.checkpoint_every_steps={args.checkpoint_every}")
    config = load_config(args.config, overrides)
    output_dir = retrain_output_folder(args)
    retrain(config, resolve_data_dir(args.data_dir), output_dir, args.resume, exported_trial_score(config))
    return 0


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, what it does with (flags, storage URL), its own flags, whether it
    works on a study (--study_name, --storage), and what to tell a user who interrupts it."""

    help: str
    run: Callable[[argparse.Namespace, str | None], int]
    add_flags: Callable[[argparse.ArgumentParser], None] | None = None
    on_study: bool = True
    interrupted: str = "finished trials are saved; run the same command to resume"


COMMANDS = {
    "study": Command("add trials to a study (the default command)", run_study_command, add_study_flags),
    "confirm": Command(
        "re-run the study's top recipes over paired seeds (companion study <name>-confirm); export then takes the "
        "confirmed leader",
        run_confirm_command,
        add_confirm_flags,
    ),
    "compare": Command(
        "run every cell of a grid of settings from the same seeds (a study of fixed trials), with paired statistics",
        run_compare_command,
        add_compare_flags,
    ),
    "report": Command("write studies/<name>/report.html: plots, importances, statistics", run_report_command),
    "export": Command("write studies/<name>/best_config.yaml for a retrain", run_export_command, add_export_flags),
    "status": Command(
        "print where the study stands: trials by state, the best so far, running trials, time to finish",
        run_status_command,
    ),
    "dashboard": Command("browse the study in optuna-dashboard", run_dashboard_command, add_dashboard_flags),
    "retrain": Command(
        "full pretraining run of an exported config (torchrun for several GPUs), then the AG News probes",
        run_retrain_command,
        add_retrain_flags,
        on_study=False,
        interrupted="add --resume to the same command to continue from the newest checkpoint",
    ),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """A flag mistake is one line on stderr, like every other error of main.py, and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def check_study_name(name: str) -> str | None:
    """Why `name` cannot name a study (it becomes a file and a folder under studies/), or None."""
    if not name.strip():
        return "--study_name is empty"
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        return f"--study_name {name!r}: expected a plain name (no '/', '\\', '..' or leading '.') for studies/<name>"
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = OneLineErrorParser(
        description="Hyperparameter study of BERT-style pretraining recipes, scored by an AG News linear probe."
    )
    shared = OneLineErrorParser(add_help=False)
    shared.add_argument("--study_name", required=True, help="name of the study (and of studies/<name>.db)")
    shared.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///studies/<study_name>.db)")
    commands = parser.add_subparsers(dest="command", metavar="command", help="what to do (default: study)")
    for name, command in COMMANDS.items():
        parents = [shared] if command.on_study else []
        subparser = commands.add_parser(name, parents=parents, help=command.help, description=command.help)
        if command.add_flags:
            command.add_flags(subparser)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["study", *argv]
    args = parser.parse_args(argv)
    name_problem = check_study_name(args.study_name) if COMMANDS[args.command].on_study else None
    if name_problem:
        parser.error(name_problem)
    if args.command == "study":
        for flag, value in (("n_trials", args.n_trials), ("max_trials", args.max_trials), ("n_jobs", args.n_jobs)):
            if value is not None and value < 1:
                parser.error(f"--{flag} ({value}) must be at least 1")
        if args.timeout is not None and args.timeout <= 0:
            parser.error(f"--timeout ({args.timeout}) must be a positive number of seconds")
    if args.command == "dashboard" and not 0 <= args.port <= 65535:
        parser.error(f"--port ({args.port}) must be 0 (any free port) to 65535")
    if args.command == "export":
        if args.top_k < 0:
            parser.error(f"--top_k ({args.top_k}) must be 0 (best trial only) or more")
        try:
            export_target(args)
        except ValueError as error:
            parser.error(str(error))
    if args.command == "confirm":
        for flag, value in (("top_k", args.top_k), ("seeds", args.seeds), ("n_jobs", args.n_jobs)):
            if value < 1:
                parser.error(f"--{flag} ({value}) must be at least 1")
    if args.command == "compare":
        for flag, value in (("seeds", args.seeds), ("n_jobs", args.n_jobs)):
            if value < 1:
                parser.error(f"--{flag} ({value}) must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from data.files_location import DataError
    from hpo.storage import default_storage_url
    from training.config import ConfigError, one_line

    command = COMMANDS[args.command]
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A shell starts a background job (`python main.py ... &`) with SIGINT ignored, and Python keeps that:
        # `kill -INT PID` would then stop nothing. Every command here stops cleanly on it (a study passes the
        # stop on to its workers and queues their running trials again), so it is taken back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        storage = (args.storage or default_storage_url(args.study_name)) if command.on_study else None
        return command.run(args, storage)
    except (ConfigError, DataError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:  # a study's says how many trials it keeps
        print(f"interrupted: {str(interruption) or command.interrupted}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
