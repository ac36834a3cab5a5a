"""`main.py retrain`: the full-length pretraining run of an exported config, in one process or under torchrun (DDP).

The run keeps the trial's recipe and takes its budget, schedule and memory settings from the
`retrain` section. It checkpoints every K steps (atomically, with a hash of the run
configuration), continues from the newest checkpoint with --resume, prints one progress line
every N steps, and ends with the validation loss and two AG News probes: the selection score of
the study (cross-validated over train.csv) and the test score (fit on train.csv, scored on
test.csv). Only rank 0 logs, checkpoints, probes and writes; the other ranks train and wait.
The output folder is also a Hugging Face model folder (config.json, model.safetensors: model/hf.py).
"""

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import torch.distributed as dist
import yaml

from data.agnews import load_agnews
from data.corpus import load_corpus
from data.progress import progress_bar
from data.tokenizer import Tokenizer
from model.bert import Encoder
from training.config import WEIGHT_ROLES, ConfigError, RunConfig, config_to_dict, settings_with_roles
from training.curves import TrainingCurve
from training.pretrain import Execution, Pretrainer, StepResult, random_init_encoder, resolve_device
from training.probe import Probe, ProbeResult, cross_validated_accuracy, held_out_accuracy
from training.results import TrialScore, format_accuracy, format_gain, paired_gain

CURVE_FILE = "curve.jsonl"  # in the output folder: the run's training curve (training/curves.py)
# The other ranks wait at a barrier while rank 0 probes, which takes minutes on a CPU.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)


def run_config(config: RunConfig) -> RunConfig:
    """The trial's recipe with the retrain's budget and gradient checkpointing in place of the trial's, and its
    schedule too unless retrain.schedule is inherit (the trial's schedule over the retrain's budget)."""
    retrain = config.retrain
    train = dataclasses.replace(config.train, budget_tokens=retrain.budget_tokens, budget_seconds=None)
    if retrain.schedule != "inherit":
        train = dataclasses.replace(
            train,
            schedule=retrain.schedule,
            warmup_fraction=retrain.warmup_fraction,
            decay_fraction=retrain.decay_fraction,
        )
    model = dataclasses.replace(config.model, gradient_checkpointing=retrain.gradient_checkpointing)
    return dataclasses.replace(config, train=train, model=model)


def run_hash(config: RunConfig) -> str:
    """Fingerprint of the settings that shape the trained weights (training.config.WEIGHT_ROLES); a resumed run
    must have the same. Where things are kept and how often the run reports or saves may change."""
    identity = settings_with_roles(config, WEIGHT_ROLES)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def resolve_precision(name: str, device: torch.device) -> str:
    """auto -> bf16 on a CUDA GPU that supports it, else fp32; fp16 needs CUDA (its GradScaler)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"retrain.precision = 'fp16' needs a CUDA GPU, and this run is on {device}; use bf16 or fp32")
    return name


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started (a world of one without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[tuple[World, torch.device]]:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) for the run, and leave it after."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield World(), device
        return
    world = World(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    try:
        yield world, device
    finally:
        dist.destroy_process_group()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over `path`, so a
    reader (or a resume after a crash) sees the old file or the new one, never part of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # makes the rename itself durable
    finally:
        os.close(folder)


class CheckpointFolder:
    """step_N.pt files of one run, written atomically; the newest `keep` are kept."""

    def __init__(self, folder: Path, keep: int):
        self.folder = folder
        self.keep = keep

    def paths(self) -> list[Path]:
        """The checkpoints, oldest first (temporary files of an interrupted write are not among them)."""
        found = [path for path in self.folder.glob("step_*.pt") if path.stem.removeprefix("step_").isdigit()]
        return sorted(found, key=lambda path: int(path.stem.removeprefix("step_")))

    def save(self, checkpoint: dict, step: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step_{step}.pt"
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))
        for old in self.paths()[: -self.keep]:
            old.unlink()
        return path

    def load_newest(self, config_hash: str, world_size: int) -> dict:
        """The newest checkpoint, refused unless it was written by this run configuration and world size."""
        paths = self.paths()
        if not paths:
            raise ConfigError(f"--resume: no checkpoint in {self.folder}; run without --resume to start the run")
        path = paths[-1]
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            reason = (str(error).strip() or type(error).__name__).splitlines()[0]  # one line for the user
            raise ConfigError(
                f"--resume: cannot read {path} ({reason}); delete it to resume from the one before"
            ) from error
        if not isinstance(checkpoint, dict) or checkpoint.get("config_hash") != config_hash:
            found = checkpoint.get("config_hash") if isinstance(checkpoint, dict) else None
            raise ConfigError(
                f"--resume: {path} was written by another run configuration (hash {found}, "
                f"this run {config_hash}); use that run's config, --set and --budget_tokens, or another --output"
            )
        if checkpoint["world_size"] != world_size:
            raise ConfigError(
                f"--resume: {path} was written by {checkpoint['world_size']} process(es), this run has "
                f"{world_size}; resume with torchrun --nproc_per_node {checkpoint['world_size']}"
            )
        return checkpoint


@contextlib.contextmanager
def output_lock(output_dir: Path, world: World) -> Iterator[None]:
    """Hold an exclusive lock on the output folder for the run (rank 0, which writes the outputs), so that a second
    retrain into the same folder stops with one line instead of pruning the first one's checkpoints and
    overwriting its model. The lock is on the folder itself (flock of its descriptor): no file is left behind."""
    if not world.is_main:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    folder = os.open(output_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another retrain is writing to {output_dir}; wait for it to end, or choose another --output"
            ) from None
        yield
    finally:
        os.close(folder)  # releases the lock


def random_states_by_rank(trainer: Pretrainer, world: World) -> list[dict]:
    """Every rank's dropout streams (collective: all ranks call it), so each resumes its own."""
    if world.world_size == 1:
        return [trainer.random_state()]
    states: list = [None] * world.world_size
    dist.all_gather_object(states, trainer.random_state())
    return states


def save_checkpoint(trainer: Pretrainer, checkpoints: CheckpointFolder, config_hash: str, world: World) -> None:
    random_states = random_states_by_rank(trainer, world)
    if world.is_main:
        checkpoint = {
            "config_hash": config_hash,
            "world_size": world.world_size,
            "trainer": trainer.state_dict(),
            "random_by_rank": random_states,
        }
        checkpoints.save(checkpoint, trainer.step)


def checkpoint_to_resume(checkpoints: CheckpointFolder, config_hash: str, world: World, resume: bool) -> dict | None:
    """The newest checkpoint with --resume (None to start afresh); refuses to mix a new run into an old run's folder."""
    if resume:
        return checkpoints.load_newest(config_hash, world.world_size)
    existing = checkpoints.paths()
    if existing:
        raise ConfigError(
            f"{checkpoints.folder} already holds checkpoints (newest {existing[-1].name}); "
            "add --resume to continue that run, or choose another --output"
        )
    return None


class ProgressLine:
    """One line every `every` steps: step/total, rank 0's mean loss since the last line, LR, tokens/s, ETA;
    on a terminal, a progress bar between them (loss, tokens/s and ETA at every step)."""

    def __init__(self, trainer: Pretrainer, every: int):
        self.every = every
        self.started = time.perf_counter()
        self.first_step = trainer.step
        self.losses: list[float] = []
        self.bar = progress_bar(trainer.total_steps, "retrain", unit="step", initial=trainer.step)

    def after_step(self, trainer: Pretrainer, result: StepResult) -> None:
        self.losses.append(result.loss)
        elapsed = time.perf_counter() - self.started
        tokens_per_second = (trainer.step - self.first_step) * trainer.tokens_per_step / elapsed
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{result.loss:.4f}", tokens_per_second=f"{tokens_per_second:,.0f}", refresh=False)
        if trainer.step % self.every and not trainer.finished:
            return
        steps = trainer.step - self.first_step
        eta = datetime.timedelta(seconds=round((trainer.total_steps - trainer.step) * elapsed / steps))
        self.bar.write(
            f"step {trainer.step}/{trainer.total_steps} | loss {sum(self.losses) / len(self.losses):.4f} | "
            f"lr {result.learning_rate:.3e} | {tokens_per_second:,.0f} tokens/s | ETA {eta}",
            file=sys.stdout,
        )
        sys.stdout.flush()
        self.losses.clear()

    def close(self) -> None:
        self.bar.close()


SPLITS = {
    "selection_accuracy": "AG News train.csv, stratified {folds}-fold cross-validation",
    "test_accuracy": "AG News fit on train.csv, scored on test.csv",
}


def evaluate(trainer: Pretrainer, data_dir: Path) -> dict:
    """Validation loss, the study's selection score (k-fold CV over train.csv) and the AG News test score,
    each beside the same scores of the encoder the run started from (same architecture and seed, before
    any pretraining) and the gain over them, with the gain's own (paired) standard error: what the
    pretraining bought."""
    config, device = trainer.config, trainer.device
    selection, test = load_agnews(data_dir)
    probes = Probe(selection, trainer.tokenizer, config.probe), Probe(test, trainer.tokenizer, config.probe)

    def scores(model: Encoder) -> dict[str, ProbeResult]:
        train_features, test_features = (probe.features(model, device) for probe in probes)
        return {
            "selection_accuracy": cross_validated_accuracy(
                train_features, selection.labels, config.probe.folds, config.probe
            ),
            "test_accuracy": held_out_accuracy(
                train_features, selection.labels, test_features, test.labels, config.probe
            ),
        }

    def described(results: dict[str, ProbeResult]) -> dict:
        return {
            split: {"split": SPLITS[split].format(folds=config.probe.folds), **result.summary()}
            for split, result in results.items()
        }

    pretrained = scores(trainer.model)
    random_init = scores(random_init_encoder(config, trainer.tokenizer.vocab_size, device))
    gains = {split: paired_gain(pretrained[split].correct, random_init[split].correct) for split in SPLITS}
    return {
        "validation_loss": trainer.validation_loss(),
        **described(pretrained),
        "random_init": described(random_init),
        "gain_over_random_init": {split: gain for split, (gain, _) in gains.items()},
        "gain_standard_error": {split: error for split, (_, error) in gains.items()},
    }


def write_hugging_face_files(encoder: Encoder, output_dir: Path) -> None:
    """OUTPUT/config.json and OUTPUT/model.safetensors, so that the output folder is a Hugging Face model
    folder: AutoModel.from_pretrained(OUTPUT) after `import model.hf`. save_pretrained writes into a
    staging folder; each file then moves in by atomic_write, as the other outputs do."""
    try:
        from transformers.utils import logging as transformers_logging

        from model.hf import BertHpoModel  # imported here: transformers costs seconds, and only this needs it
    except ImportError as error:  # e.g. a machine with an older transformers: model.pt still holds the weights
        print(f"note: no Hugging Face folder written ({type(error).__name__}: {error})", file=sys.stderr)
        return
    staging = output_dir / f".hugging_face.{os.getpid()}.tmp"
    bar_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # its one shard is written in a blink: a bar would only clutter logs
    try:
        BertHpoModel.from_encoder(encoder).save_pretrained(staging)
        for path in sorted(staging.iterdir()):
            atomic_write(output_dir / path.name, lambda handle, path=path: handle.write(path.read_bytes()))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if bar_was_on:
            transformers_logging.enable_progress_bar()


def write_outputs(trainer: Pretrainer, results: dict, output_dir: Path) -> None:
    """OUTPUT/model.pt (final weights and the config that builds the model, for this project's code),
    the same weights as a Hugging Face model folder, and OUTPUT/results.yaml."""
    output_dir.mkdir(parents=True, exist_ok=True)
    weights = {"model": trainer.model.state_dict(), "config": config_to_dict(trainer.config)}
    atomic_write(output_dir / "model.pt", lambda handle: torch.save(weights, handle))
    write_hugging_face_files(trainer.model, output_dir)
    text = yaml.safe_dump(results, sort_keys=False).encode()
    atomic_write(output_dir / "results.yaml", lambda handle: handle.write(text))


def summary(results: dict, output_dir: Path) -> str:
    def scores(split: str) -> str:
        score, start = results[split], results["random_init"][split]
        gain = format_gain(results["gain_over_random_init"][split], results["gain_standard_error"][split])
        return (
            f"{format_accuracy(score['accuracy'], score['standard_error'])} (random init "
            f"{format_accuracy(start['accuracy'])}: gain {gain})"
        )

    return (
        f"validation loss {results['validation_loss']:.4f} | AG News selection (CV) accuracy "
        f"{scores('selection_accuracy')} | test accuracy {scores('test_accuracy')}\n"
        f"wrote {output_dir / 'results.yaml'}, model.pt"
        + (
            ", config.json and model.safetensors (AutoModel.from_pretrained after `import model.hf`)"
            if (output_dir / "model.safetensors").exists()
            else ""
        )
    )


def describe_schedule(config: RunConfig) -> str:
    """The run's LR schedule in words, e.g. "constant after a 5% warm-up"."""
    train = config.train
    shape = {
        "constant": "constant",
        "linear": "linear decay to zero",
        "cosine": "cosine decay to zero",
        "wsd": f"stable, then a linear decay to zero over the last {train.decay_fraction:.0%}",
    }[train.schedule]
    inherited = " (the trial's)" if config.retrain.schedule == "inherit" else ""
    return f"{train.schedule}{inherited}: {shape} after a {train.warmup_fraction:.0%} warm-up"


def train(trainer: Pretrainer, checkpoints: CheckpointFolder, config_hash: str, world: World, curve_file: Path) -> None:
    retrain = trainer.config.retrain
    progress = ProgressLine(trainer, retrain.log_every_steps) if world.is_main else None
    curve = TrainingCurve(curve_file) if world.is_main else None
    while not trainer.finished:
        result = trainer.train_step()
        if progress:
            progress.after_step(trainer, result)
            curve.after_step(trainer, result)
        # The last step too: a stop during the final probes (minutes on a CPU) then resumes with no step to redo.
        if trainer.step % retrain.checkpoint_every_steps == 0 or trainer.finished:
            save_checkpoint(trainer, checkpoints, config_hash, world)
    if progress:
        progress.close()


def retrain(
    config: RunConfig, data_dir: Path, output_dir: Path, resume: bool = False, trial: TrialScore | None = None
) -> dict | None:
    """Run the full pretraining of `config`; returns the results on rank 0, None on the other ranks. `trial`,
    the score of the study's trial that the recipe comes from, is printed and recorded beside the run's."""
    config = run_config(config)
    config_hash = run_hash(config)
    with process_group(config.train.device) as (world, device), output_lock(output_dir, world):
        precision = resolve_precision(config.retrain.precision, device)
        checkpoints = CheckpointFolder(output_dir / "checkpoints", config.retrain.keep_checkpoints)
        checkpoint = checkpoint_to_resume(checkpoints, config_hash, world, resume)
        tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
        corpus = load_corpus(data_dir, config.data, tokenizer)
        execution = Execution(config.retrain.grad_accumulation_steps, precision, world.rank, world.world_size)
        trainer = Pretrainer(config, corpus, tokenizer, device, execution)
        if checkpoint is not None:
            trainer.load_state_dict({**checkpoint["trainer"], "random": checkpoint["random_by_rank"][world.rank]})
        if world.is_main:
            print(
                f"retrain: {trainer.num_parameters:,} parameters, {trainer.total_steps} steps of "
                f"{trainer.tokens_per_step:,} tokens, {precision}, {world.world_size} process(es) on {device}, "
                f"from step {trainer.step}; schedule {describe_schedule(config)}; output {output_dir}",
                flush=True,
            )
            if trial is not None:
                print(f"the recipe's {trial.describe()}", flush=True)
        train(trainer, checkpoints, config_hash, world, output_dir / CURVE_FILE)
        results = None
        if world.is_main:
            results = {
                **evaluate(trainer, data_dir),
                "steps": trainer.step,
                "tokens": trainer.step * trainer.tokens_per_step,
                "parameters": trainer.num_parameters,
                "train_seconds": trainer.train_seconds,
                "world_size": world.world_size,
                "precision": precision,
                "config_hash": config_hash,
                "config": config_to_dict(config),
            }
            if trial is not None:
                results["study_trial"] = {**dataclasses.asdict(trial), "gain": trial.gain}
            write_outputs(trainer, results, output_dir)
            print(summary(results, output_dir), flush=True)
            if trial is not None:
                gain = format_gain(
                    results["gain_over_random_init"]["selection_accuracy"],
                    results["gain_standard_error"]["selection_accuracy"],
                )
                print(f"gain {gain} (CV) after {results['tokens']:,} tokens, where the study's {trial.describe()}")
        if world.world_size > 1:
            dist.barrier()
        return results
