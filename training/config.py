"""The settings of a pretraining run that are not the data's or the model's: the training itself (section
train), the AG News probe (probe) and the full-length retrain (retrain); and RunConfig, everything a run
reads. Plain dataclasses without torch, so the study's tools load a config without loading the model; the
defaults live in config.yaml (hpo.config.load_config)."""

import dataclasses
from dataclasses import dataclass

from data.config import CorpusConfig, MaskingConfig
from model.config import ModelConfig

# Settings that say where things are kept, not what a run computes: changing them changes no result.
LOCATION_KEYS = ("data.cache_dir",)


class ConfigError(ValueError):
    """A user's configuration mistake; main.py prints it as one line."""


# The pretraining objectives' names (training.pretrain.OBJECTIVES; tests/test_registries.py checks them).
OBJECTIVES = ("mlm", "clm")
# LR schedules after the linear warm-up (training.pretrain.learning_rate_multiplier): constant; linear or
# cosine decay to zero at the end; wsd: warm-up, stable at the peak, then a linear decay to zero over the
# last decay_fraction of the budget (Hägele et al. 2024).
SCHEDULES = ("constant", "linear", "cosine", "wsd")


@dataclass
class TrainConfig:
    """One pretraining run: objective, optimiser, schedule and budget."""

    objective: str
    nsp: bool  # BERT's next-sentence prediction beside MLM (sentence pairs from the corpus); clm ignores it
    batch_size: int
    learning_rate: float
    embedding_lr_multiplier: float
    sampled_softmax: int | None
    weight_decay: float
    layer_lr_decay: float
    schedule: str
    warmup_fraction: float
    decay_fraction: float  # wsd: the share of the budget, at its end, over which the LR decays to zero
    budget_tokens: int
    budget_seconds: float | None
    grad_clip: float
    report_points: list[float]
    validation_sequences: int
    device: str
    seed: int

    @property
    def next_sentence(self) -> bool:
        """Next-sentence prediction is part of the run: asked for, and the objective is masked LM."""
        return self.nsp and self.objective == "mlm"

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"train.objective = {self.objective!r}; expected one of {', '.join(OBJECTIVES)}")
        check_schedule("train", self.schedule, self.warmup_fraction, self.decay_fraction, SCHEDULES)
        for name in ("learning_rate", "batch_size", "budget_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} = {getattr(self, name)}; expected a positive number")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ConfigError(
                f"train.budget_seconds = {self.budget_seconds}; expected a positive number of seconds, "
                "or null to use train.budget_tokens"
            )
        if self.embedding_lr_multiplier <= 0:
            raise ConfigError(f"train.embedding_lr_multiplier = {self.embedding_lr_multiplier}; expected > 0")
        if self.sampled_softmax is not None and self.sampled_softmax < 1:
            raise ConfigError(
                f"train.sampled_softmax = {self.sampled_softmax}; expected a number of sampled ids >= 1, "
                "or null for the exact softmax"
            )
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"train.layer_lr_decay = {self.layer_lr_decay}; expected 0 < decay <= 1")
        if any(not 0 < point < 1 for point in self.report_points):
            raise ConfigError(f"train.report_points = {self.report_points}; each must lie strictly between 0 and 1")


def check_schedule(section: str, schedule: str, warmup: float, decay: float, allowed: tuple[str, ...]) -> None:
    """The rules of a schedule's settings in `section` (train or retrain)."""
    if schedule not in allowed:
        raise ConfigError(f"{section}.schedule = {schedule!r}; expected one of {', '.join(allowed)}")
    if not 0 <= warmup < 1:
        raise ConfigError(f"{section}.warmup_fraction = {warmup}; expected 0 <= fraction < 1")
    if not 0 < decay <= 1:
        raise ConfigError(f"{section}.decay_fraction = {decay}; expected 0 < fraction <= 1")
    if schedule == "wsd" and warmup + decay > 1:
        raise ConfigError(
            f"{section}.warmup_fraction + {section}.decay_fraction = {warmup} + {decay}; the wsd schedule needs "
            "a sum <= 1 (warm-up, then the stable phase, then the decay)"
        )


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# retrain.schedule: the trial's own schedule (train.schedule, warmup_fraction and decay_fraction), or one of SCHEDULES
RETRAIN_SCHEDULES = ("inherit", *SCHEDULES)


@dataclass
class RetrainConfig:
    """The full-length run of an exported config (`main.py retrain`); not part of the search space."""

    budget_tokens: int
    schedule: str  # inherit (the trial's schedule) or one of SCHEDULES, with the two fractions below
    warmup_fraction: float
    decay_fraction: float
    grad_accumulation_steps: int
    precision: str
    gradient_checkpointing: bool
    checkpoint_every_steps: int
    log_every_steps: int
    keep_checkpoints: int

    def validate(self) -> None:
        for name in ("budget_tokens", "grad_accumulation_steps", "checkpoint_every_steps", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"retrain.{name} = {getattr(self, name)}; expected a positive integer")
        if self.keep_checkpoints < 1:
            raise ConfigError(
                f"retrain.keep_checkpoints = {self.keep_checkpoints}; expected at least 1 (a resume needs the newest)"
            )
        check_schedule("retrain", self.schedule, self.warmup_fraction, self.decay_fraction, RETRAIN_SCHEDULES)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"retrain.precision = {self.precision!r}; expected one of {', '.join(PRECISIONS)}")


# probe.target -> the name of the value a study maximises
PROBE_TARGETS = {"accuracy": "probe_accuracy", "gain": "probe_gain_over_random_init"}


@dataclass
class ProbeConfig:
    """Linear probe on AG News: stratified k-fold cross-validation over train.csv."""

    folds: int
    quick_rows: int
    quick_folds: int
    max_length: int
    batch_size: int
    regularization: float
    max_iter: int
    seed: int
    target: str

    @property
    def metric_name(self) -> str:
        """The study's objective as Optuna records it (dashboard, report): what probe.target maximises."""
        return PROBE_TARGETS[self.target]

    def validate(self) -> None:
        if self.target not in PROBE_TARGETS:
            raise ConfigError(f"probe.target = {self.target!r}; expected one of {', '.join(PROBE_TARGETS)}")
        if self.folds < 2 or self.quick_folds < 2:
            raise ConfigError("probe.folds and probe.quick_folds must be at least 2")
        if self.quick_rows < 40 * self.quick_folds:
            raise ConfigError(f"probe.quick_rows = {self.quick_rows} is too few for {self.quick_folds} folds")
        if self.regularization <= 0:
            raise ConfigError(f"probe.regularization = {self.regularization}; expected > 0")


@dataclass
class RunConfig:
    """What one pretraining run reads: data, model, masking, training, probe and retrain settings.
    hpo.config.Config adds a study's own sections (sampler and pruner, search space, provenance)."""

    data: CorpusConfig
    model: ModelConfig
    masking: MaskingConfig
    train: TrainConfig
    probe: ProbeConfig
    retrain: RetrainConfig


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)
