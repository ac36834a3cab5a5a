"""Bad input of every kind is one line on stderr naming what was wrong and what was expected, a non-zero exit,
and no state changed: no study database, no studies folder, no file touched.

Each case runs main.main in-process in an empty working folder (its default storage is studies/<name>.db
there); the cases marked `subprocess` also run as `python main.py ...` to prove the real stderr and exit code.
"""

import dataclasses
import gzip
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_PATH

import main

MAIN = Path(main.__file__).resolve()
BUNDLED = Path(main.__file__).resolve().parent / "data" / "files"


@dataclasses.dataclass(frozen=True)
class Case:
    """argv with WORK for the working folder; message: a regex the single stderr line must match."""

    name: str
    argv: list[str]
    message: str
    prepare: Callable[[Path], None] | None = None
    code: int = 2
    subprocess: bool = False


# Preparations: each builds, under the working folder, the bad thing a case points at. ----------------------


def data_folder(work: Path, **replaced: bytes | None) -> Path:
    """A data folder like the bundled one (links), with files replaced by bytes (None: left out)."""
    folder = work / "data"
    for relative in ("ag_news/train.csv", "ag_news/test.csv", "tokenizers/gpt2.tiktoken", "corpus/wikipedia.txt.gz"):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        content = replaced.get(relative.replace("/", "_").replace(".", "_"), BUNDLED / relative)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.symlink_to(content)
    return folder


def with_data(**replaced: bytes | None) -> Callable[[Path], None]:
    return lambda work: data_folder(work, **replaced)


def config_file(text: str) -> Callable[[Path], None]:
    return lambda work: (work / "bad.yaml").write_text(text)


def fake_study(completed: bool = True) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        from conftest import _make_study

        (work / "studies").mkdir()
        _make_study(work / "studies" / "fake.db", [({}, 0.5 if completed else None)])

    return prepare


def checkpoint(content: bytes | object) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        folder = work / "out" / "checkpoints"
        folder.mkdir(parents=True)
        if isinstance(content, bytes):
            (folder / "step_4.pt").write_bytes(content)
        else:
            torch.save(content, folder / "step_4.pt")

    return prepare


def regular_file(name: str, content: bytes = b"not a folder\n") -> Callable[[Path], None]:
    return lambda work: (work / name).write_bytes(content)


STUDY = ["--study_name", "s"]  # default storage: WORK/studies/s.db
DATA = ["--data_dir", "WORK/data"]
RETRAIN = ["retrain", "--config", str(CONFIG_PATH), "--output", "WORK/out"]
AGNEWS_ROW = b'"3","Wall St.","Stocks rose."\n'

CASES = [
    # Configuration: config.yaml, --set and --config.
    Case(
        "config unknown key suggests the nearest",
        [*STUDY, "--set", "train.learning_rat=0.001"],
        r"unknown key train\.learning_rat \(did you mean train\.learning_rate\?\)",
        subprocess=True,
    ),
    Case(
        "config unknown section", [*STUDY, "--set", "trian.batch_size=8"], r"unknown key trian \(did you mean train\?\)"
    ),
    Case(
        "config wrong type", [*STUDY, "--set", "train.batch_size=eight"], r"train\.batch_size = 'eight'; expected int"
    ),
    Case(
        "config list expected",
        [*STUDY, "--set", "data.sources=wikipedia"],
        r"data\.sources = 'wikipedia'; expected a list",
    ),
    Case("config negative", [*STUDY, "--set", "train.batch_size=-8"], r"train\.batch_size = -8; expected a positive"),
    Case("config out of range", [*STUDY, "--set", "masking.rate=1.5"], r"masking\.rate = 1\.5; expected 0 < rate < 1"),
    Case(
        "config fraction out of range",
        [*STUDY, "--set", "train.warmup_fraction=1.0"],
        r"train\.warmup_fraction = 1\.0; expected 0 <= fraction < 1",
    ),
    Case(
        "config wsd phases overlap",
        [*STUDY, "--set", "train.schedule=wsd", "--set", "train.warmup_fraction=0.9"],
        r"train\.warmup_fraction \+ train\.decay_fraction = 0\.9 \+ 0\.2; the wsd schedule needs a sum <= 1",
    ),
    Case(
        "retrain unknown schedule",
        [*RETRAIN, "--set", "retrain.schedule=sine"],
        r"retrain\.schedule = 'sine'; expected one of inherit, constant, linear, cosine, wsd",
    ),
    Case(
        "config heads do not divide hidden",
        [*STUDY, "--set", "model.num_heads=3"],
        r"model\.num_heads = 3 does not divide model\.hidden_size = 128",
    ),
    Case(
        "config unknown kind",
        [*STUDY, "--set", "model.attention_kind=linear"],
        r"model\.attention_kind = 'linear'; expected one of",
    ),
    Case(
        "config unknown sampler",
        [*STUDY, "--set", "study.sampler=grid"],
        r"study\.sampler = 'grid'; expected one of tpe",
    ),
    Case(
        "config heartbeat outlasts grace",
        [*STUDY, "--set", "study.grace_seconds=10"],
        r"study\.heartbeat_seconds = 30, study\.grace_seconds = 10; expected 1 <= heartbeat_seconds < grace_seconds",
    ),
    Case(
        "config unknown probe target",
        [*STUDY, "--set", "probe.target=loss"],
        r"probe\.target = 'loss'; expected one of",
    ),
    Case(
        "config contradictory lengths",
        [*STUDY, "--set", "model.max_seq_len=16"],
        r"model\.max_seq_len = 16 is below data\.seq_len = 32",
    ),
    Case(
        "config empty search space",
        [*STUDY, "--set", "search_space={}"],
        r"search_space declares no dimension to sample",
    ),
    Case(
        "config range low above high",
        [*STUDY, "--set", "search_space.train.learning_rate={type: float, low: 0.01, high: 0.001}"],
        r"search_space\.train\.learning_rate: needs low < high; got low=0\.01, high=0\.001",
    ),
    Case(
        "config condition on an undeclared dimension",
        [*STUDY, "--set", "search_space.masking.rate.condition={masking.nope: [x]}"],
        r"search_space\.masking\.rate\.condition names 'masking\.nope', which is not a dimension declared above",
    ),
    Case(
        "config condition on a value never taken",
        [*STUDY, "--set", "search_space.masking.rate.condition={masking.strategy: [spam]}"],
        r"search_space\.masking\.rate\.condition: masking\.strategy never takes \['spam'\]; it takes one of",
    ),
    Case(
        "config preset with heads not dividing hidden",
        [*STUDY, "--set", "search_space.model.size.choices.odd={hidden_size: 100, num_heads: 3}"],
        r"search_space\.model\.size choice 'odd' gives an invalid config: model\.num_heads = 3 does not divide",
    ),
    Case(
        "config --set without =",
        [*STUDY, "--set", "train.batch_size"],
        r"--set 'train\.batch_size': expected KEY=VALUE",
    ),
    Case(
        "config file missing",
        [*STUDY, "--config", "WORK/nope.yaml"],
        r"cannot read config file .*nope\.yaml: No such file",
    ),
    Case(
        "config file not YAML",
        [*STUDY, "--config", "WORK/bad.yaml"],
        r"config file .*bad\.yaml is not valid YAML",
        config_file("train: [1, 2\nmodel: {\n"),
    ),
    Case(
        "config file not a mapping",
        [*STUDY, "--config", "WORK/bad.yaml"],
        r"bad\.yaml: config = \[1, 2\]; expected a mapping",
        config_file("- 1\n- 2\n"),
    ),
    # Flags.
    Case("flag --n_jobs 0", [*STUDY, "--n_jobs", "0"], r"--n_jobs \(0\) must be at least 1", subprocess=True),
    Case("flag negative --n_trials", [*STUDY, "--n_trials", "-3"], r"--n_trials \(-3\) must be at least 1"),
    Case("flag --timeout not positive", [*STUDY, "--timeout", "-5"], r"--timeout \(-5\.0\) must be a positive number"),
    Case("flag not a number", [*STUDY, "--n_trials", "three"], r"argument --n_trials: invalid int value: 'three'"),
    Case("flag unknown", [*STUDY, "--n_trail", "3"], r"unrecognized arguments: --n_trail 3"),
    Case("flag --study_name missing", ["report"], r"the following arguments are required: --study_name"),
    Case(
        "flag study name with a path separator",
        ["--study_name", "a/b"],
        r"--study_name 'a/b': expected a plain name",
        subprocess=True,
    ),
    Case("flag study name ..", ["--study_name", ".."], r"--study_name '\.\.': expected a plain name"),
    Case(
        "flag report study name escaping",
        ["report", "--study_name", "../x"],
        r"--study_name '\.\./x': expected a plain",
    ),
    Case("flag export --top_k negative", ["export", "--study_name", "s", "--top_k", "-1"], r"--top_k \(-1\) must be 0"),
    Case(
        "flag dashboard --port out of range", ["dashboard", "--study_name", "s", "--port", "70000"], r"--port \(70000\)"
    ),
    # Data.
    Case(
        "data folder missing (older flag spelling)",
        [*STUDY, "--data-dir", "WORK/nodata"],
        r"data folder .*nodata \(from --data_dir\) does not exist",
    ),
    Case(
        "data file missing",
        [*STUDY, *DATA],
        r"data/tokenizers/gpt2\.tiktoken is missing or unreadable",
        with_data(tokenizers_gpt2_tiktoken=None),
    ),
    Case(
        "data corpus file missing",
        [*STUDY, *DATA],
        r"corpus file .*corpus/wikipedia\.txt\.gz not found",
        with_data(corpus_wikipedia_txt_gz=None),
    ),
    Case(
        "data empty corpus",
        [*STUDY, *DATA],
        r"corpus files wikipedia\.txt\.gz in .*data/corpus hold fewer than data\.seq_len = 32 tokens",
        with_data(corpus_wikipedia_txt_gz=gzip.compress(b"")),
        subprocess=True,
    ),
    Case(
        "data corpus not gzip",
        [*STUDY, *DATA],
        r"cannot read corpus file .*wikipedia\.txt\.gz: Not a gzipped file",
        with_data(corpus_wikipedia_txt_gz=b"plain text\n"),
    ),
    Case(
        "data AG News malformed row",
        [*STUDY, *DATA],
        r'ag_news/train\.csv:2: 2 field\(s\); expected 3: "class","title","description"',
        with_data(ag_news_train_csv=AGNEWS_ROW + b'"3","no description"\n'),
    ),
    Case(
        "data AG News label out of range",
        [*STUDY, *DATA],
        r"ag_news/train\.csv:2: class '5'; expected one of 1, 2, 3, 4",
        with_data(ag_news_train_csv=AGNEWS_ROW + b'"5","Title","Text"\n'),
    ),
    Case(
        "data AG News not UTF-8",
        [*STUDY, *DATA],
        r"ag_news/test\.csv: byte 0xff is not UTF-8 text",
        with_data(ag_news_test_csv=AGNEWS_ROW + b'"1","caf\xff","x"\n'),
    ),
    Case("data AG News empty", [*STUDY, *DATA], r"ag_news/train\.csv holds no rows", with_data(ag_news_train_csv=b"")),
    # Storage.
    Case("storage bad URL", [*STUDY, "--storage", "not-a-url"], r"--storage 'not-a-url' is not a SQLAlchemy URL"),
    Case(
        "storage unknown database kind",
        [*STUDY, "--storage", "nosuchdb://host/db"],
        r"cannot open study storage nosuchdb://host/db: Can't load plugin",
    ),
    Case(
        "storage file not a database",
        [*STUDY, "--storage", "sqlite:///WORK/notes.db"],
        r"cannot open study storage sqlite:///.*notes\.db: .*file is not a database",
        regular_file("notes.db", b"my notes, not a database\n" * 100),
        subprocess=True,
    ),
    Case(
        "storage folder under a regular file",
        [*STUDY, "--storage", "sqlite:///WORK/plain/s.db"],
        r"cannot create the studies folder .*plain for sqlite:///.*: (Not a directory|File exists)",
        regular_file("plain"),
    ),
    Case(
        "storage default studies folder is a file",
        STUDY,
        r"cannot create the studies folder .*studies for sqlite:///",
        regular_file("studies"),
    ),
    # Commands on a study that is not there, or has nothing to show yet.
    Case(
        "report missing storage",
        ["report", "--study_name", "s"],
        r"no study 's': storage .*studies/s\.db does not exist",
    ),
    Case(
        "report missing study",
        ["report", "--study_name", "nope"],
        r"no study 'nope': storage .* does not exist; study files in .*studies: fake\.db",
        fake_study(),
    ),
    Case(
        "export missing study",
        ["export", "--study_name", "nope", "--storage", "sqlite:///WORK/studies/fake.db"],
        r"no study 'nope' in sqlite:///.*fake\.db; studies there: fake",
        fake_study(),
    ),
    Case(
        "export no completed trial",
        ["export", "--study_name", "fake"],
        r"study 'fake' has no completed trial yet \(pruned trial 0\)",
        fake_study(completed=False),
    ),
    Case("dashboard missing study", ["dashboard", "--study_name", "nope"], r"no study 'nope'", fake_study()),
    Case("status missing study", ["status", "--study_name", "nope"], r"no study 'nope'", fake_study()),
    Case(
        "report on a file that is not a database",
        ["report", "--study_name", "s", "--storage", "sqlite:///WORK/notes.db"],
        r"cannot open study storage .*notes\.db: .*file is not a database",
        regular_file("notes.db", b"my notes, not a database\n" * 100),
    ),
    # Retrain.
    Case(
        "retrain truncated checkpoint",
        [*RETRAIN, "--resume"],
        r"--resume: cannot read .*step_4\.pt .*delete it to resume from the one before",
        checkpoint(b"PK\x03\x04 torn off"),
    ),
    Case(
        "retrain foreign checkpoint",
        [*RETRAIN, "--resume"],
        r"step_4\.pt was written by another run configuration \(hash 0123",
        checkpoint({"config_hash": "0123456789abcdef", "world_size": 1}),
        subprocess=True,
    ),
    Case(
        "retrain checkpoint not a dict",
        [*RETRAIN, "--resume"],
        r"step_4\.pt was written by another run configuration \(hash None",
        checkpoint([1, 2, 3]),
    ),
    Case(
        "retrain edited config: section not a mapping",
        ["retrain", "--config", "WORK/bad.yaml"],
        r"bad\.yaml: model = 7; expected a mapping",
        config_file("model: 7\n"),
    ),
    Case(
        "retrain edited config: misspelt key",
        ["retrain", "--config", "WORK/bad.yaml"],
        r"bad\.yaml: unknown key model\.hiden_size \(did you mean model\.hidden_size\?\)",
        config_file("model: {hiden_size: 64}\n"),
    ),
    Case(
        "retrain edited config: nonsense value",
        ["retrain", "--config", "WORK/bad.yaml"],
        r"retrain\.precision = 'fp8'; expected one of auto, fp32, bf16, fp16",
        config_file("retrain: {precision: fp8}\n"),
    ),
    Case("retrain config is a folder", ["retrain", "--config", "WORK"], r"cannot read config file .*: Is a directory"),
]


# Running a case and checking that nothing changed. ----------------------------------------------------------


def state(root: Path) -> dict[str, str]:
    """Every file and folder under root: a database by its contents (SQLite's -wal and -shm files come and go
    with connections), any other file by its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        if path.is_symlink() or path.is_dir():
            found[key] = "link" if path.is_symlink() else "folder"
            continue
        found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        if path.suffix == ".db":
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
                    found[key] = hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()
            except sqlite3.DatabaseError:
                pass
    return found


def filled(argv: list[str], work: Path, cache_flags: list[str]) -> list[str]:
    argv = [argument.replace("WORK", str(work)) for argument in argv]
    is_study = not argv or argv[0] not in main.COMMANDS or argv[0] == "study"
    # The tiny study's settings (the token cache outside the working folder), before the case's own flags.
    return [*cache_flags, *argv] if is_study and argv[:1] == ["--study_name"] else argv


def run_in_process(argv: list[str]) -> int:
    try:
        return main.main(argv)
    except SystemExit as exit:  # argparse's errors
        return exit.code


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _check(case: Case, work: Path, code: int, stderr: str, before: dict[str, str]) -> None:
    assert code == case.code, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), f"not one error line: {stderr!r}"
    assert "Traceback" not in stderr
    assert re.search(case.message, stderr), stderr
    assert state(work) == before, "the bad input changed files"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, work, tiny_study_flags, capsys):
    if case.prepare:
        case.prepare(work)
    before = state(work)
    code = run_in_process(filled(case.argv, work, tiny_study_flags))
    _check(case, work, code, capsys.readouterr().err, before)


SUBPROCESS_CASES = [case for case in CASES if case.subprocess]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[case.name for case in SUBPROCESS_CASES])
def test_bad_input_as_a_command_line(case, work, tiny_study_flags):
    if case.prepare:
        case.prepare(work)
    before = state(work)
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, str(MAIN), *filled(case.argv, work, tiny_study_flags)]
    finished = subprocess.run(argv, cwd=work, capture_output=True, text=True, env=environment, timeout=300)
    _check(case, work, finished.returncode, finished.stderr, before)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_read_only_studies_folder_is_named(work, tiny_study_flags, capsys):
    studies = work / "studies"
    studies.mkdir(mode=0o555)
    before = state(work)
    code = run_in_process([*tiny_study_flags, *STUDY])
    _check(
        Case("read-only", [], r"studies folder .*studies is not writable"), work, code, capsys.readouterr().err, before
    )


def test_bad_inputs_covered(capsys):
    names = {case.name for case in CASES}
    assert len(names) == len(CASES) >= 30
    with capsys.disabled():
        print(f"\nbad inputs covered: {len(CASES)} ({len(SUBPROCESS_CASES)} also as a command line)")
