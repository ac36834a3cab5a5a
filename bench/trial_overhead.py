"""Where a trial's wall time goes: one trial of the study command, from the process's start to its last line,
split into phases (exclusive seconds: a phase's time minus the phases it calls).

    python -m bench.trial_overhead                          # config.yaml's recipe, its 150 s time budget
    python -m bench.trial_overhead --threads 2              # as `--n_jobs 1` runs on a 2-core machine
    python -m bench.trial_overhead --set train.budget_seconds=30 --output /tmp/overhead

One fresh study (studies in a temporary folder, the corpus cache shared), one trial, one worker in this
process (`--n_jobs 1`) with `--threads` threads (default 1: as each of the README demo's two workers runs on
a 2-core machine), the baseline recipe, pruning off so that every phase runs: start-up (imports), the input
checks, creating the study, loading the tokenizer, corpus and probe texts, the random-init probes, building
the model, the training steps, the quick probes at the report points, the validation loss, the final probe,
the study's database writes and publishing the training curve. "Outside training" is the wall time minus the
training steps' own time (the time budget counts only those). Writes OUTPUT/trial_overhead.md.
"""

import time

STARTED = time.perf_counter()  # before the imports below: start-up is part of what a user waits for

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import optuna.storages  # noqa: E402

import hpo.inputs  # noqa: E402
import hpo.study  # noqa: E402
import hpo.trial  # noqa: E402
import hpo.workers  # noqa: E402
import main  # noqa: E402
import training.curves  # noqa: E402
import training.pretrain  # noqa: E402
import training.probe  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
STORAGE_WRITES = (
    "create_new_trial",
    "set_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_study_user_attr",
    "get_all_trials",
    "get_trial",
    "record_heartbeat",
)


class PhaseTimer:
    """Exclusive seconds per phase: while a phase runs inside another, only the inner one is charged."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list] = []  # [phase, started, time charged to inner phases]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        entry = [name, time.perf_counter(), 0.0]
        self.stack.append(entry)
        try:
            yield
        finally:
            self.stack.pop()
            total = time.perf_counter() - entry[1]
            self.seconds[name] += total - entry[2]
            self.calls[name] += 1
            if self.stack:
                self.stack[-1][2] += total

    def wrap(self, owner: object, attribute: str, name: str | Callable[..., str]) -> None:
        """Charge every call of owner.attribute to the phase `name` (or name(*args) for a method)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.phase(name(*args) if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


def probe_phase(probe: training.probe.Probe, *args) -> str:
    return "probe: final (5-fold, all rows)" if len(probe.labels) > 4000 else "probe: quick (report points)"


def instrument(timer: PhaseTimer) -> None:
    timer.wrap(hpo.inputs, "check_study_inputs", "input checks (config, corpus, AG News)")
    timer.wrap(hpo.study, "open_study", "create the study")
    timer.wrap(hpo.trial.Resources, "load", "load tokenizer, corpus, probe texts")
    timer.wrap(hpo.trial, "random_init_scores", "random-init probes (outside the probes themselves)")
    timer.wrap(training.pretrain.Pretrainer, "__init__", "build the model and optimisers")
    timer.wrap(training.pretrain.Pretrainer, "train_step", "training steps")
    timer.wrap(training.pretrain.Pretrainer, "validation_loss", "validation loss")
    timer.wrap(training.probe.Probe, "score", probe_phase)
    timer.wrap(training.probe, "embed", "probe: embedding the texts")
    timer.wrap(training.curves.TrainingCurve, "after_step", "training curve (file)")
    timer.wrap(hpo.workers, "publish_trial_curve", "training curve (pictures, dashboard)")
    timer.wrap(hpo.workers, "save_study_figure", "training curve (pictures, dashboard)")
    for method in STORAGE_WRITES:
        timer.wrap(optuna.storages.RDBStorage, method, "study database reads and writes")


def main_entry() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="the trial's threads (default 1: as each of the README demo's two workers on a 2-core machine)",
    )
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    hpo.workers.usable_cpus = lambda: args.threads  # one worker: its threads are the usable CPUs
    timer = PhaseTimer()
    imports = time.perf_counter() - STARTED
    instrument(timer)
    work = Path(tempfile.mkdtemp(prefix="trial_overhead_"))
    storage = f"sqlite:///{work / 'overhead.db'}"
    flags = [flag for assignment in ["study.pruner=none", *args.set] for flag in ("--set", assignment)]
    with timer.phase("other (Python, Optuna, the worker loop)"):
        code = main.main(["--study_name", "overhead", "--storage", storage, "--n_trials", "1", "--seed", "0", *flags])
    wall = time.perf_counter() - STARTED
    assert code == 0, f"the study command exited with {code}"
    timer.seconds["start-up (imports)"] += imports
    training_seconds = timer.seconds["training steps"]
    lines = [
        f"One trial of `python main.py --n_trials 1 --n_jobs 1 {' '.join(flags)}` in a fresh study, "
        f"{args.threads} thread(s): {wall:.1f} s of "
        f"wall time, {training_seconds:.1f} s of it in training steps, {wall - training_seconds:.1f} s "
        f"({(wall - training_seconds) / wall:.0%}) outside training.",
        "",
        "| phase | calls | seconds | share of the wall time |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in sorted(timer.seconds.items(), key=lambda item: -item[1]):
        calls = timer.calls.get(name, 1)
        lines.append(f"| {name} | {calls} | {seconds:.1f} | {seconds / wall:.1%} |")
    table = "\n".join(lines) + "\n"
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "trial_overhead.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main_entry()
