"""Where the data lives: --data_dir flag > HPO_DATA_DIR environment variable > the bundled copy."""

import os
from pathlib import Path

BUNDLED_DATA_DIR = Path(__file__).resolve().parent / "files"
DATA_DIR_VARIABLE = "HPO_DATA_DIR"
REQUIRED_FILES = ("ag_news/train.csv", "ag_news/test.csv", "tokenizers/gpt2.tiktoken")


class DataError(ValueError):
    """A data file that is there but cannot be used (malformed, empty, not UTF-8); main.py prints it as one line."""


def resolve_data_dir(flag_value: str | None = None) -> Path:
    """Pick the data folder and check that the files every run needs are there and readable."""
    if flag_value:
        data_dir, origin = Path(flag_value), "--data_dir"
    elif os.environ.get(DATA_DIR_VARIABLE):
        data_dir, origin = Path(os.environ[DATA_DIR_VARIABLE]), DATA_DIR_VARIABLE
    else:
        data_dir, origin = BUNDLED_DATA_DIR, "the bundled data"
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} (from {origin}) does not exist")
    for relative in REQUIRED_FILES:
        path = data_dir / relative
        if not path.is_file() or not os.access(path, os.R_OK):
            raise FileNotFoundError(
                f"{path} is missing or unreadable (data folder from {origin}); "
                f"a data folder needs {', '.join(REQUIRED_FILES)} and corpus/*.txt.gz"
            )
    return data_dir
