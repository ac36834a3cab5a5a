"""Create or load a study, build its sampler and pruner, and run worker processes on it."""

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from hpo.config import LOCATION_KEYS, PROBE_TARGETS, Config, ConfigError, StudyConfig, config_to_dict, from_dict
from hpo.interruption import INTERRUPTED_EXIT_CODE, InterruptibleObjective, Interruption, sigint_handled_by
from hpo.space import base_params
from hpo.supervision import SignedObjective, WorkerDeath, exit_cause, fail_and_retry, trials_of, worker_id
from hpo.trial_logs import TrialLogs, logs_folder
from hpo.versions import software_versions

# Heartbeats, grouped TPE and the retry callback are marked experimental; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS = {
    "tpe": lambda config, seed: optuna.samplers.TPESampler(
        multivariate=True,
        group=True,
        constant_liar=True,
        n_startup_trials=config.sampler_startup_trials,
        seed=seed,
    ),
    "random": lambda config, seed: optuna.samplers.RandomSampler(seed=seed),
    "qmc": lambda config, seed: optuna.samplers.QMCSampler(seed=seed, scramble=True),
}

PRUNERS = {
    "median": lambda config: optuna.pruners.MedianPruner(
        n_startup_trials=config.pruner_startup_trials, n_warmup_steps=config.pruner_warmup_steps
    ),
    "successive_halving": lambda config: optuna.pruners.SuccessiveHalvingPruner(),
    "hyperband": lambda config: optuna.pruners.HyperbandPruner(),
    "none": lambda config: optuna.pruners.NopPruner(),
}


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


def make_storage(url: str, config: StudyConfig) -> RDBStorage:
    """RDB storage with heartbeats: a killed worker's trial is failed and retried."""
    try:
        return RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
            heartbeat_interval=config.heartbeat_seconds,
            grace_period=config.grace_seconds,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=config.max_retries),
        )
    except Exception as error:  # SQLAlchemy raises many kinds; the user needs the URL and the reason
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]  # not SQLAlchemy's "Background" line
        raise ConfigError(f"cannot open study storage {url}: {reason}") from error


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    if config.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler = {config.sampler!r}; expected one of {list(SAMPLERS)}")
    return SAMPLERS[config.sampler](config, seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.pruner not in PRUNERS:
        raise ConfigError(f"study.pruner = {config.pruner!r}; expected one of {list(PRUNERS)}")
    return PRUNERS[config.pruner](config)


# Studies that must already exist (report, export, dashboard) -------------------------------------


def open_existing_storage(study_name: str, storage_url: str) -> RDBStorage:
    """The storage of a study that must already exist; otherwise a ConfigError listing the studies that do."""
    try:
        url = make_url(storage_url)
    except ArgumentError as error:
        raise ConfigError(f"--storage {storage_url!r} is not a SQLAlchemy URL (e.g. sqlite:///studies/x.db)") from error
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        database = Path(url.database)
        if not database.exists():  # opening it would create an empty database
            files = ", ".join(sorted(path.name for path in database.parent.glob("*.db"))) or "none"
            raise ConfigError(
                f"no study {study_name!r}: storage {storage_url} does not exist; "
                f"study files in {database.parent}: {files} (pick one with --study_name or --storage)"
            )
    storage = make_storage(storage_url, StudyConfig())
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


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first (ties keep trial order)."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(completed, key=lambda trial: -trial.value if maximize else trial.value)


def objective_name(study: optuna.Study) -> str:
    """What the study's values are, as Optuna records it (probe.target's metric name); studies made before
    probe.target existed maximised the accuracy."""
    return (study.metric_names or [PROBE_TARGETS["accuracy"]])[0]


def value_label(study: optuna.Study) -> str:
    """The study's value in words, for progress lines, the report and the best-trial line."""
    return {"probe_accuracy": "accuracy", "probe_gain_over_random_init": "gain over random init"}.get(
        objective_name(study), objective_name(study)
    )


def format_value(study: optuna.Study, value: float) -> str:
    """A gain carries its sign."""
    return f"{value:+.4f}" if objective_name(study) == PROBE_TARGETS["gain"] else f"{value:.4f}"


# Resuming: would a score mean something else now? -------------------------------------------------

# A change in these sections changes what a trial's score means (except LOCATION_KEYS); the others
# (study: sampler, pruner, heartbeat; retrain; provenance) do not.
SCORE_SECTIONS = ("data", "model", "masking", "train", "probe", "search_space")
SHOWN_KEYS = 5
_ABSENT = object()


def differing_keys(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings; a key on one side only differs too."""
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return [] if stored == current else [prefix]
    keys = [*stored, *(key for key in current if key not in stored)]
    return [
        difference
        for key in keys
        for difference in differing_keys(
            stored.get(key, _ABSENT), current.get(key, _ABSENT), f"{prefix}.{key}" if prefix else str(key)
        )
    ]


def normalised_base_config(stored: dict) -> dict:
    """The stored base config with fields added to the code since filled in by their defaults, which then
    do not count as changes; as stored when it no longer loads (a field was removed or retyped)."""
    try:
        return config_to_dict(from_dict(Config, stored))
    except ConfigError:
        return stored


def _some(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def check_config_unchanged(study: optuna.Study, config: Config, force: bool) -> None:
    """Refuse to add trials whose scores would mean something else than the study's earlier ones, unless
    forced; a forced change is recorded in the study's user attr "config_changes"."""
    changed = differing_keys(normalised_base_config(study.user_attrs["base_config"]), config_to_dict(config))
    scoring = [key for key in changed if key.split(".")[0] in SCORE_SECTIONS and key not in LOCATION_KEYS]
    harmless = [key for key in changed if key not in scoring]
    if scoring and not force:
        raise ConfigError(
            f"study {study.study_name!r} was created with a different configuration: {_some(scoring)} differ; "
            "use a new --study_name, or pass --force to continue anyway"
        )
    if harmless:
        print(
            f"note: study {study.study_name!r} continues with changed settings that keep scores comparable: "
            f"{_some(harmless)}"
        )
    if not scoring:
        return
    print(
        f"warning: --force: study {study.study_name!r} continues with changed {_some(scoring)} after "
        f"{len(study.trials)} trials (recorded in its user attr 'config_changes')",
        file=sys.stderr,
    )
    history = study.user_attrs.get("config_changes", [])
    study.set_user_attr("config_changes", [*history, {"keys": scoring, "after_trials": len(study.trials)}])


def open_study(study_name: str, storage_url: str, config: Config, seed: int, force: bool = False) -> optuna.Study:
    """Create the study or load it if it exists. The config is stored with a study that has no trials yet,
    and checked against the stored one when a study with trials is resumed."""
    study = optuna.create_study(
        study_name=study_name,
        storage=make_storage(storage_url, config.study),
        sampler=make_sampler(config.study, seed),
        pruner=make_pruner(config.study),
        direction="maximize",
        load_if_exists=True,
    )
    software = software_versions()
    if study.trials and "base_config" in study.user_attrs:
        check_config_unchanged(study, config, force)
        note_software_change(study, software)
    else:
        study.set_user_attr("base_config", config_to_dict(config))
        study.set_user_attr("software", software)
        study.set_metric_names([config.probe.metric_name])
        if config.study.baseline_trial:
            # The config's own recipe runs first: every study holds the reference the search must beat.
            study.enqueue_trial(base_params(config), user_attrs={"baseline": True}, skip_if_exists=True)
    return study


def note_software_change(study: optuna.Study, software: dict[str, Any]) -> None:
    """Say so when the code or packages differ from those that started the study: the configuration check
    cannot see a changed model or loop, and the user should know earlier scores may not compare."""
    stored = study.user_attrs.get("software", {})

    def shown(name: str, value: Any) -> str:
        return str(value)[:12] if name == "git_commit" else str(value)

    changed = [
        f"{name} {shown(name, stored[name])} -> {shown(name, value)}"
        for name, value in software.items()
        if name != "git_uncommitted_changes" and stored.get(name) and value and stored[name] != value
    ]
    if changed:
        print(
            f"note: study {study.study_name!r} was started by other software ({_some(changed)}); "
            "earlier trials' scores may not compare with new ones"
        )


# Workers ------------------------------------------------------------------------------------------

# What --max_trials counts: every trial that ran or runs. Queued (WAITING) trials do not count.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials whose results a run keeps
DEFAULT_N_TRIALS = 10
WORKER_STOP_SECONDS = 30  # after a Ctrl-C: how long a worker may take to fail and queue its trial
WORKER_DIED_EXIT_CODE = 3  # the run finished, but a worker process died on the way (2: a user's error)


@dataclasses.dataclass(frozen=True)
class RunLimits:
    """When a run stops adding trials: at the first limit reached. None: no such limit."""

    n_trials: int | None = None  # trials to add in this run
    max_trials: int | None = None  # trials in the study (COUNTED_STATES), this run's and earlier ones
    timeout: float | None = None  # seconds from the run's start after which no trial starts

    def trials_to_add(self, counted: int) -> int | None:
        """How many trials this run adds to a study with `counted` trials; None: until the timeout or the cap.

        Without any limit a run adds DEFAULT_N_TRIALS."""
        n_trials = self.n_trials
        if n_trials is None and self.max_trials is None and self.timeout is None:
            n_trials = DEFAULT_N_TRIALS
        if self.max_trials is None:
            return n_trials
        room = max(0, self.max_trials - counted)
        return room if n_trials is None else min(n_trials, room)

    def describe(self, n_trials: int | None) -> str:
        parts = [f"adding {n_trials if n_trials is not None else 'trials'}"]
        if self.max_trials is not None:
            parts.append(f"up to {self.max_trials} in the study")
        if self.timeout is not None:
            parts.append(f"starting none after {self.timeout:g} s")
        return ", ".join(parts)


def pretraining_objective(config: Config, data_dir: Path) -> Callable[[optuna.Trial], float]:
    """The study's objective: pretrain the trial's recipe and probe it, with the resources loaded once."""
    from hpo.objective import Objective, Resources  # keeps torch-heavy imports out of the parent

    return Objective(config, Resources.load(config, data_dir))


class StudyInterrupted(KeyboardInterrupt):
    """A Ctrl-C ended the run after its running trials were failed and queued again."""

    def __init__(self, finished: int):
        super().__init__(f"{finished} finished trials are saved; run the same command to resume")


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """What a run leaves: the study, and the worker processes that died on the way."""

    study: optuna.Study
    worker_deaths: list[WorkerDeath] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class WorkerPlan:
    """What one worker process does."""

    study_name: str
    storage_url: str
    config: Config
    data_dir: Path
    seed: int
    parent_pid: int
    n_trials: int | None = None  # None: until the deadline or max_trials
    deadline: float | None = None  # time.time() after which no trial starts
    max_trials: int | None = None
    worker_index: int = 0
    threads: int = 1
    gpu: int | None = None
    # (config, data_dir) -> the objective; a module-level function, so that a spawned worker can import it
    make_objective: Callable[[Config, Path], Callable[[optuna.Trial], float]] = pretraining_objective


def _format_trial(trial: optuna.trial.FrozenTrial, worker_index: int) -> str:
    params = " ".join(f"{name.split('.')[-1]}={_short(value)}" for name, value in trial.params.items())
    attrs = trial.user_attrs
    if trial.state == optuna.trial.TrialState.COMPLETE:
        accuracy = attrs.get("probe_accuracy", trial.value)
        outcome = f"accuracy {accuracy:.4f} ± {attrs.get('probe_standard_error', float('nan')):.4f}"
        if "random_init_accuracy" in attrs:
            gain = accuracy - attrs["random_init_accuracy"]
            outcome += f", gain {gain:+.4f} over random init {attrs['random_init_accuracy']:.4f}"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        outcome = f"pruned: {attrs.get('pruned_reason', f'at report point {trial.last_step}')}"
    else:
        outcome = f"{trial.state.name.lower()}: {attrs.get('fail_reason', '')}".strip(" :")
    speed = attrs.get("tokens_per_second", 0.0)
    seconds = attrs.get("wall_seconds", 0.0)
    name = f"trial {trial.number} (baseline)" if attrs.get("baseline") else f"trial {trial.number}"
    return f"[worker {worker_index}] {name}: {outcome} | {params} | {speed:,.0f} tokens/s | {seconds:.0f} s"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def visible_gpu(index: int) -> str:
    """CUDA_VISIBLE_DEVICES for a worker on the index-th GPU this process sees: a cluster's scheduler may
    already have narrowed the visible GPUs (e.g. "4,6"), and index 1 then means GPU 6, not GPU 1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return str(index)
    return visible.split(",")[index].strip()


def run_worker(plan: WorkerPlan, interruption: Interruption) -> None:
    """One worker: load shared resources once, then optimise its share of the trials.

    Raises KeyboardInterrupt when `interruption` stopped it, after its running trial was failed and queued again.
    """
    if plan.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpu(plan.gpu)
    torch.set_num_threads(plan.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = plan.make_objective(plan.config, plan.data_dir)
    study = optuna.load_study(
        study_name=plan.study_name,
        storage=make_storage(plan.storage_url, plan.config.study),
        sampler=make_sampler(plan.config.study, plan.seed),
        pruner=make_pruner(plan.config.study),
    )

    trial_logs = TrialLogs(logs_folder(plan.study_name), plan.worker_index)

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        line = _format_trial(trial, plan.worker_index)
        print(line, flush=True)
        trial_logs.append(trial.number, line)

    callbacks = [progress, interruption.stop_study]
    if plan.max_trials is not None:  # the parent's share of the cap is exact; this covers other machines' workers
        callbacks.append(MaxTrialsCallback(plan.max_trials, states=COUNTED_STATES))
    timeout = None if plan.deadline is None else max(0.0, plan.deadline - time.time())
    with sigint_handled_by(interruption):
        study.optimize(
            InterruptibleObjective(SignedObjective(trial_logs.wrap(objective), plan.seed), interruption),
            n_trials=plan.n_trials,
            timeout=timeout,
            callbacks=callbacks,
            catch=(Exception,),
        )
    if interruption.reason is not None:
        raise KeyboardInterrupt


def _worker_entry(plan: WorkerPlan) -> None:
    """A spawned worker: it stops when its parent dies, and exits with 130 (no traceback) when interrupted."""
    interruption = Interruption()
    interruption.watch_parent(plan.parent_pid)
    try:
        run_worker(plan, interruption)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED_EXIT_CODE)


def split_trials(n_trials: int | None, n_jobs: int) -> list[int | None]:
    """n_trials spread over n_jobs workers, the first ones taking the remainder; None (no count) for each."""
    if n_trials is None:
        return [None] * n_jobs
    return [n_trials // n_jobs + (index < n_trials % n_jobs) for index in range(n_jobs)]


def draw_run_seed() -> int:
    """A run seed when --seed is not given: other machines and runs then sample other recipes. 32 bits,
    as NumPy's RandomState (under the random and QMC samplers) takes no more."""
    return secrets.randbits(32)


def worker_seeds(run_seed: int, n_jobs: int, existing: int, sampler: str) -> list[int]:
    """The sampler seed of each worker of a run, derived from the run seed and the study's trial count."""
    if sampler == "qmc":  # workers walk one scrambled Sobol sequence, counted in the study: one seed for all
        return [run_seed] * n_jobs
    # Each worker of each run gets its own sampler seed, so a resumed study never replays samples.
    return [int(seed) for seed in np.random.SeedSequence([run_seed, existing]).generate_state(n_jobs)]


def study_sampler_seed(study: optuna.Study, config: StudyConfig, run_seed: int) -> int:
    """The seed of this run's samplers: the run seed, except under QMC, whose workers on every machine and
    in every run share the seed kept in the study's user attr "qmc_seed" (set by the first run)."""
    if config.sampler != "qmc":
        return run_seed
    if "qmc_seed" not in study.user_attrs:
        study.set_user_attr("qmc_seed", run_seed)
    return study.user_attrs["qmc_seed"]  # read back: another machine's run may have set it first


def worker_plans(common: WorkerPlan, n_trials: int | None, n_jobs: int, existing: int) -> list[WorkerPlan]:
    """`common` spread over n_jobs workers: each its share of the trials, its seed, its threads and its GPU."""
    gpus = torch.cuda.device_count()
    seeds = worker_seeds(common.seed, n_jobs, existing, common.config.study.sampler)
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    return [
        dataclasses.replace(
            common,
            n_trials=share,
            worker_index=index,
            threads=threads,
            seed=seeds[index],
            gpu=index % gpus if gpus else None,
        )
        for index, share in enumerate(split_trials(n_trials, n_jobs))
        if share != 0
    ]


def stop_processes(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Pass a Ctrl-C on to the workers (a SIGINT sent to the parent alone reaches none), give each time to
    fail and queue its running trial, then terminate any still running (the heartbeat fails its trial)."""
    started = [process for process in processes if process.pid is not None]
    for process in started:
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + WORKER_STOP_SECONDS
    for process in started:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()
            process.join()


def run_processes(plans: list[WorkerPlan]) -> list[WorkerDeath]:
    """Run each plan in a spawned process and watch them: a worker that dies has its running trial failed and
    retried at once, and a new worker takes the rest of its share. Returns the deaths; raises
    KeyboardInterrupt after a Ctrl-C, once the workers stopped."""
    context = multiprocessing.get_context("spawn")
    running: dict[int, tuple[multiprocessing.process.BaseProcess, WorkerPlan]] = {}  # by sentinel
    deaths: list[WorkerDeath] = []
    interrupted = False

    def start(plan: WorkerPlan) -> None:
        process = context.Process(target=_worker_entry, args=(plan,))
        process.start()
        running[process.sentinel] = (process, plan)

    try:
        for plan in plans:
            start(plan)
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                process, plan = running.pop(sentinel)
                process.join()
                if process.exitcode == INTERRUPTED_EXIT_CODE:  # a worker was interrupted on its own
                    interrupted = True
                elif process.exitcode != 0:
                    death, replacement = handle_death(process.pid, process.exitcode, plan, generation=len(deaths))
                    deaths.append(death)
                    print(f"warning: {death.describe()}", file=sys.stderr, flush=True)
                    if replacement is not None:
                        start(replacement)
    except KeyboardInterrupt:
        stop_processes([process for process, _ in running.values()])
        raise
    if interrupted:
        raise KeyboardInterrupt
    return deaths


def handle_death(pid: int, exit_code: int, plan: WorkerPlan, generation: int) -> tuple[WorkerDeath, WorkerPlan | None]:
    """Fail and retry the trials a dead worker was running; the plan of the worker that replaces it (None:
    its share is done, or it died before it ran any trial, which a new worker would only repeat)."""
    study = optuna.load_study(study_name=plan.study_name, storage=make_storage(plan.storage_url, plan.config.study))
    worker, cause = worker_id(pid), exit_cause(exit_code)
    running = trials_of(study, worker, (TrialState.RUNNING,))
    outcomes = [fail_and_retry(study, trial, cause, plan.config.study.max_retries) for trial in running]
    # Its share counts the trials it finished, and those it died on for good, but not the ones queued again.
    retried = {trial.number for trial, (queued, _) in zip(running, outcomes, strict=True) if queued}
    ended = trials_of(study, worker, (*FINISHED_STATES, TrialState.FAIL))
    ran = [trial for trial in ended if trial.number not in retried]
    left = None if plan.n_trials is None else plan.n_trials - len(ran)
    replacement = None
    if (ran or running) and left != 0 and not (plan.deadline is not None and time.time() >= plan.deadline):
        (seed,) = worker_seeds(plan.seed, 1, generation + 1, plan.config.study.sampler)  # not the dead one's samples
        replacement = dataclasses.replace(plan, n_trials=left, seed=seed)
    told = tuple(text for _, text in outcomes)
    return WorkerDeath(plan.worker_index, pid, cause, told, replacement is not None), replacement


def run_study(
    study_name: str,
    storage_url: str,
    config: Config,
    data_dir: Path,
    limits: RunLimits,
    n_jobs: int,
    seed: int | None,
    force: bool = False,
) -> StudyRun:
    """Add trials to the study with n_jobs worker processes until a limit is reached. Without a seed (--seed)
    the run draws one, so that runs on other machines sample other recipes.

    Raises StudyInterrupted after a Ctrl-C, once the running trials were failed and queued again.
    """
    from data.corpus import load_corpus
    from data.tokenizer import Tokenizer
    from hpo.status import record_run  # which imports this module

    started = time.time()
    run_seed = draw_run_seed() if seed is None else seed
    study = open_study(study_name, storage_url, config, run_seed, force)
    counted = len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
    n_trials = limits.trials_to_add(counted)
    if n_trials == 0:
        print(f"study {study_name!r} already has {counted} trials (--max_trials {limits.max_trials}): nothing to add")
        return StudyRun(study)
    where = displayed_url(storage_url)
    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    so_far = f"{len(study.trials) - queued} trials so far" + (f" ({queued} queued to run first)" if queued else "")
    sampler_seed = study_sampler_seed(study, config.study, run_seed)
    drawn = " (drawn at random; --seed repeats it)" if seed is None and sampler_seed == run_seed else ""
    print(
        f"study {study_name!r} in {where}: {so_far}, {limits.describe(n_trials)}, {n_jobs} worker(s), "
        f"sampler seed {sampler_seed}{drawn}"
    )
    record_run(study, n_trials, n_jobs, limits.timeout)
    try:
        # Tokenise (or find the cache) once here, so the workers never race to build it.
        load_corpus(data_dir, config.data, Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken"))
        print(f"corpus ready in {time.time() - started:.0f} s", flush=True)
        common = WorkerPlan(
            study_name,
            storage_url,
            config,
            data_dir,
            sampler_seed,
            parent_pid=os.getpid(),
            deadline=None if limits.timeout is None else started + limits.timeout,
            max_trials=limits.max_trials,
        )
        plans = worker_plans(common, n_trials, n_jobs, existing=len(study.trials))
        if len(plans) == 1:
            run_worker(plans[0], Interruption())
            deaths = []
        else:
            deaths = run_processes(plans)
    except KeyboardInterrupt:
        raise StudyInterrupted(len(study.get_trials(deepcopy=False, states=FINISHED_STATES))) from None
    return StudyRun(optuna.load_study(study_name=study_name, storage=make_storage(storage_url, config.study)), deaths)
