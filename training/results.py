"""Torch-free records of runs that the layers above read and write (the study's tools load no torch)."""

from dataclasses import dataclass


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
            f"trial {self.trial} of study {self.study!r}: gain {self.gain:+.4f} (accuracy {self.accuracy:.4f}, "
            f"random init {self.random_init_accuracy:.4f}) after {self.tokens:,} tokens"
        )
