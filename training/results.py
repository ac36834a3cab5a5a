"""Torch-free records of runs that the layers above read and write (the study's tools load no torch): what a
study's trial scored, the paired gain of a probe over its random-init reference, and how scores are written.

Scores are written in percentage points everywhere people read them: an accuracy as 56.43%, a gain as
+5.32 points, each with its standard error in points. (Stored values, Optuna's among them, stay fractions.)"""

import base64
import math
from dataclasses import dataclass

import numpy as np


def format_accuracy(accuracy: float, standard_error: float | None = None) -> str:
    """0.5643, 0.0070 -> "56.43% ± 0.70"."""
    text = f"{100 * accuracy:.2f}%"
    return text if standard_error is None or math.isnan(standard_error) else f"{text} ± {100 * standard_error:.2f}"


def format_gain(gain: float, standard_error: float | None = None) -> str:
    """0.0532, 0.0061 -> "+5.32 ± 0.61 points"."""
    if standard_error is None or math.isnan(standard_error):
        return f"{100 * gain:+.2f} points"
    return f"{100 * gain:+.2f} ± {100 * standard_error:.2f} points"


def paired_gain(correct: np.ndarray, reference_correct: np.ndarray) -> tuple[float, float]:
    """The gain in accuracy of one encoder over another on the same rows and folds, and its standard error.

    A gain is a paired difference: only the discordant rows (right for one, wrong for the other) move it, so its
    standard error, sqrt(((b + c) / n - gain^2) / n) for b and c discordant rows of n, is far below that of
    either accuracy when the two encoders agree on most rows."""
    rows = len(correct)
    better = int(np.sum(correct & ~reference_correct))
    worse = int(np.sum(~correct & reference_correct))
    gain = (better - worse) / rows
    return gain, math.sqrt(max(0.0, (better + worse) / rows - gain**2) / rows)


def pack_correct(correct: np.ndarray) -> str:
    """A probe's row-by-row correctness as a short text (bits, base64), for a study's user attributes."""
    return base64.b64encode(np.packbits(correct.astype(bool))).decode("ascii")


def unpack_correct(text: str, rows: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:rows].astype(bool)


@dataclass(frozen=True)
class TrialScore:
    """What the study's trial of an exported recipe scored (its provenance): the line a retrain is read beside."""

    study: str
    trial: int
    tokens: int
    accuracy: float
    random_init_accuracy: float

    @property
    def gain(self) -> float:
        return self.accuracy - self.random_init_accuracy

    def describe(self) -> str:
        return (
            f"trial {self.trial} of study {self.study!r}: gain {format_gain(self.gain)} (accuracy "
            f"{format_accuracy(self.accuracy)}, random init {format_accuracy(self.random_init_accuracy)}) after "
            f"{self.tokens:,} tokens"
        )
