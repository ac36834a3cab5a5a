"""Does the best learning rate carry across width (and depth)? Tensor Programs V's Fig. 1 on our model and probe:
a sweep of the peak LR at several widths, under the standard parametrisation and under muP (issue 28, items 3-4).

    python -m bench.width_transfer                  # widths 128, 256, 512 x LR x0.25..x4 x standard, mup x seeds 1, 2
    python -m bench.width_transfer --depths 2,4,8   # the same at depths 2, 4, 8, width 128 (depth_transfer.*)
    python -m bench.width_transfer --jobs 2 --tokens 2e6 --set masking.strategy=span
    python -m bench.width_transfer --summarize bench/results/width_transfer.json   # its tables again, no run

Each run is config.yaml's recipe with the peak LR (train.learning_rate) at a multiple of config.yaml's (the token
table's LR follows it: train.embedding_lr_multiplier is fixed), at one width (heads grow with it: the head size
stays config.yaml's, 64) and depth, under one parametrisation (model.base_width: config.yaml's, 128, the study's
width; at that width mup differs from standard only in the attention: logits q.k / head size, zero query
projection), with one train.seed: every cell runs the same seeds, so the same data order, and at a width the same
initial weights whatever its LR. The budget is TOKENS (1M, config.yaml's schedule: constant after a 5% warm-up):
what a 512-wide run affords on one CPU thread (about 9 minutes of training, against 1 at 128 wide). A run is
scored twice: by its validation loss (the smoother metric) and by the probe's gain over its own random-init
encoder (the user's metric: AG News, 5-fold CV, the same rows and folds; the random init's score is computed once
per architecture and seed and kept in WORK). A run whose loss goes non-finite stops and is recorded as diverged.

Runs go one thread each, `--jobs` at a time, the widest first. A finished run is read back from
WORK/NAME_KEY.json (KEY: a digest of every setting that shapes it, the --set overrides, tokens and seed included),
never run again; an interrupted one resumes from its checkpoint (WORK/NAME_KEY.partial.pt, saved every
CHECKPOINT_SECONDS of training), so a long sweep can be stopped and started again.

Writes OUTPUT/width_transfer.md (or depth_transfer.md with --depths): per metric and parametrisation, the LR by
width table (mean ± SE over seeds), the best LR per width by the mean and by each seed, and how many grid steps
(x2) it moves from the narrowest to the widest, the narrowest's best LR carried to the widest against the
widest's own best (paired over seeds); at the base width, mup minus standard paired over seeds (the attention's
effect alone); .json (every run's figures) and .png (metric against LR, one curve per width). `--summarize
FILE.json` writes these again from a saved sweep's runs (a sweep made before a change to config.yaml, whose
runs' keys no longer match it), training nothing.
Depth runs keep the residual branches unscaled (no CompleteP-style 1/depth factor): they measure whether the
LRs carry across depth without one. Their WORK is the width sweep's, so their 2-layer, 128-wide runs are read back.
"""

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.cli import numbers, run_cli
from hpo.config import Config, load_config
from hpo.statistics import mean_and_standard_error
from training.config import ConfigError, settings_with_roles

if typing.TYPE_CHECKING:
    from training.probe import Probe

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # of config.yaml's peak LR, 2e-3: a grid of x2 steps
WIDTHS = (128, 256, 512)
PARAMETRIZATIONS = ("standard", "mup")
SEEDS = (1, 2)
TOKENS = 1_000_000
CHECKPOINT_SECONDS = 300.0  # of training between checkpoints (a 512-wide run's is ~0.4 GB: tables and Adam's moments)
KEY_ROLES = ("start", "train", "probe")  # what shapes a run's figures (not locations, cadence, the search space)


@dataclass(frozen=True)
class Metric:
    """How a run is scored, and how its values read in the tables."""

    label: str
    higher_is_better: bool
    factor: float  # stored value -> shown value (a gain in points)
    digits: int
    signed: bool  # a shown value carries its sign

    def format(self, value: float, signed: bool | None = None) -> str:
        sign = "+" if (self.signed if signed is None else signed) else ""
        return f"{self.factor * value:{sign}.{self.digits}f}"


METRICS = {
    "validation_loss": Metric("validation loss", higher_is_better=False, factor=1, digits=3, signed=False),
    "gain": Metric("probe gain over random init (points)", higher_is_better=True, factor=100, digits=1, signed=True),
}


@dataclass(frozen=True)
class Run:
    """One cell of the sweep on one seed."""

    parametrization: str
    width: int
    depth: int
    scale: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.parametrization}_w{self.width}_d{self.depth}_lr{self.scale:g}_seed{self.seed}"

    @property
    def cost(self) -> int:
        """Proportional to a step's compute (the blocks' matrices): what orders the runs and paces the time left."""
        return self.width**2 * self.depth


@dataclass(frozen=True)
class Plan:
    """The sweep's grid: the axis that varies (width, or depth at one width), LR scales, seeds, parametrisations."""

    axis: str  # "width" or "depth"
    widths: list[int]
    depths: list[int]
    scales: list[float]  # ascending
    seeds: list[int]
    parametrizations: list[str]
    peak: float  # config.yaml's peak LR, scale 1
    base_width: int  # model.base_width: where mup and standard differ only in the attention

    @property
    def values(self) -> list[int]:
        return self.widths if self.axis == "width" else self.depths

    def column_name(self, value: int) -> str:
        return f"{value} wide" if self.axis == "width" else f"{value} layers"

    def width_of(self, value: int) -> int:
        return value if self.axis == "width" else self.widths[0]

    @property
    def grid_step(self) -> float:
        """The LR grid's mean ratio between neighbours (2 by default)."""
        return math.exp(float(np.mean(np.diff(np.log(self.scales))))) if len(self.scales) > 1 else math.nan

    def runs(self) -> list[Run]:
        return [
            Run(parametrization, width, depth, scale, seed)
            for parametrization in self.parametrizations
            for width in self.widths
            for depth in self.depths
            for scale in self.scales
            for seed in self.seeds
        ]


@dataclass(frozen=True)
class Sweep:
    """What every run of the sweep shares."""

    tokens: int
    overrides: tuple[str, ...] = ()
    work: Path = Path("studies/bench/width_transfer")
    checkpoint_seconds: float = CHECKPOINT_SECONDS

    @functools.cached_property
    def base(self) -> Config:
        """config.yaml with the --set overrides."""
        return load_config(PROJECT_DIR / "config.yaml", list(self.overrides))

    def config(self, run: Run) -> Config:
        """The base config at the run's shape, parametrisation, LR, seed and token budget."""
        base = self.base
        head_size = base.model.hidden_size // base.model.num_heads
        if run.width % head_size:
            raise ConfigError(f"width {run.width} is not a multiple of the head size {head_size} (config.yaml's)")
        model = dataclasses.replace(
            base.model,
            parametrization=run.parametrization,
            hidden_size=run.width,
            num_heads=run.width // head_size,
            num_layers=run.depth,
        )
        train = dataclasses.replace(
            base.train,
            learning_rate=base.train.learning_rate * run.scale,
            seed=run.seed,
            budget_seconds=None,
            budget_tokens=self.tokens,
        )
        config = dataclasses.replace(base, model=model, train=train)
        config.validate_sections()  # the search space is the base's, checked when it loaded
        return config

    def path(self, run: Run) -> Path:
        """WORK/NAME_KEY.json, KEY a digest of everything that shapes the run: another sweep never reads it."""
        settings = settings_with_roles(self.config(run), KEY_ROLES)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        return self.work / f"{run.name}_{key}.json"


def random_init_probe(config: Config, probe: "Probe", vocab_size: int, work: Path) -> tuple[float, np.ndarray]:
    """(accuracy, rows right) of the run's encoder before any training, computed once per architecture and seed
    (hpo.trial.architecture_key: every LR of a width and seed starts from these weights) and kept in WORK."""
    import torch

    from hpo.trial import architecture_key
    from training.pretrain import random_init_encoder
    from training.results import pack_correct, unpack_correct
    from training.retrain import atomic_write

    path = work / f"random_init_{architecture_key(config)}.json"
    if not path.exists():
        device = torch.device("cpu")
        result = probe.score(random_init_encoder(config, vocab_size, device), device, config.probe.folds)
        text = json.dumps({"accuracy": result.accuracy, "correct": pack_correct(result.correct)}).encode()
        atomic_write(path, lambda handle: handle.write(text))
    saved = json.loads(path.read_text())
    return saved["accuracy"], unpack_correct(saved["correct"], len(probe.labels))


def run_once(run: Run, sweep: Sweep) -> dict:
    """The run's figures: read back if it finished before; else trained (resumed from its checkpoint if one was
    left), probed and saved."""
    path = sweep.path(run)
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from data.agnews import load_agnews
    from data.corpus import load_corpus
    from data.files_location import resolve_data_dir
    from data.tokenizer import Tokenizer
    from training.pretrain import Pretrainer
    from training.probe import Probe
    from training.results import paired_gain
    from training.retrain import atomic_write

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = sweep.config(run)
        data_dir = resolve_data_dir()
        tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
        corpus = load_corpus(data_dir, config.data, tokenizer)
        probe = Probe(load_agnews(data_dir)[0], tokenizer, config.probe)
        device = torch.device("cpu")
        trainer = Pretrainer(config, corpus, tokenizer, device)
        partial = path.with_suffix(".partial.pt")
        sweep.work.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            trainer.load_state_dict(torch.load(partial, map_location=device, weights_only=False))
        print(f"start {run.name}: LR {config.train.learning_rate:.2e}, from step {trainer.step:,}", flush=True)
        random_init_accuracy, random_init_correct = random_init_probe(config, probe, tokenizer.vocab_size, sweep.work)
        diverged_at = None
        saved = time.perf_counter()
        while not trainer.finished:
            loss = trainer.train_step().loss
            if not math.isfinite(loss):
                diverged_at = trainer.step
                break
            if time.perf_counter() - saved >= sweep.checkpoint_seconds and not trainer.finished:
                atomic_write(partial, lambda handle: torch.save(trainer.state_dict(), handle))
                saved = time.perf_counter()
        figures = {
            **dataclasses.asdict(run),
            "learning_rate": config.train.learning_rate,
            "tokens": trainer.tokens_seen,
            "steps": trainer.step,
            "parameters": trainer.num_parameters,
            "train_seconds": trainer.train_seconds,
            "random_init_accuracy": random_init_accuracy,
            "diverged_at_step": diverged_at,
            "validation_loss": None,
            "accuracy": None,
            "gain": None,
            "gain_standard_error": None,
        }
        if diverged_at is None:
            validation_loss = trainer.validation_loss()
            result = probe.score(trainer.model, device, config.probe.folds)
            if math.isfinite(validation_loss) and math.isfinite(result.accuracy):
                gain, error = paired_gain(result.correct, random_init_correct)
                figures.update(validation_loss=validation_loss, accuracy=result.accuracy, gain=gain)
                figures["gain_standard_error"] = error
            else:
                figures["diverged_at_step"] = trainer.step
        text = json.dumps(figures, indent=1).encode()
        atomic_write(path, lambda handle: handle.write(text))
        partial.unlink(missing_ok=True)
        return figures
    finally:
        torch.set_num_threads(threads)


def describe(figures: dict) -> str:
    if figures["diverged_at_step"] is not None:
        return f"diverged at step {figures['diverged_at_step']:,}"
    return f"validation loss {figures['validation_loss']:.3f}, gain {100 * figures['gain']:+.1f} points"


class Pace:
    """Runs done of those to run, and the time left at the pace of the compute done so far."""

    def __init__(self, pending: list[Run]):
        self.started = time.perf_counter()
        self.runs, self.done = len(pending), 0
        self.cost, self.cost_done = sum(run.cost for run in pending), 0

    def finished(self, run: Run) -> str:
        self.done += 1
        self.cost_done += run.cost
        left = (time.perf_counter() - self.started) * (self.cost - self.cost_done) / self.cost_done
        return f"{self.done} of {self.runs} runs, about {left / 3600:.1f} h left at this pace"


def attempt(task: tuple[Run, Sweep]) -> tuple[Run, dict | None, str | None]:
    """run_once, in this process or a worker: the run, its figures, or why it failed (the other runs go on)."""
    run, sweep = task
    try:
        return run, run_once(run, sweep), None
    except Exception as error:
        return run, None, f"{type(error).__name__}: {error}"


def run_all(runs: list[Run], sweep: Sweep, jobs: int) -> list[dict]:
    """Every run's figures, in the given order: the finished ones read back, the others run `jobs` at a time
    (in this process with one job), the costliest first so that the pool ends together. A run that fails is said
    and left out, the others go on; a stop (Ctrl-C, kill -INT) ends the workers, whose checkpoints stay."""
    pending = sorted((run for run in runs if not sweep.path(run).exists()), key=lambda run: -run.cost)
    resuming = sum(sweep.path(run).with_suffix(".partial.pt").exists() for run in pending)
    resumed = f" ({resuming} from a checkpoint)" if resuming else ""
    finished_before = f"{len(runs) - len(pending)} of {len(runs)} runs finished before"
    print(f"{finished_before}; {len(pending)} to run{resumed}, {jobs} at a time")
    pace = Pace(pending)
    tasks = [(run, sweep) for run in pending]
    failed = []
    os.environ["CI"] = "1"  # no progress bars from the runs
    with multiprocessing.Pool(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        for run, figures, error in pool.imap_unordered(attempt, tasks) if pool else map(attempt, tasks):
            if error is None:
                print(f"done  {run.name}: {describe(figures)}; {pace.finished(run)}", flush=True)
            else:  # a rerun of the command retries it
                failed.append(run.name)
                print(f"failed {run.name}: {error}", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed ({', '.join(failed)}): run the same command again to retry them")
    return [json.loads(sweep.path(run).read_text()) for run in runs if sweep.path(run).exists()]


# The summary: cells, the best LR per column, how far it moves ------------------------------------------------

Cells = dict[tuple[str, int, float], list[dict]]  # (parametrisation, width or depth, LR scale) -> its runs


def cells_of(runs: list[dict], axis: str) -> Cells:
    cells: Cells = {}
    for run in runs:
        cells.setdefault((run["parametrization"], run[axis], run["scale"]), []).append(run)
    return cells


def cell_mean(runs: list[dict], metric: str, seed: int | None = None) -> float | None:
    """The metric's mean over the cell's runs (`seed`'s only when given); None when one diverged or none finished:
    such a cell is never the best."""
    values = [run[metric] for run in runs if seed in (None, run["seed"])]
    if not values or any(value is None for value in values):
        return None
    return mean_and_standard_error(values)[0]


def best_scales(cells: Cells, metric: str, column: tuple[str, int], scales: list[float], seeds: list[int]) -> dict:
    """The column's best LR scale by the metric's mean over seeds ("mean") and by each seed's value alone (seed):
    None where every cell diverged or is missing."""
    better = max if METRICS[metric].higher_is_better else min
    chosen = {}
    for who in ["mean", *seeds]:
        seed = None if who == "mean" else who
        means = {scale: cell_mean(cells.get((*column, scale), []), metric, seed) for scale in scales}
        finite = {scale: mean for scale, mean in means.items() if mean is not None}
        chosen[who] = better(finite, key=finite.get) if finite else None
    return chosen


def cell_text(runs: list[dict], metric: str, bold: bool) -> str:
    """mean ± SE over seeds, "diverged (k of n)", or – for a cell not run."""
    if not runs:
        return "–"
    diverged = sum(run[metric] is None for run in runs)
    if diverged:
        return f"diverged ({diverged} of {len(runs)})"
    shown = METRICS[metric]
    mean, error = mean_and_standard_error([run[metric] for run in runs])
    text = shown.format(mean) + (f" ± {shown.format(error, signed=False)}" if len(runs) > 1 else "")
    return f"**{text}**" if bold else text


def table_lines(cells: Cells, metric: str, parametrization: str, plan: "Plan", best: dict) -> list[str]:
    """One metric under one parametrisation: rows LR, columns width (or depth), then the best LR per column."""
    lines = [
        f"### {METRICS[metric].label}, {parametrization}",
        "",
        "| LR | " + " | ".join(plan.column_name(value) for value in plan.values) + " |",
        "|---:|" + "---:|" * len(plan.values),
    ]
    for scale in plan.scales:
        texts = [
            cell_text(cells.get((parametrization, value, scale), []), metric, best[value]["mean"] == scale)
            for value in plan.values
        ]
        lines.append(f"| {scale * plan.peak:.2e} (x{scale:g}) | " + " | ".join(texts) + " |")
    for who in ["mean", *plan.seeds] if len(plan.seeds) > 1 else ["mean"]:
        shown = [f"x{best[value][who]:g}" if best[value][who] is not None else "–" for value in plan.values]
        lines.append(f"| {'best LR' if who == 'mean' else f'best, seed {who}'} | " + " | ".join(shown) + " |")
    return [*lines, ""]


def steps_moved(best: dict, plan: "Plan") -> dict:
    """Grid steps the best LR moves from the first width (or depth) to the last, by the mean and by each seed;
    + is towards a higher LR; None where either end has no best."""
    first, last = best[plan.values[0]], best[plan.values[-1]]
    return {
        who: None
        if first[who] is None or last[who] is None
        else plan.scales.index(last[who]) - plan.scales.index(first[who])
        for who in ["mean", *plan.seeds]
    }


def moves_lines(best: dict, moves: dict, plan: "Plan") -> list[str]:
    first, last = (plan.column_name(value) for value in (plan.values[0], plan.values[-1]))
    lines = [
        f"### How far the best LR moves from {first} to {last}",
        "",
        f"Grid steps (each x{plan.grid_step:.2f}; + towards a higher LR), by the mean over seeds and by each seed "
        "alone (the seeds' disagreement is the reading's noise). Target under mup: at most one step on both metrics.",
        "",
        f"| parametrisation | metric | best at {first} | best at {last} | steps |"
        + "".join(f" seed {seed} |" for seed in plan.seeds),
        "|---|---|---:|---:|---:|" + "---:|" * len(plan.seeds),
    ]
    for parametrization, by_metric in moves.items():
        for metric, steps in by_metric.items():
            ends = [best[parametrization][metric][value]["mean"] for value in (plan.values[0], plan.values[-1])]
            texts = ["–" if end is None else f"x{end:g}" for end in ends]
            texts += ["–" if steps[who] is None else f"{steps[who]:+d}" for who in ["mean", *plan.seeds]]
            lines.append(f"| {parametrization} | {METRICS[metric].label} | " + " | ".join(texts) + " |")
    return [*lines, ""]


def runs_by_key(runs: list[dict], plan: "Plan") -> dict[tuple, dict]:
    """(parametrisation, width or depth, LR scale, seed) -> the run."""
    return {(run["parametrization"], run[plan.axis], run["scale"], run["seed"]): run for run in runs}


def difference_text(metric: str, differences: list[float]) -> str:
    """Paired differences as shown: signed mean, ± SE where there are several."""
    shown = METRICS[metric]
    mean, error = mean_and_standard_error(differences)
    return shown.format(mean, signed=True) + (f" ± {shown.format(error, signed=False)}" if len(differences) > 1 else "")


def carried(runs: list[dict], plan: "Plan", best: dict) -> dict:
    """The LR tuned at the first width (or depth) carried to the last, against the last one's own best: per
    parametrisation and metric, {"carried": scale, "best": scale, "difference": [carried - best by seed], "mean",
    "standard_error", "within_one_se"} (the issue's test of a transfer: the carried recipe within one standard
    error of the best the wide model could have had); None where a best is missing or a run diverged."""
    by_key = runs_by_key(runs, plan)
    first, last = plan.values[0], plan.values[-1]
    found: dict = {}
    for parametrization, by_metric in best.items():
        for metric, chosen in by_metric.items():
            scale, target = chosen[first]["mean"], chosen[last]["mean"]
            entry = None
            if scale is not None and target is not None:
                pairs = [
                    [by_key.get((parametrization, last, s, seed), {}).get(metric) for s in (scale, target)]
                    for seed in plan.seeds
                ]
                if all(None not in pair for pair in pairs):
                    difference = [here - there for here, there in pairs]
                    mean, error = mean_and_standard_error(difference)
                    within = scale == target or (len(difference) > 1 and abs(mean) <= error)
                    entry = {
                        "carried": scale,
                        "best": target,
                        "difference": difference,
                        "mean": mean,
                        "standard_error": error,
                        "within_one_se": within,
                    }
            found.setdefault(parametrization, {})[metric] = entry
    return found


def carried_lines(found: dict, plan: "Plan") -> list[str]:
    first, last = (plan.column_name(value) for value in (plan.values[0], plan.values[-1]))
    lines = [
        f"### The best LR at {first} carried to {last}, against the best there",
        "",
        f"At {last}: the run at the best LR of {first} minus the run at the best LR of {last}, paired over seeds "
        "(mean ± SE; 0 where the two are the same LR). Target under mup: within one standard error of the best.",
        "",
        f"| parametrisation | metric | LR carried | best at {last} | carried - best | within one SE |",
        "|---|---|---:|---:|---:|---|",
    ]
    for parametrization, by_metric in found.items():
        for metric, entry in by_metric.items():
            if entry is None:
                lines.append(f"| {parametrization} | {METRICS[metric].label} | – | – | – | – |")
                continue
            difference = difference_text(metric, entry["difference"])
            lines.append(
                f"| {parametrization} | {METRICS[metric].label} | x{entry['carried']:g} | x{entry['best']:g} | "
                f"{difference} | {'yes' if entry['within_one_se'] else 'no'} |"
            )
    return [*lines, ""]


def attention_lines(runs: list[dict], plan: "Plan") -> list[str]:
    """mup minus standard, paired over seeds, where the width is the base width: there the two differ only in the
    attention (logits q.k / head size instead of / sqrt(head size), and a zero query projection at the start)."""
    at_base = [value for value in plan.values if plan.width_of(value) == plan.base_width]
    if not at_base or {run["parametrization"] for run in runs} != set(PARAMETRIZATIONS):
        return []
    columns = [(value, metric) for value in at_base for metric in METRICS]
    lines = [
        f"### mup minus standard at the base width ({plan.base_width}): the attention's effect alone",
        "",
        "Paired over seeds (mean ± SE of the per-seed differences); – where a run diverged or is missing.",
        "",
        "| LR | " + " | ".join(f"{plan.column_name(v)}: {METRICS[m].label}" for v, m in columns) + " |",
        "|---:|" + "---:|" * len(columns),
    ]
    by_key = runs_by_key(runs, plan)
    for scale in plan.scales:
        texts = []
        for value, metric in columns:
            pairs = [
                [by_key.get((p, value, scale, seed), {}).get(metric) for p in ("mup", "standard")]
                for seed in plan.seeds
            ]
            differences = [mup - standard for mup, standard in pairs if mup is not None and standard is not None]
            if len(differences) < len(plan.seeds):
                texts.append("–")
                continue
            texts.append(difference_text(metric, differences))
        lines.append(f"| x{scale:g} | " + " | ".join(texts) + " |")
    return [*lines, ""]


def summarize(runs: list[dict], plan: "Plan") -> tuple[list[str], dict]:
    """The markdown lines, and the best LR scales (best[parametrisation][metric][width or depth] -> {"mean": scale,
    seed: scale}) with the grid steps they move (moves[parametrisation][metric] -> {"mean": steps, seed: steps})."""
    cells = cells_of(runs, plan.axis)
    parametrizations = [p for p in PARAMETRIZATIONS if any(run["parametrization"] == p for run in runs)]
    lines = [
        f"Peak LR = scale x {plan.peak:g} (config.yaml's; the token table's x train.embedding_lr_multiplier, "
        f"fixed); {max(run['tokens'] for run in runs):,} tokens a run; mean ± SE over train.seed "
        f"{', '.join(map(str, plan.seeds))} (every cell the same seeds: the same data order and, at a {plan.axis}, "
        f"the same initial weights); model.base_width {plan.base_width}. Bold: a column's best LR by the mean (a "
        "cell with a diverged run is never the best).",
        "",
    ]
    best: dict = {}
    moves: dict = {}
    for metric in METRICS:
        for parametrization in parametrizations:
            chosen = {
                value: best_scales(cells, metric, (parametrization, value), plan.scales, plan.seeds)
                for value in plan.values
            }
            best.setdefault(parametrization, {})[metric] = chosen
            moves.setdefault(parametrization, {})[metric] = steps_moved(chosen, plan)
            lines += table_lines(cells, metric, parametrization, plan, chosen)
    lines += moves_lines(best, moves, plan)
    transfer = carried(runs, plan, best)
    lines += carried_lines(transfer, plan)
    lines += attention_lines(runs, plan)
    return lines, {"best": best, "moves": moves, "carried": transfer}


def plot(runs: list[dict], plan: Plan, path: Path) -> None:
    """Tensor Programs V's Fig. 1: each metric against the peak LR (log axis), one curve per width (or depth),
    standard beside mup; error bars ± SE over seeds; cells with a diverged run left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cells_of(runs, plan.axis)
    parametrizations = [p for p in PARAMETRIZATIONS if any(run["parametrization"] == p for run in runs)]
    figure, axes = plt.subplots(
        len(METRICS), len(parametrizations), figsize=(5 * len(parametrizations), 3.5 * len(METRICS)), squeeze=False
    )
    for row, (metric, shown) in enumerate(METRICS.items()):
        for column, parametrization in enumerate(parametrizations):
            subplot = axes[row][column]
            for index, value in enumerate(plan.values):
                points = []
                for scale in plan.scales:
                    values = [run[metric] for run in cells.get((parametrization, value, scale), [])]
                    if values and None not in values:
                        mean, error = mean_and_standard_error(values)
                        points.append((scale * plan.peak, mean, 0.0 if math.isnan(error) else error))
                if points:
                    x, y, error = (np.array(column_values) for column_values in zip(*points, strict=True))
                    subplot.errorbar(
                        x,
                        shown.factor * y,
                        yerr=shown.factor * error,
                        fmt="o-",
                        color=f"C{index}",
                        capsize=2,
                        label=plan.column_name(value),
                    )
            subplot.set_xscale("log")
            grid = [scale * plan.peak for scale in plan.scales]
            subplot.set_xticks(grid, [f"{rate:.1e}" for rate in grid], fontsize=7)  # the grid's LRs alone
            subplot.minorticks_off()
            subplot.set_title(parametrization, fontsize=10)
            subplot.set_xlabel("peak learning rate")
            subplot.set_ylabel(shown.label)
            subplot.grid(alpha=0.3)
            subplot.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def names(text: str) -> list[str]:
    """An argparse type: comma-separated parametrisations."""
    chosen = text.split(",")
    unknown = [name for name in chosen if name not in PARAMETRIZATIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(PARAMETRIZATIONS)}; got {text!r}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scales", type=numbers(float), default=",".join(map(str, SCALES)), help="peak LR multiples of config.yaml's"
    )
    parser.add_argument("--widths", type=numbers(int), help="hidden sizes (default 128,256,512; with --depths 128)")
    parser.add_argument("--depths", type=numbers(int), help="layers (default config.yaml's, 2)")
    parser.add_argument("--parametrizations", type=names, default=",".join(PARAMETRIZATIONS))
    parser.add_argument("--seeds", type=numbers(int), default=",".join(map(str, SEEDS)))
    parser.add_argument("--tokens", type=numbers(int), default=str(TOKENS), help="pretraining tokens a run (1e6)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument(
        "--checkpoint_seconds", type=float, default=CHECKPOINT_SECONDS, help="of training between a run's checkpoints"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--work", default="studies/bench/width_transfer", help="the runs' files (resumable)")
    parser.add_argument("--output", default="bench/results")
    parser.add_argument("--summarize", type=Path, metavar="FILE.json", help="a saved sweep: its tables again, no run")
    args = parser.parse_args()
    if args.summarize:
        write(*read_saved(args.summarize), Path(args.output))
        return
    if len(args.tokens) != 1 or args.tokens[0] <= 0 or args.jobs < 1:
        parser.error("--tokens takes one positive number, --jobs at least 1")
    sweep = Sweep(args.tokens[0], tuple(args.set), Path(args.work).resolve(), args.checkpoint_seconds)
    base = sweep.base
    depths = sorted(args.depths or [base.model.num_layers])
    widths = sorted(args.widths or ([base.model.hidden_size] if len(depths) > 1 else WIDTHS))
    if len(widths) > 1 and len(depths) > 1:
        parser.error("vary --widths or --depths, not both (the tables have one axis)")
    plan = Plan(
        axis="depth" if len(depths) > 1 else "width",
        widths=widths,
        depths=depths,
        scales=sorted(args.scales),
        seeds=sorted(args.seeds),
        parametrizations=args.parametrizations,
        peak=base.train.learning_rate,
        base_width=base.model.base_width,
    )
    runs = plan.runs()
    for run in runs:
        sweep.path(run)  # a width that does not fit the head size: said now, not hours into the sweep
    try:
        figures = run_all(runs, sweep, args.jobs)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept, a stopped one resumes from its checkpoint; run the same command")
        sys.exit(130)
    if figures:
        write(plan, figures, sweep.tokens, list(sweep.overrides), Path(args.output))


def write(plan: Plan, figures: list[dict], tokens: int, overrides: list[str], output: Path) -> None:
    """OUTPUT/{width,depth}_transfer.md, .json and .png, and the tables printed."""
    lines, chosen = summarize(figures, plan)
    name = f"{plan.axis}_transfer"
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.md").write_text(
        f"# The best LR across {plan.axis} (bench/width_transfer.py)\n\n" + "\n".join(lines) + "\n"
    )
    saved = {**dataclasses.asdict(plan), "tokens": tokens, "overrides": overrides, **chosen}
    (output / f"{name}.json").write_text(json.dumps({**saved, "runs": figures}, indent=1))
    plot(figures, plan, output / f"{name}.png")
    print("\n".join(lines))


def read_saved(path: Path) -> tuple[Plan, list[dict], int, list[str]]:
    """A sweep's .json as `write` saved it: its plan, runs, tokens and overrides."""
    try:
        saved = json.loads(path.read_text())
        fields = {field.name: saved[field.name] for field in dataclasses.fields(Plan)}
        return Plan(**fields), saved["runs"], saved["tokens"], saved["overrides"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"--summarize {path}: not a sweep saved by bench/width_transfer.py ({type(error).__name__}: {error}); "
            "name its width_transfer.json or depth_transfer.json"
        ) from error


if __name__ == "__main__":
    run_cli(main)
