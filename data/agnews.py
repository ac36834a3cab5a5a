"""AG News for the linear probe: 4 topic classes, train.csv for selection, test.csv for reports."""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.files_location import DataError

CLASSES = ("1", "2", "3", "4")


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: np.ndarray  # (N,) int64, classes 0..3

    def subset(self, indices: np.ndarray) -> "LabelledTexts":
        return LabelledTexts([self.texts[i] for i in indices], self.labels[indices])


def read_split(path: Path) -> LabelledTexts:
    """One AG News CSV ("class","title","description"; class 1..4); text = title + " " + description."""
    texts, labels = [], []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for line_number, row in enumerate(csv.reader(handle), start=1):
                if len(row) != 3:
                    raise DataError(
                        f'{path}:{line_number}: {len(row)} field(s); expected 3: "class","title","description"'
                    )
                if row[0] not in CLASSES:
                    raise DataError(f"{path}:{line_number}: class {row[0]!r}; expected one of 1, 2, 3, 4")
                labels.append(int(row[0]) - 1)
                texts.append(f"{row[1]} {row[2]}".strip())
    except OSError as error:
        raise OSError(f"cannot read AG News file {path}: {error}") from error
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: byte {error.object[error.start]:#04x} is not UTF-8 text; expected a UTF-8 CSV"
        ) from error
    except csv.Error as error:
        raise DataError(f"{path}: not a well-formed CSV file ({error})") from error
    if not texts:
        raise DataError(f'{path} holds no rows; expected AG News rows "class","title","description"')
    return LabelledTexts(texts, np.asarray(labels, dtype=np.int64))


def load_agnews(data_dir: Path) -> tuple[LabelledTexts, LabelledTexts]:
    """(selection split = train.csv, report split = test.csv). Never tune on the second."""
    return read_split(Path(data_dir) / "ag_news" / "train.csv"), read_split(Path(data_dir) / "ag_news" / "test.csv")


def stratified_rows(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced subset of at most `size` rows (all rows if size >= their count)."""
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = size // len(classes)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(chosen))


def stratified_subset(split: LabelledTexts, size: int, seed: int) -> LabelledTexts:
    """A seeded, class-balanced subset of at most `size` rows (used by the quick probe)."""
    if size >= len(split.labels):
        return split
    return split.subset(stratified_rows(split.labels, size, seed))
