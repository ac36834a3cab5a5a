"""The study's trial: PretrainAndProbe(trial) -> AG News probe score (accuracy, or its gain over random init):
sample the recipe, pretrain it with reports and pruning, probe it. (The pretraining objective, MLM or CLM, is
train.objective: training/pretrain.py.)"""

import hashlib
import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from data.agnews import load_agnews, stratified_rows
from data.corpus import PackedCorpus, load_corpus
from data.tokenizer import Tokenizer
from hpo.config import Config
from hpo.curves import curve_path
from hpo.space import suggest
from hpo.study_values import GAIN_ERROR_ATTR, TOKENS_ATTR, format_metric
from training.config import REFERENCE_ROLES, settings_with_roles
from training.curves import TrainingCurve
from training.pretrain import Pretrainer, random_init_encoder, resolve_device
from training.probe import Probe, cross_validated_accuracy
from training.results import pack_correct, paired_gain, unpack_correct

FAIL_REASON_CHARS = 500  # of an exception's text kept with a failed trial


@dataclass
class Resources:
    """What every trial of a worker shares: loaded once per process."""

    tokenizer: Tokenizer
    corpus: PackedCorpus
    probe: Probe
    quick_probe: Probe
    quick_rows: np.ndarray  # the quick probe's rows among the probe's

    @classmethod
    def load(cls, config: Config, data_dir: Path) -> "Resources":
        tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
        corpus = load_corpus(data_dir, config.data, tokenizer)
        selection, _ = load_agnews(data_dir)
        rows = stratified_rows(selection.labels, config.probe.quick_rows, config.probe.seed)
        quick = Probe(selection.subset(rows), tokenizer, config.probe)
        return cls(tokenizer, corpus, Probe(selection, tokenizer, config.probe), quick, rows)


def peak_memory_megabytes(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


RANDOM_INIT_ATTR_PREFIX = "random_init_accuracy:"  # + architecture key: a study user attr per architecture
RANDOM_INIT_QUICK_ATTR_PREFIX = "random_init_quick_accuracy:"  # the same for the quick probe
RANDOM_INIT_CORRECT_ATTR_PREFIX = "random_init_correct:"  # its rows right or wrong (packed), for the gain's error


def architecture_key(config: Config) -> str:
    """What decides a randomly initialised encoder's probe score (training.config.REFERENCE_ROLES): its shape and
    seed, how it is probed, and the probe itself."""
    material = settings_with_roles(config, REFERENCE_ROLES)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RandomInit:
    """Probe accuracies of the trial's encoder before any pretraining (the weights its run starts from):
    the line pretraining has to beat, for the final probe and for the quick probe of the report points."""

    accuracy: float
    quick_accuracy: float
    correct: np.ndarray  # (rows,) bool, of the final probe: the gain is paired on these rows


def random_init_scores(study: optuna.Study, config: Config, resources: Resources, device: torch.device) -> RandomInit:
    """Computed once per architecture and kept in the study's user attrs, so workers, resumed runs and
    later trials reuse them. One embedding pass serves both probes: the quick probe's rows are the probe's."""
    key = architecture_key(config)
    final_key, quick_key = RANDOM_INIT_ATTR_PREFIX + key, RANDOM_INIT_QUICK_ATTR_PREFIX + key
    correct_key = RANDOM_INIT_CORRECT_ATTR_PREFIX + key
    if any(name not in study.user_attrs for name in (final_key, quick_key, correct_key)):
        encoder = random_init_encoder(config, resources.tokenizer.vocab_size, device)
        features, labels = resources.probe.features(encoder, device), resources.probe.labels
        if final_key not in study.user_attrs or correct_key not in study.user_attrs:
            final = cross_validated_accuracy(features, labels, config.probe.folds, config.probe)
            study.set_user_attr(final_key, final.accuracy)
            study.set_user_attr(correct_key, pack_correct(final.correct))
        if quick_key not in study.user_attrs:
            rows = resources.quick_rows
            quick = cross_validated_accuracy(features[rows], labels[rows], config.probe.quick_folds, config.probe)
            study.set_user_attr(quick_key, quick.accuracy)
    rows = len(resources.probe.labels)
    correct = unpack_correct(study.user_attrs[correct_key], rows)
    return RandomInit(study.user_attrs[final_key], study.user_attrs[quick_key], correct)


def target_value(config: Config, accuracy: float, random_init_accuracy: float) -> float:
    """What the study maximises (probe.target): the accuracy, or its gain over the random-init line."""
    return accuracy - random_init_accuracy if config.probe.target == "gain" else accuracy


class PretrainAndProbe:
    """The function a study optimises, as a plain callable: sample, pretrain with pruning, probe."""

    def __init__(self, config: Config, resources: Resources):
        self.config = config
        self.resources = resources

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        trainer, device = None, None
        try:
            config = suggest(trial, self.config)
            device = resolve_device(config.train.device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            random_init = random_init_scores(trial.study, config, self.resources, device)
            trial.set_user_attr("random_init_accuracy", random_init.accuracy)
            trainer = Pretrainer(config, self.resources.corpus, self.resources.tokenizer, device)
            trial.set_user_attr("parameters", trainer.num_parameters)
            self.pretrain(trial, config, trainer, random_init)
            return self.final_score(trial, config, trainer, random_init)
        except optuna.TrialPruned:
            raise
        except Exception as error:  # Optuna marks the trial failed; the progress line and dashboard say why
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:FAIL_REASON_CHARS])
            raise
        finally:
            if trainer is not None:
                record_training(trial, trainer, device, time.perf_counter() - started)

    def pretrain(self, trial: optuna.Trial, config: Config, trainer: Pretrainer, random_init: RandomInit) -> None:
        """Train for the budget; at each report point, report the quick score and prune if told to.

        Report points are numbered 0, 1, ... (their index is the Optuna step), so trials with a time budget,
        whose step counts differ, are compared at the same share of their budgets."""
        pending_points = sorted(config.train.report_points)
        report_index = 0
        curve = TrainingCurve(curve_path(trial.study.study_name, trial.number))
        while not trainer.finished:
            result = trainer.train_step()
            curve.after_step(trainer, result)
            loss = result.loss
            if not math.isfinite(loss):
                trial.set_user_attr("pruned_reason", f"training loss is {loss} at step {trainer.step}")
                raise optuna.TrialPruned(f"loss {loss} at step {trainer.step}")
            # A report point is due at the step whose progress (of tokens or of seconds) first reaches it.
            if pending_points and trainer.progress >= pending_points[0]:
                pending_points = [point for point in pending_points if point > trainer.progress]
                quick = self.resources.quick_probe.score(trainer.model, trainer.device, config.probe.quick_folds)
                value = target_value(config, quick.accuracy, random_init.quick_accuracy)
                trial.report(value, report_index)
                if trial.should_prune():
                    trial.set_user_attr(
                        "pruned_reason",
                        f"quick {config.probe.target} {format_metric(config.probe.metric_name, value)} "
                        f"at report point {report_index} "
                        f"(step {trainer.step})",
                    )
                    raise optuna.TrialPruned(f"pruned at report point {report_index}")
                report_index += 1

    def final_score(self, trial: optuna.Trial, config: Config, trainer: Pretrainer, random_init: RandomInit) -> float:
        trial.set_user_attr("validation_loss", trainer.validation_loss())
        final = self.resources.probe.score(trainer.model, trainer.device, config.probe.folds)
        trial.set_user_attr("probe_accuracy", final.accuracy)
        trial.set_user_attr("probe_standard_error", final.standard_error)
        if not math.isfinite(final.accuracy):
            trial.set_user_attr("pruned_reason", "embeddings are not finite")
            raise optuna.TrialPruned("embeddings are not finite")
        trial.set_user_attr("gain_over_random_init", final.accuracy - random_init.accuracy)
        trial.set_user_attr(GAIN_ERROR_ATTR, paired_gain(final.correct, random_init.correct)[1])
        return target_value(config, final.accuracy, random_init.accuracy)


def record_training(trial: optuna.Trial, trainer: Pretrainer, device: torch.device, wall_seconds: float) -> None:
    """What a person wants to see beside any trial, finished or not, in the dashboard."""
    trial.set_user_attr(TOKENS_ATTR, trainer.tokens_seen)
    trial.set_user_attr("train_loss", trainer.last_loss)
    trial.set_user_attr("steps", trainer.step)
    tokens_per_second = trainer.tokens_seen / max(trainer.train_seconds, 1e-9)
    trial.set_user_attr("tokens_per_second", tokens_per_second)
    trial.set_user_attr("peak_memory_mb", peak_memory_megabytes(device))
    trial.set_user_attr("wall_seconds", wall_seconds)
