"""Create or resume a study (refusing a configuration that would change what its scores mean) and run
worker processes on it until a limit is reached."""

import dataclasses
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from data.corpus import load_corpus
from data.tokenizer import Tokenizer
from hpo.config import Config, ConfigError, StudyConfig, run_config_key, stored_config
from hpo.interruption import Interruption
from hpo.sampling import make_pruner, make_sampler
from hpo.space import base_params
from hpo.status import record_study_run
from hpo.storage import displayed_url, make_storage
from hpo.study_values import RUN_CONFIGS_ATTR
from hpo.supervision import WorkerDeath
from hpo.versions import software_versions
from hpo.workers import COUNTED_STATES, FINISHED_STATES, WorkerPlan, run_processes, run_worker, worker_plans
from training.config import TRIAL_ROLES, config_to_dict, role_of

DEFAULT_N_TRIALS = 10
WORKER_DIED_EXIT_CODE = 3  # the run finished, but a worker process died on the way (2: a user's error)

# Resuming: would a score mean something else now? -------------------------------------------------

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


def stored_base_config(stored: dict) -> Config | None:
    """The stored base config with keys added to the code since filled in by what their absence meant
    (hpo.config.LEGACY_DEFAULTS), which then do not count as changes; None when it no longer loads (a key was
    removed or retyped: it is then compared as stored)."""
    try:
        return stored_config(stored)
    except ConfigError:
        return None


def inert_keys(config: Config | None) -> set[str]:
    """Dotted keys that change nothing in runs of this configuration; none when its search space samples the
    parametrisation (a comparison's grid of standard and mup) or it no longer loads."""
    if config is None or "parametrization" in config.search_space.get("model", {}):
        return set()
    return {f"model.{key}" for key in config.model.inert_keys()}


def restoring_flags(stored: dict, keys: list[str]) -> str | None:
    """The --set flags that give `keys` their stored values again (after an update of config.yaml, say), or None
    when one of them has no such flag (a key the study did not have, a mapping) or there are too many to read."""
    flags = []
    for key in keys:
        value: Any = stored
        for part in key.split("."):
            value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
        written = _flag_value(value)
        if written is None:
            return None
        flags.append(f"--set {key}={written}")
    return " ".join(flags) if 0 < len(flags) <= SHOWN_KEYS else None


def _flag_value(value: Any) -> str | None:
    """A scalar or a list of scalars as --set reads it (YAML), or None."""
    if isinstance(value, list):
        items = [_flag_value(item) for item in value]
        return None if None in items or any(isinstance(item, list) for item in value) else f"[{', '.join(items)}]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value) if isinstance(value, (str, int, float)) else None


def _some(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def check_config_unchanged(study: optuna.Study, config: Config, force: bool) -> None:
    """Refuse to add trials whose scores would mean something else than the study's earlier ones, unless
    forced; a forced change is recorded in the study's user attr "config_changes"."""
    raw = study.user_attrs["base_config"]
    stored = stored_base_config(raw)
    stored_dict = raw if stored is None else config_to_dict(stored)
    changed = differing_keys(stored_dict, config_to_dict(config))
    # A setting that does nothing under both configurations (mup's under standard) changes no score.
    inert = inert_keys(config) & inert_keys(stored)
    changed = [key for key in changed if key not in inert]
    # A key the configuration no longer has (removed since the study began) counts as a change of meaning.
    scoring = [key for key in changed if role_of(Config, key) in (*TRIAL_ROLES, None)]
    harmless = [key for key in changed if key not in scoring]
    if scoring and not force:
        restore = restoring_flags(stored_dict, scoring)
        raise ConfigError(
            f"study {study.study_name!r} was created with a different configuration: {_some(scoring)} differ; "
            + (f"to resume it as it was created: {restore}; else " if restore else "")
            + "use a new --study_name, or pass --force to continue anyway"
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
    record_run_config(study, config)
    return study


def record_run_config(study: optuna.Study, config: Config) -> None:
    """Keep the configuration this run's trials use (before their params) in the study, under its key, which
    each trial records (RUN_CONFIG_ATTR): after a --force resume every trial still rebuilds into what it ran."""
    stored = study.user_attrs.get(RUN_CONFIGS_ATTR, {})
    key = run_config_key(config)
    if key not in stored:
        study.set_user_attr(RUN_CONFIGS_ATTR, {**stored, key: config_to_dict(config)})


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


@dataclasses.dataclass(frozen=True)
class RunLimits:
    """When a run stops adding trials: at the first limit reached. None: no such limit."""

    n_trials: int | None = None  # trials to add in this run
    max_trials: int | None = None  # trials in the study (COUNTED_STATES), this run's and earlier ones
    timeout: float | None = None  # seconds from the run's start after which no trial starts
    queued_only: bool = False  # run queued trials only (a plan's, hpo/planned.py): no worker samples one

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
        if self.queued_only:
            return f"running its {n_trials} queued trial(s) and no others"
        parts = [f"adding {n_trials if n_trials is not None else 'trials'}"]
        if self.max_trials is not None:
            parts.append(f"up to {self.max_trials} in the study")
        if self.timeout is not None:
            parts.append(f"starting none after {self.timeout:g} s")
        return ", ".join(parts)


class StudyInterrupted(KeyboardInterrupt):
    """A Ctrl-C ended the run after its running trials were failed and queued again."""

    def __init__(self, finished: int):
        super().__init__(f"{finished} finished trials are saved; run the same command to resume")


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """What a run leaves: the study, and the worker processes that died on the way."""

    study: optuna.Study
    worker_deaths: list[WorkerDeath] = dataclasses.field(default_factory=list)


def draw_run_seed() -> int:
    """A run seed when --seed is not given: other machines and runs then sample other recipes. 32 bits,
    as NumPy's RandomState (under the random and QMC samplers) takes no more."""
    return secrets.randbits(32)


def study_sampler_seed(study: optuna.Study, config: StudyConfig, run_seed: int) -> int:
    """The seed of this run's samplers: the run seed, except under QMC, whose workers on every machine and
    in every run share the seed kept in the study's user attr "qmc_seed" (set by the first run)."""
    if config.sampler != "qmc":
        return run_seed
    if "qmc_seed" not in study.user_attrs:
        study.set_user_attr("qmc_seed", run_seed)
    return study.user_attrs["qmc_seed"]  # read back: another machine's run may have set it first


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
    record_study_run(study, n_trials, n_jobs, limits.timeout)
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
            queued_only=limits.queued_only,
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
