"""Create or load a study, build its sampler and pruner, and run worker processes on it."""

import multiprocessing
import os
import sqlite3
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.engine import Engine

from hpo.config import Config, ConfigError, StudyConfig, config_to_dict

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
    studies_dir.mkdir(parents=True, exist_ok=True)
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
        raise ConfigError(f"cannot open study storage {url}: {error}") from error


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    if config.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler = {config.sampler!r}; expected one of {list(SAMPLERS)}")
    return SAMPLERS[config.sampler](config, seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.pruner not in PRUNERS:
        raise ConfigError(f"study.pruner = {config.pruner!r}; expected one of {list(PRUNERS)}")
    return PRUNERS[config.pruner](config)


def open_study(study_name: str, storage_url: str, config: Config, seed: int) -> optuna.Study:
    """Create the study or load it if it exists; the base config is stored with it."""
    study = optuna.create_study(
        study_name=study_name,
        storage=make_storage(storage_url, config.study),
        sampler=make_sampler(config.study, seed),
        pruner=make_pruner(config.study),
        direction="maximize",
        load_if_exists=True,
    )
    if "base_config" not in study.user_attrs:
        study.set_user_attr("base_config", config_to_dict(config))
    return study


@dataclass
class WorkerPlan:
    """What one worker process does."""

    study_name: str
    storage_url: str
    config: Config
    data_dir: Path
    n_trials: int
    worker_index: int
    threads: int
    seed: int
    gpu: int | None = None


def _format_trial(trial: optuna.trial.FrozenTrial, worker_index: int) -> str:
    params = " ".join(f"{name.split('.')[-1]}={_short(value)}" for name, value in trial.params.items())
    attrs = trial.user_attrs
    if trial.state == optuna.trial.TrialState.COMPLETE:
        outcome = f"accuracy {trial.value:.4f} ± {attrs.get('probe_standard_error', float('nan')):.4f}"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        outcome = f"pruned at step {trial.last_step} ({attrs.get('pruned_reason', '')})"
    else:
        outcome = f"{trial.state.name.lower()}: {trial.system_attrs.get('fail_reason', '')}".strip()
    speed = attrs.get("tokens_per_second", 0.0)
    seconds = attrs.get("wall_seconds", 0.0)
    return (
        f"[worker {worker_index}] trial {trial.number}: {outcome} | {params} | {speed:,.0f} tokens/s | {seconds:.0f} s"
    )


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_worker(plan: WorkerPlan) -> None:
    """One worker: load shared resources once, then optimise its share of the trials."""
    from hpo.objective import Objective, Resources  # keeps torch-heavy imports out of the parent

    if plan.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(plan.gpu)
    torch.set_num_threads(plan.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resources = Resources.load(plan.config, plan.data_dir)
    study = optuna.load_study(
        study_name=plan.study_name,
        storage=make_storage(plan.storage_url, plan.config.study),
        sampler=make_sampler(plan.config.study, plan.seed),
        pruner=make_pruner(plan.config.study),
    )

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(_format_trial(trial, plan.worker_index), flush=True)

    study.optimize(Objective(plan.config, resources), n_trials=plan.n_trials, callbacks=[progress], catch=(Exception,))


def _worker_entry(plan: WorkerPlan) -> None:
    try:
        run_worker(plan)
    except KeyboardInterrupt:
        pass


def split_trials(n_trials: int, n_jobs: int) -> list[int]:
    """n_trials spread over n_jobs workers, the first ones taking the remainder."""
    return [n_trials // n_jobs + (index < n_trials % n_jobs) for index in range(n_jobs)]


def run_study(
    study_name: str,
    storage_url: str,
    config: Config,
    data_dir: Path,
    n_trials: int,
    n_jobs: int,
    seed: int,
) -> optuna.Study:
    """Add n_trials trials to the study with n_jobs worker processes; returns the study."""
    from data.corpus import load_corpus
    from data.tokenizer import Tokenizer

    study = open_study(study_name, storage_url, config, seed)
    existing = len(study.trials)
    print(f"study {study_name!r} in {storage_url}: {existing} trials so far, adding {n_trials} with {n_jobs} worker(s)")
    started = time.perf_counter()
    # Tokenise (or find the cache) once here, so the workers never race to build it.
    load_corpus(data_dir, config.data, Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken"))
    print(f"corpus ready in {time.perf_counter() - started:.0f} s", flush=True)
    gpus = torch.cuda.device_count()
    # Each worker of each run gets its own sampler seed, so a resumed study never replays samples.
    seeds = np.random.SeedSequence([seed, existing]).generate_state(n_jobs)
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    plans = [
        WorkerPlan(
            study_name,
            storage_url,
            config,
            data_dir,
            share,
            index,
            threads,
            int(seeds[index]),
            gpu=index % gpus if gpus else None,
        )
        for index, share in enumerate(split_trials(n_trials, n_jobs))
        if share > 0
    ]
    if len(plans) == 1:
        run_worker(plans[0])
    else:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_worker_entry, args=(plan,)) for plan in plans]
        for process in processes:
            process.start()
        try:
            for process in processes:
                process.join()
        except KeyboardInterrupt:
            for process in processes:
                process.join()
            raise
        failed = [p.exitcode for p in processes if p.exitcode]
        if failed:
            print(f"warning: {len(failed)} worker(s) exited with codes {failed}", file=sys.stderr)
    return optuna.load_study(study_name=study_name, storage=make_storage(storage_url, config.study))
