"""A study run's inputs, checked before anything is written: a mistake leaves no study, database or folder behind."""

import os
from pathlib import Path

from data.agnews import load_agnews
from data.corpus import load_corpus
from data.tokenizer import Tokenizer
from hpo.config import Config, ConfigError, dimensions
from hpo.storage import sqlite_database


def check_search_space(config: Config) -> None:
    """A study needs at least one dimension to sample; fixed ones only record a constant."""
    if not any(spec.type != "fixed" for _, _, _, spec in dimensions(config)):
        raise ConfigError(
            "search_space declares no dimension to sample; expected at least one range or categorical "
            "dimension (see the search_space section of config.yaml)"
        )


def check_data(config: Config, data_dir: Path) -> None:
    """The corpus (tokenised once here, then cached for the workers) and the AG News splits the probes read."""
    load_corpus(data_dir, config.data, Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken"))
    load_agnews(data_dir)


def prepare_storage_folder(storage_url: str) -> None:
    """Create the folder of a SQLite study file, or say why it cannot hold one."""
    database = sqlite_database(storage_url)
    if database is None:
        return
    folder = database.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create the studies folder {folder} for {storage_url}: {error.strerror}; "
            "expected a writable folder (choose another --storage, or run from another directory)"
        ) from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"studies folder {folder} is not writable; expected a folder the study file can go in")


def check_study_inputs(config: Config, data_dir: Path, storage_url: str) -> None:
    """Everything a study run can refuse before it creates or changes the study."""
    check_search_space(config)
    sqlite_database(storage_url)
    check_data(config, data_dir)
    prepare_storage_folder(storage_url)
