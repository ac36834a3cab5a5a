"""Objective(trial) -> AG News probe accuracy: sample, pretrain, report, prune, probe."""

import dataclasses
import hashlib
import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from data.agnews import load_agnews, stratified_subset
from data.corpus import PackedCorpus, load_corpus
from data.tokenizer import Tokenizer
from hpo.config import Config
from hpo.pretrain import Pretrainer, initial_encoder, resolve_device
from hpo.probe import Probe
from hpo.space import suggest

FAIL_REASON_CHARS = 500  # of an exception's text kept with a failed trial


@dataclass
class Resources:
    """What every trial of a worker shares: loaded once per process."""

    tokenizer: Tokenizer
    corpus: PackedCorpus
    probe: Probe
    quick_probe: Probe

    @classmethod
    def load(cls, config: Config, data_dir: Path) -> "Resources":
        tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
        corpus = load_corpus(data_dir, config.data, tokenizer, seed=config.train.seed)
        selection, _ = load_agnews(data_dir)
        quick = stratified_subset(selection, config.probe.quick_rows, config.probe.seed)
        return cls(tokenizer, corpus, Probe(selection, tokenizer, config.probe), Probe(quick, tokenizer, config.probe))


def peak_memory_megabytes(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


RANDOM_INIT_ATTR_PREFIX = "random_init_accuracy:"  # + architecture key: a study user attr per architecture


def architecture_key(config: Config) -> str:
    """What decides a randomly initialised encoder's probe score: shape, pooling, seed and the probe itself."""
    model = dataclasses.asdict(config.model)
    for irrelevant in ("dropout", "attention_backend", "gradient_checkpointing"):  # inert in evaluation
        del model[irrelevant]
    material = {
        "model": model,
        "seed": config.train.seed,
        "next_sentence": config.train.next_sentence,
        "probe": dataclasses.asdict(config.probe),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def random_encoder_accuracy(study: optuna.Study, config: Config, resources: Resources, device: torch.device) -> float:
    """The probe accuracy of the trial's encoder before any pretraining (the weights its run starts
    from): the line pretraining has to beat. Computed once per architecture and kept in the study's
    user attrs, so workers, resumed runs and later trials reuse it."""
    key = RANDOM_INIT_ATTR_PREFIX + architecture_key(config)
    if key not in study.user_attrs:
        saved_state = torch.get_rng_state()  # the trial's own random stream stays as it was
        encoder = initial_encoder(config, resources.tokenizer.vocab_size).to(device)
        torch.set_rng_state(saved_state)
        study.set_user_attr(key, resources.probe.score(encoder, device, config.probe.folds).accuracy)
    return study.user_attrs[key]


class Objective:
    """A plain callable for study.optimize."""

    def __init__(self, config: Config, resources: Resources):
        self.config = config
        self.resources = resources

    def __call__(self, trial: optuna.Trial) -> float:
        config = suggest(trial, self.config)
        device = resolve_device(config.train.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        trainer = Pretrainer(config, self.resources.corpus, self.resources.tokenizer, device)
        pending_points = sorted(config.train.report_points)
        trial.set_user_attr("parameters", trainer.num_parameters)
        loss = float("nan")
        try:
            while not trainer.finished:
                loss = trainer.train_step().loss
                if not math.isfinite(loss):
                    trial.set_user_attr("pruned_reason", f"training loss is {loss} at step {trainer.step}")
                    raise optuna.TrialPruned(f"loss {loss} at step {trainer.step}")
                # A report point is due at the step whose progress (of tokens or of seconds) first reaches it.
                if pending_points and trainer.progress >= pending_points[0]:
                    pending_points = [point for point in pending_points if point > trainer.progress]
                    quick = self.resources.quick_probe.score(trainer.model, device, config.probe.quick_folds)
                    trial.report(quick.accuracy, trainer.step)
                    if trial.should_prune():
                        trial.set_user_attr("pruned_reason", f"quick probe {quick.accuracy:.4f} at step {trainer.step}")
                        raise optuna.TrialPruned(f"pruned at step {trainer.step}")
            trial.set_user_attr("validation_loss", trainer.validation_loss())
            final = self.resources.probe.score(trainer.model, device, config.probe.folds)
            trial.set_user_attr("probe_standard_error", final.standard_error)
            if not math.isfinite(final.accuracy):
                trial.set_user_attr("pruned_reason", "embeddings are not finite")
                raise optuna.TrialPruned("embeddings are not finite")
            baseline = random_encoder_accuracy(trial.study, config, self.resources, device)
            trial.set_user_attr("random_init_accuracy", baseline)
            trial.set_user_attr("gain_over_random_init", final.accuracy - baseline)
            return final.accuracy
        except optuna.TrialPruned:
            raise
        except Exception as error:  # Optuna marks the trial failed; the progress line and dashboard say why
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:FAIL_REASON_CHARS])
            raise
        finally:
            trial.set_user_attr("budget_tokens", trainer.budget_tokens)
            trial.set_user_attr("train_loss", loss)
            trial.set_user_attr("steps", trainer.step)
            tokens_per_second = trainer.step * trainer.tokens_per_step / max(trainer.train_seconds, 1e-9)
            trial.set_user_attr("tokens_per_second", tokens_per_second)
            trial.set_user_attr("peak_memory_mb", peak_memory_megabytes(device))
            trial.set_user_attr("wall_seconds", time.perf_counter() - started)
