"""Trials per hour of a study run with 1, 2 and 4 worker processes on one machine (several trials per GPU).

    python -m bench.trial_throughput --output DIR                 # on a GPU: the tiny model, 500k tokens a trial
    python -m bench.trial_throughput --output DIR --rehearse      # CPU, toy trials: every code path in a minute

Each run is the study command itself, `python main.py --study_name throughput_jobsN --storage
sqlite:///DIR/throughput_jobsN.db --n_trials K --n_jobs N --timeout SECONDS --set ...`, with every
setting that decides a trial's work given explicitly (model size, attention kind, sequence length,
batch, token budget, no pruning), so that config.yaml's defaults may change without changing what
is measured. Trials per hour = finished trials / (last finish - first start) x 3600, from the
study's own timestamps: worker start-up and imports are left out (the wall time beside it has
them; the corpus cache is built by the first run, in DIR/cache, before its workers start). Peer:
one worker, in the same run. Prints a markdown table and writes it to DIR/trial_throughput.md.
"""

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

PROJECT_DIR = Path(__file__).resolve().parents[1]
TINY_PRESET = {"tiny": {"hidden_size": 128, "num_layers": 2, "num_heads": 2}}


@dataclass
class Workload:
    """What one trial computes and how long each run may start new trials."""

    overrides: list[str]
    seconds: float  # --timeout: no new trial after this many seconds
    n_trials: int  # --n_trials: an upper bound the timeout normally ends first


def _flow(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip()


def workload(rehearse: bool, budget_tokens: int, seconds: float, cache_dir: Path) -> Workload:
    overrides = [
        f"search_space.model.size={_flow({'type': 'categorical', 'choices': TINY_PRESET})}",
        "search_space.model.attention_kind={type: fixed, value: standard}",
        "study.pruner=none",
        "train.objective=mlm",
        "train.budget_seconds=null",
        f"data.cache_dir={cache_dir}",
    ]
    if rehearse:
        from tests.conftest import TINY_OVERRIDES  # the test suite's tiny but real study

        overrides += [*TINY_OVERRIDES, "train.device=cpu"]
        return Workload(overrides, seconds, n_trials=4)
    overrides += ["data.seq_len=128", "train.batch_size=32", f"train.budget_tokens={budget_tokens}"]
    return Workload(overrides, seconds, n_trials=1000)


@dataclass
class Run:
    n_jobs: int
    finished: int
    span_seconds: float
    wall_seconds: float
    mean_trial_seconds: float

    @property
    def trials_per_hour(self) -> float:
        return 3600 * self.finished / self.span_seconds if self.span_seconds > 0 else 0.0


def run_study(n_jobs: int, work: Workload, output: Path) -> Run:
    """One study run with n_jobs workers; its throughput from the trials' timestamps."""
    name = f"throughput_jobs{n_jobs}"
    storage = f"sqlite:///{output / f'{name}.db'}"
    command = [sys.executable, str(PROJECT_DIR / "main.py"), "--study_name", name, "--storage", storage]
    command += ["--n_trials", str(work.n_trials), "--n_jobs", str(n_jobs), "--timeout", str(work.seconds)]
    command += [flag for override in work.overrides for flag in ("--set", override)]
    started = time.perf_counter()
    with open(output / f"{name}.log", "w") as log:
        completed = subprocess.run(command, cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:8])} ... exited {completed.returncode}; see {output / f'{name}.log'}")
    study = optuna.load_study(study_name=name, storage=storage)
    trials = [t for t in study.trials if t.state.is_finished() and t.datetime_complete is not None]
    if not trials:
        return Run(n_jobs, 0, 0.0, wall, 0.0)
    first_start = min(t.datetime_start for t in trials)
    last_finish = max(t.datetime_complete for t in trials)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    span = (last_finish - first_start).total_seconds()
    return Run(n_jobs, len(trials), span, wall, sum(durations) / len(durations))


def render(runs: list[Run], title: str) -> str:
    peer = next((run for run in runs if run.n_jobs == 1), None)
    lines = [f"### {title}", ""]
    lines += ["| workers | trials finished | span s | trials/hour | vs 1 worker | mean trial s | wall s |"]
    lines += ["|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        ratio = (
            "-" if peer is None or peer.trials_per_hour == 0 else f"{run.trials_per_hour / peer.trials_per_hour:.2f}x"
        )
        lines.append(
            f"| {run.n_jobs} | {run.finished} | {run.span_seconds:.0f} | {run.trials_per_hour:,.0f} | {ratio} "
            f"| {run.mean_trial_seconds:.1f} | {run.wall_seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for the studies, logs and the table")
    parser.add_argument("--n_jobs", type=int, nargs="+", default=[1, 2, 4], help="worker counts to compare")
    parser.add_argument("--budget_tokens", type=int, default=500_000, help="pretraining tokens per trial")
    parser.add_argument("--seconds", type=float, default=30.0, help="per run: start no new trial after this")
    parser.add_argument("--rehearse", action="store_true", help="toy trials on the CPU (--n_jobs 1 2 unless given)")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    output = arguments.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    work = workload(arguments.rehearse, arguments.budget_tokens, arguments.seconds, output / "cache")
    n_jobs = [1, 2] if arguments.rehearse and arguments.n_jobs == [1, 2, 4] else arguments.n_jobs
    title = (
        f"Trials per hour, tiny encoder, {'toy trials on the CPU' if arguments.rehearse else 'one machine'}: "
        f"a study run per worker count, new trials for {work.seconds:g} s; settings: {'; '.join(work.overrides)}"
    )
    runs = []
    for count in n_jobs:
        print(f"running {count} worker(s) ...", flush=True)
        runs.append(run_study(count, work, output))
        (output / "trial_throughput.md").write_text(render(runs, title))
    print(render(runs, title))


if __name__ == "__main__":
    main()
