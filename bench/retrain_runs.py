"""Many `main.py retrain` runs for a benchmark: each as a user runs it, one torch thread, a few at a time, each in
its own folder; a finished run (its results.yaml) is read back instead of run again, and an interrupted one
resumes from its checkpoint, so a long benchmark can be stopped and started again. A folder keeps the key of
the run it holds (run_key.yaml: every setting that shapes its figures, its tokens): a run asked for with other
settings is refused before anything runs, never answered with the old run's numbers."""

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from hpo.config import load_config
from hpo.study import differing_keys
from training.config import ConfigError, settings_with_roles

PROJECT_DIR = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 2_000  # steps; one checkpoint kept, so an interrupted run resumes without filling the disk
KEY_FILE = "run_key.yaml"
KEY_ROLES = ("start", "train", "probe", "retrain")  # what shapes a retrain's results.yaml (not locations, cadence)


@dataclass(frozen=True)
class RetrainRun:
    """What to run: a config file, its output folder, its token budget and --set overrides."""

    config: Path
    folder: Path
    tokens: int
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrainResult:
    """The figures of a finished run (its results.yaml), the AG News scores beside its random-init encoder's."""

    tokens: int
    validation_loss: float
    accuracy: float
    random_init_accuracy: float
    test_accuracy: float
    test_random_init_accuracy: float
    train_seconds: float

    @property
    def gain(self) -> float:
        return self.accuracy - self.random_init_accuracy

    @property
    def test_gain(self) -> float:
        return self.test_accuracy - self.test_random_init_accuracy


def run_key(run: RetrainRun) -> dict:
    """What shapes a run's figures: the settings of its config with its overrides applied, and its tokens."""
    config = load_config(run.config, list(run.overrides))
    return {"tokens": run.tokens, "settings": settings_with_roles(config, KEY_ROLES)}


def check_folder(run: RetrainRun) -> None:
    """Refuse a folder that holds (or began) a run other than this one: its figures would answer the wrong
    question. A ConfigError names the folder and the first settings that differ."""
    if not any((run.folder / name).exists() for name in ("results.yaml", "checkpoints")):
        return
    key_path = run.folder / KEY_FILE
    stored = yaml.safe_load(key_path.read_text()) if key_path.exists() else None
    wanted = run_key(run)
    if stored == wanted:
        return
    if stored is None:
        what = f"no {KEY_FILE}: its settings are unknown"
    else:
        what = f"other settings ({', '.join(differing_keys(stored, wanted)[:5])} differ)"
    raise ConfigError(f"{run.folder} holds a run with {what}; move it away, or give these runs another --work")


def read_result(folder: Path) -> RetrainResult:
    results = yaml.safe_load((folder / "results.yaml").read_text())
    return RetrainResult(
        tokens=results["tokens"],
        validation_loss=results["validation_loss"],
        accuracy=results["selection_accuracy"]["accuracy"],
        random_init_accuracy=results["random_init"]["selection_accuracy"]["accuracy"],
        test_accuracy=results["test_accuracy"]["accuracy"],
        test_random_init_accuracy=results["random_init"]["test_accuracy"]["accuracy"],
        train_seconds=results["train_seconds"],
    )


def retrain_once(run: RetrainRun, progress: "Progress | None" = None) -> RetrainResult:
    """Run (or resume) one retrain unless it finished before; its output goes to FOLDER/retrain.log."""
    if not (run.folder / "results.yaml").exists():
        command = [
            sys.executable,
            str(PROJECT_DIR / "main.py"),
            "retrain",
            "--config",
            str(run.config),
            "--output",
            str(run.folder),
            "--budget_tokens",
            str(run.tokens),
            "--checkpoint_every",
            str(CHECKPOINT_EVERY),
            "--set",
            "retrain.keep_checkpoints=1",
            *[flag for assignment in run.overrides for flag in ("--set", assignment)],
        ]
        if (run.folder / "checkpoints").exists():
            command.append("--resume")
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / KEY_FILE).write_text(yaml.safe_dump(run_key(run)))
        started = time.perf_counter()
        print(f"start {run.folder.parent.name}/{run.folder.name}", flush=True)
        with open(run.folder / "retrain.log", "a") as log:
            environment = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}  # one thread; no progress bars
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment, check=True)
        seconds = time.perf_counter() - started
        left = "" if progress is None else f"; {progress.finished(run.tokens)}"
        print(f"done  {run.folder.parent.name}/{run.folder.name} in {seconds:.0f} s{left}", flush=True)
    return read_result(run.folder)


class Progress:
    """Runs and tokens done of a benchmark's runs, and the time left at the pace of the runs finished here."""

    def __init__(self, runs: list[RetrainRun], jobs: int):
        self.lock = threading.Lock()
        self.started = time.perf_counter()
        pending = [run for run in runs if not (run.folder / "results.yaml").exists()]
        self.count, self.done = len(pending), 0
        self.tokens, self.tokens_done = sum(run.tokens for run in pending), 0
        print(f"{len(runs) - len(pending)} of {len(runs)} runs finished before; {self.count} to run, {jobs} at a time")

    def finished(self, tokens: int) -> str:
        with self.lock:
            self.done += 1
            self.tokens_done += tokens
            elapsed = time.perf_counter() - self.started
            left = elapsed * (self.tokens - self.tokens_done) / self.tokens_done
            return f"{self.done} of {self.count} runs, about {left / 3600:.1f} h left at this pace"


def retrain_all(runs: list[RetrainRun], jobs: int) -> list[RetrainResult]:
    """Every run, `jobs` at a time, the longest first (so the pool ends together); results in the given order.
    Every folder is checked first, so a mismatch stops the benchmark before its hours of work, not in the middle."""
    for run in runs:
        check_folder(run)
    longest_first = sorted(runs, key=lambda run: -run.tokens)
    progress = Progress(runs, jobs)
    with ThreadPoolExecutor(jobs) as pool:
        results = pool.map(lambda run: retrain_once(run, progress), longest_first)
        finished = dict(zip(longest_first, results, strict=True))
    return [finished[run] for run in runs]
