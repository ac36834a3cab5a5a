"""Worker processes on a shared study: each runs its share of the trials; the parent spawns them, passes a
Ctrl-C on, and replaces a worker that dies after failing and retrying its running trial."""

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from threadpoolctl import threadpool_limits

from data.machine import usable_cpus
from hpo.config import Config, run_config_key
from hpo.curves import publish_trial_curve, save_study_figure
from hpo.interruption import INTERRUPTED_EXIT_CODE, Interruption, sigint_handled_by
from hpo.sampling import make_pruner, make_sampler
from hpo.storage import NothingQueued, make_storage
from hpo.study_values import RUN_CONFIG_ATTR, outcome, ranked_trials
from hpo.supervision import WorkerDeath, exit_cause, fail_and_retry, sign_trial, trials_of, worker_id
from hpo.trial_logs import TrialLogs, logs_folder

# What --max_trials counts: every trial that ran or runs. Queued (WAITING) trials do not count.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials whose results a run keeps
WORKER_STOP_SECONDS = 30  # after a Ctrl-C: how long a worker may take to fail and queue its trial


def pretrain_and_probe(config: Config, data_dir: Path) -> Callable[[optuna.Trial], float]:
    """The function the study optimises: pretrain the trial's recipe and probe it, with the resources loaded once."""
    from hpo.trial import PretrainAndProbe, Resources  # keeps torch-heavy imports out of the parent

    return PretrainAndProbe(config, Resources.load(config, data_dir))


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
    queued_only: bool = False  # run queued trials only, and stop when none is left (hpo/planned.py)
    # (config, data_dir) -> the function the study optimises; module-level, so that a spawned worker can import it
    make_trial_function: Callable[[Config, Path], Callable[[optuna.Trial], float]] = pretrain_and_probe


def _format_trial(trial: optuna.trial.FrozenTrial, worker_index: int) -> str:
    params = " ".join(f"{name.split('.')[-1]}={_short(value)}" for name, value in trial.params.items())
    attrs = trial.user_attrs
    if trial.state == optuna.trial.TrialState.COMPLETE:
        result = outcome(trial)
    elif trial.state == optuna.trial.TrialState.PRUNED:
        result = f"pruned: {attrs.get('pruned_reason', f'at report point {trial.last_step}')}"
    else:
        result = f"{trial.state.name.lower()}: {attrs.get('fail_reason', '')}".strip(" :")
    speed = attrs.get("tokens_per_second", 0.0)
    seconds = attrs.get("wall_seconds", 0.0)
    name = f"trial {trial.number} (baseline)" if attrs.get("baseline") else f"trial {trial.number}"
    return f"[worker {worker_index}] {name}: {result} | {params} | {speed:,.0f} tokens/s | {seconds:.0f} s"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def visible_gpu(index: int) -> str:
    """CUDA_VISIBLE_DEVICES for a worker on the index-th GPU this process sees: a cluster's scheduler may
    already have narrowed the visible GPUs (e.g. "4,6"), and index 1 then means GPU 6, not GPU 1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return str(index)
    return visible.split(",")[index].strip()


@contextlib.contextmanager
def thread_limits(threads: int) -> Iterator[None]:
    """A worker's share of the cores, for every library that runs threads: PyTorch, and the BLAS and OpenMP pools
    under NumPy and scikit-learn (the probes), so that one worker's probe does not slow the others' training."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)


def publish(action: Callable[[], None], what: str) -> None:
    """Run a step that shows results in the dashboard; a disk that fails it costs the pictures, not the trial."""
    try:
        action()
    except OSError as error:
        print(f"warning: {what} not published: {error}", file=sys.stderr)


def run_worker(plan: WorkerPlan, interruption: Interruption) -> None:
    """One worker: load shared resources once, then optimise its share of the trials.

    Raises KeyboardInterrupt when `interruption` stopped it, after its running trial was failed and queued again.
    """
    if plan.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpu(plan.gpu)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pretrain_and_probe_trial = plan.make_trial_function(plan.config, plan.data_dir)
    study = optuna.load_study(
        study_name=plan.study_name,
        storage=make_storage(plan.storage_url, plan.config.study, plan.queued_only),
        sampler=make_sampler(plan.config.study, plan.seed),
        pruner=make_pruner(plan.config.study),
    )

    trial_logs = TrialLogs(logs_folder(plan.study_name), plan.worker_index)
    config_key = run_config_key(plan.config)

    def run_trial(trial: optuna.Trial) -> float:
        sign_trial(trial, plan.seed)
        trial.set_user_attr(RUN_CONFIG_ATTR, config_key)
        if plan.queued_only and (original := earlier_copy(study, trial)) is not None:
            trial.set_user_attr("fail_reason", f"not run: a copy of trial {original}, queued twice at the same time")
            raise DuplicateRun(f"trial {trial.number} is a copy of trial {original}")
        try:
            with trial_logs.capture(trial), interruption.requeue_on_stop(trial):
                return pretrain_and_probe_trial(trial)
        finally:
            publish(lambda: publish_trial_curve(trial), f"trial {trial.number}'s training curve")

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        line = _format_trial(trial, plan.worker_index)
        print(line, flush=True)
        trial_logs.append(trial.number, line)
        publish(lambda: save_study_figure(study, ranked_trials(study)), "the study's training curves")

    callbacks = [progress, interruption.stop_study]
    if plan.max_trials is not None:  # the parent's share of the cap is exact; this covers other machines' workers
        callbacks.append(MaxTrialsCallback(plan.max_trials, states=COUNTED_STATES))
    timeout = None if plan.deadline is None else max(0.0, plan.deadline - time.time())
    with sigint_handled_by(interruption), thread_limits(plan.threads):
        try:
            study.optimize(
                run_trial,
                n_trials=plan.n_trials,
                timeout=timeout,
                callbacks=callbacks,
                catch=(Exception,),
            )
        except NothingQueued:
            pass  # a plan's worker whose queue is empty: its work is done
        finally:
            interruption.requeue_stopped(study)
    if interruption.reason is not None:
        raise KeyboardInterrupt


class DuplicateRun(Exception):
    """A queued trial whose run an earlier trial already holds: it ends failed, and the plan's run counts once."""


# An earlier trial with the same queued parameters in one of these states stands for the run.
RUN_HOLDING_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def earlier_copy(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of an earlier trial queued with this trial's parameters that ran, runs or waits to run; None if
    there is none. Two commands that plan the same runs at the same moment (two terminals, two machines) may both
    queue a run: of its copies, the first to be queued runs and the later ones step aside, whichever worker claims
    them first."""
    fixed = trial.storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
    if fixed is None:  # not a queued trial
        return None
    for other in study.get_trials(deepcopy=False, states=RUN_HOLDING_STATES):
        if other.number < trial.number and other.system_attrs.get("fixed_params") == fixed:
            return other.number
    return None


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


def worker_seeds(run_seed: int, n_jobs: int, existing: int, sampler: str) -> list[int]:
    """The sampler seed of each worker of a run, derived from the run seed and the study's trial count."""
    if sampler == "qmc":  # workers walk one scrambled Sobol sequence, counted in the study: one seed for all
        return [run_seed] * n_jobs
    # Each worker of each run gets its own sampler seed, so a resumed study never replays samples.
    return [int(seed) for seed in np.random.SeedSequence([run_seed, existing]).generate_state(n_jobs)]


def worker_plans(common: WorkerPlan, n_trials: int | None, n_jobs: int, existing: int) -> list[WorkerPlan]:
    """`common` spread over n_jobs workers: each its share of the trials, its seed, its threads and its GPU. The
    workers of queued trials only start as many as there are trials, and each runs until the queue is empty."""
    gpus = torch.cuda.device_count()
    seeds = worker_seeds(common.seed, n_jobs, existing, common.config.study.sampler)
    threads = max(1, usable_cpus() // n_jobs)
    return [
        dataclasses.replace(
            common,
            n_trials=None if common.queued_only else share,
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
