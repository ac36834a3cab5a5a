"""One log file per trial, studies/NAME/logs/trial_0007.log: what the trial printed, its warnings, its
traceback if it failed, and its progress line; the worker that ran it is recorded in the trial's user attrs."""

import contextlib
import datetime
import os
import socket
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import optuna

WORKER_LABEL_ATTR = "worker"  # user attr: the worker in words, for people (status, dashboard); hpo.supervision
# signs the trial with a system attr of the same name, "host:pid", for the parent that watches the workers


def logs_folder(study_name: str, studies_dir: Path = Path("studies")) -> Path:
    """Where a study's trial logs go, beside its report and exported configs."""
    return studies_dir / study_name / "logs"


class Tee:
    """A text stream that writes to a terminal stream and a log file. Not a terminal itself, so progress
    bars stay off inside a trial, where they would only clutter its log."""

    def __init__(self, stream: TextIO, log: TextIO):
        self.stream = stream
        self.log = log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):  # encoding, fileno, ...: those of the terminal stream
        return getattr(self.stream, name)


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class TrialLogs:
    """Trial logs of one worker, named by its index, process and machine."""

    def __init__(self, folder: Path, worker_index: int):
        self.folder = folder
        self.worker = f"worker {worker_index} (pid {os.getpid()} on {socket.gethostname()})"

    def path(self, number: int) -> Path:
        return self.folder / f"trial_{number:04d}.log"

    def append(self, number: int, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path(number), "a", encoding="utf-8") as log:
            log.write(text.rstrip("\n") + "\n")

    @contextlib.contextmanager
    def capture(self, trial: optuna.Trial) -> Iterator[TextIO]:
        """Run the trial's code inside: its stdout, stderr and warnings go to its log as well as to stdout and
        stderr, the log says who ran it and when, and how it ended if it was pruned or raised; the trial's user
        attrs record the worker."""
        trial.set_user_attr(WORKER_LABEL_ATTR, self.worker)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        self.folder.mkdir(parents=True, exist_ok=True)
        with (
            open(self.path(trial.number), "a", encoding="utf-8") as log,
            contextlib.redirect_stdout(Tee(sys.stdout, log)),
            contextlib.redirect_stderr(Tee(sys.stderr, log)),
            warnings.catch_warnings(),
        ):
            warnings.showwarning = _warning_to_stderr  # whoever else was collecting them (pytest does)
            log.write(f"trial {trial.number} started {started} by {self.worker}\n")
            try:
                yield log
            except optuna.TrialPruned as pruned:
                log.write(f"pruned: {pruned}\n")
                raise
            except BaseException:
                log.write(traceback.format_exc())
                raise
