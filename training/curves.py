"""A run's training curve, written as it trains: one JSON line every CURVE_EVERY_STEPS steps (and at the last
step) with the step, the tokens so far, the mean training loss and gradient norm over those steps, the learning
rate and the tokens per second of training time. Trials write theirs beside their logs, a retrain into its
output folder; the report, the status command and the dashboard read them. No torch here."""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CURVE_EVERY_STEPS = 10


@dataclass(frozen=True)
class CurvePoint:
    step: int
    tokens: int
    loss: float
    learning_rate: float
    gradient_norm: float
    tokens_per_second: float
    train_seconds: float


class TrainingCurve:
    """Collects a run's steps and appends a CurvePoint to its file every CURVE_EVERY_STEPS steps. A resumed run
    appends to the same file, from the step it resumed at."""

    def __init__(self, path: Path, every: int = CURVE_EVERY_STEPS):
        self.path = path
        self.every = every
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.window_start: tuple[int, float] | None = None  # (step, train seconds) before the window

    def after_step(self, trainer: Any, result: Any) -> None:
        """After each step of `trainer` (a training.pretrain.Pretrainer) with its StepResult."""
        if self.window_start is None:  # tokens/s is timed from the end of the first step seen
            self.window_start = (trainer.step, trainer.train_seconds)
        self.losses.append(result.loss)
        self.norms.append(result.gradient_norm)
        if trainer.step % self.every and not trainer.finished:
            return
        steps, seconds = trainer.step - self.window_start[0], trainer.train_seconds - self.window_start[1]
        point = CurvePoint(
            step=trainer.step,
            tokens=trainer.tokens_seen,
            loss=sum(self.losses) / len(self.losses),
            learning_rate=result.learning_rate,
            gradient_norm=sum(self.norms) / len(self.norms),
            tokens_per_second=steps * trainer.tokens_per_step / seconds if seconds > 0 else math.nan,
            train_seconds=trainer.train_seconds,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(asdict(point)) + "\n")
        self.losses.clear()
        self.norms.clear()
        self.window_start = (trainer.step, trainer.train_seconds)


def read_curve(path: Path) -> list[CurvePoint]:
    """The points of a curve file (none if it does not exist; a line cut by a crash is skipped)."""
    if not path.exists():
        return []
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            points.append(CurvePoint(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return points
