"""Study storage: the RDB storage with heartbeats and SQLite's pragmas, storage URLs, and opening a study
that must already exist (report, export, status, dashboard)."""

import sqlite3
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb.models import TrialModel
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from hpo.config import ConfigError, StudyConfig, defaults

# Heartbeats and the retry callback are marked experimental; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    """WAL lets readers (the dashboard, other workers) run beside a writer."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()


def default_storage_url(study_name: str, studies_dir: Path = Path("studies")) -> str:
    """studies/<name>.db; the folder is made by the run that creates the study (hpo.inputs)."""
    return f"sqlite:///{(studies_dir / f'{study_name}.db').resolve()}"


def sqlite_database(storage_url: str) -> Path | None:
    """The file of a SQLite storage URL; None for another database or an in-memory one."""
    try:
        url = make_url(storage_url)
    except ArgumentError as error:
        raise ConfigError(
            f"--storage {storage_url!r} is not a SQLAlchemy URL; expected e.g. sqlite:///studies/NAME.db"
        ) from error
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


class NothingQueued(Exception):
    """A worker that runs queued trials only found none left: it stops instead of sampling a trial of its own."""


class ClaimingStorage(RDBStorage):
    """Optuna's RDB storage whose workers claim a queued (WAITING) trial with one conditional UPDATE, and, with
    `queued_only`, never create a trial from nothing (a plan's workers, hpo/planned.py).

    Optuna reads the trial's state and then writes RUNNING; on SQLite the read runs outside the write's
    transaction (SELECT ... FOR UPDATE is a no-op there), so two workers could both claim the same queued trial,
    run it twice, and the second to finish died on "Cannot tell a COMPLETE trial". `UPDATE ... WHERE
    state = 'WAITING'` is atomic in every database: exactly one worker's update changes the row.

    Study.ask() creates a new trial, for the sampler to fill, when it claims no queued one. A planned run's worker
    whose queue another process emptied would then sample train.seed and train.budget_tokens from the companion's
    wide ranges (a run of 10^11 tokens); with `queued_only` that creation raises NothingQueued instead. Queueing
    (enqueue_trial, a retry) creates trials from a template and is unaffected.
    """

    def __init__(self, *args, queued_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.queued_only = queued_only

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # The one path of every creation: Optuna's cache in front of this storage (_CachedStorage) calls it directly.
        if self.queued_only and template_trial is None:
            raise NothingQueued("no queued trial is left")
        return super()._create_new_trial(study_id, template_trial)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        session = self.scoped_session()
        try:
            claimed = session.execute(
                update(TrialModel)
                .where(TrialModel.trial_id == trial_id, TrialModel.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, _datetime_start_utc=datetime.now(UTC).replace(tzinfo=None))
            )
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return claimed.rowcount == 1


def make_storage(url: str, config: StudyConfig, queued_only: bool = False) -> RDBStorage:
    """RDB storage with heartbeats: a killed worker's trial is failed and retried; a queued trial runs once; with
    `queued_only`, no trial is created but by queueing (ClaimingStorage)."""
    try:
        return ClaimingStorage(
            url,
            queued_only=queued_only,
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
            heartbeat_interval=config.heartbeat_seconds,
            grace_period=config.grace_seconds,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=config.max_retries),
        )
    except Exception as error:  # SQLAlchemy raises many kinds; the user needs the URL and the reason
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]  # not SQLAlchemy's "Background" line
        raise ConfigError(f"cannot open study storage {url}: {reason}") from error


def open_existing_storage(study_name: str, storage_url: str) -> RDBStorage:
    """The storage of a study that must already exist; otherwise a ConfigError listing the studies that do."""
    database = sqlite_database(storage_url)
    if database is not None and not database.exists():  # opening it would create an empty database
        files = ", ".join(sorted(path.name for path in database.parent.glob("*.db"))) or "none"
        raise ConfigError(
            f"no study {study_name!r}: storage {storage_url} does not exist; "
            f"study files in {database.parent}: {files} (pick one with --study_name or --storage)"
        )
    storage = make_storage(storage_url, defaults("study"))
    names = optuna.get_all_study_names(storage)
    if study_name not in names:
        raise ConfigError(
            f"no study {study_name!r} in {storage_url}; studies there: {', '.join(sorted(names)) or 'none'} "
            "(pick one with --study_name)"
        )
    return storage


def displayed_url(storage_url: str) -> str:
    """The storage URL as printed and written into reports and exported configs: any password masked."""
    return make_url(storage_url).render_as_string(hide_password=True)


def load_existing_study(study_name: str, storage_url: str) -> optuna.Study:
    """Load a study that must already exist (see open_existing_storage)."""
    return optuna.load_study(study_name=study_name, storage=open_existing_storage(study_name, storage_url))
