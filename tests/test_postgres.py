"""The study command on a real PostgreSQL server, started here in a temporary folder: two worker processes
share one study through it, as workers on several machines would; and four workers add 200 trivial trials.

Without PostgreSQL's server programs the test is skipped, except where CI_REQUIRE_POSTGRES=1 (CI sets it and
installs them), where it fails.
"""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = pytest.mark.usefixtures("in_tmp_path")  # study files and logs go to tmp_path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER_USER = "postgres"  # PostgreSQL refuses to run as root; Debian's package creates this user


def unavailable(reason: str):
    if os.environ.get("CI_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"CI_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def server_programs() -> Path:
    """The folder of initdb, pg_ctl and createdb: beside `initdb` on PATH, else the newest Debian version."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # Debian links only some of them into PATH
    found = Path("/usr/lib/postgresql").glob("*/bin/initdb")  # .../<version>/bin/initdb, version "15" or "9.6"
    newest = max(found, key=lambda path: [int(part) for part in path.parts[-3].split(".")], default=None)
    if newest is None:
        unavailable("no PostgreSQL server programs: initdb is neither on PATH nor in /usr/lib/postgresql/*/bin")
    return newest.parent


def run_as_server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs a server program unprivileged, and that user (None: this one already is)."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        unavailable(f"running as root, and there is no {SERVER_USER!r} user to run the server as")
    return ["runuser", "-u", SERVER_USER, "--"], user


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command: list, cwd: Path) -> None:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh server on a free port (socket in the temporary folder) with an empty database "hpo"."""
    programs = server_programs()
    as_user, user = run_as_server_user()
    root = Path(tempfile.mkdtemp(prefix="hpo-postgres-"))  # not pytest's tmp_path, whose parents only root may enter
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    try:
        run([*as_user, programs / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"], cwd=root)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run([*as_user, programs / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", options, "-w", "start"], root)
        try:
            run([*as_user, programs / "createdb", "-h", root, "-p", port, "-U", "postgres", "hpo"], cwd=root)
            yield f"postgresql://postgres@127.0.0.1:{port}/hpo"
        finally:
            run([*as_user, programs / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], cwd=root)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)


@pytest.mark.slow
def test_two_workers_share_a_study_on_postgresql(postgres_url, tiny_study_flags):
    command = [sys.executable, str(PROJECT_DIR / "main.py"), "--study_name", "pg", "--n_trials", "2", "--n_jobs", "2"]
    command += ["--storage", postgres_url, *tiny_study_flags]
    result = subprocess.run(command, cwd=Path.cwd(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr

    study = optuna.load_study(study_name="pg", storage=postgres_url)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 2 == len(study.trials)
    assert {line.split("]")[0] for line in result.stdout.splitlines() if line.startswith("[worker")} == {
        "[worker 0",
        "[worker 1",
    }


@pytest.mark.slow
def test_four_workers_record_200_trials_on_postgresql(postgres_url, capfd):
    from trivial_trials import run_load

    study, deaths, seconds = run_load(postgres_url, workers=4, trials_each=50)
    output = "".join(capfd.readouterr())
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with capfd.disabled():
        print(f"\nPostgreSQL, 4 workers x 50 trivial trials: {len(complete)} of 200 recorded in {seconds:.1f} s")
    assert not deaths and "Traceback" not in output
    assert len(complete) == 200 == len(study.trials)
