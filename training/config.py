"""The settings of a pretraining run that are not the data's or the model's: the training itself (section
train), the AG News probe (probe) and the full-length retrain (retrain); and RunConfig, everything a run
reads. Plain dataclasses without torch, so the study's tools load a config without loading the model; the
defaults live in config.yaml (hpo.config.load_config)."""

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from data.config import CorpusConfig, MaskingConfig
from model.config import ModelConfig

# What each setting shapes, declared once on its field (metadata "role"), from which every list of "the
# settings that matter here" is derived; a new field without a role fails tests/test_config.py.
ROLES = {
    "start": "the encoder a run starts from, or how it is probed: the random-init reference, scores, weights",
    "train": "how a run trains: a trial's score and a retrain's weights",
    "probe": "how the probe scores: the random-init reference and the scores",
    "selection": "what a study maximises, over which recipes: a trial's value, not its weights",
    "retrain": "a retrain's weights, not a trial's",
    "inert": "no result: where things are kept, how often a run reports or saves, how a study samples and prunes",
}
REFERENCE_ROLES = ("start", "probe")  # decide the random-init encoder's probe score (hpo.trial's cache key)
TRIAL_ROLES = ("start", "train", "probe", "selection")  # a change makes a study's scores mean something else
WEIGHT_ROLES = ("start", "train", "retrain")  # shape a retrain's weights (its checkpoints' hash)


class ConfigError(ValueError):
    """A user's configuration mistake; main.py prints it as one line (one_line)."""


def one_line(error: Exception) -> str:
    """An error's message as the one line the command lines print: its lines (YAML's caret lines too) joined by ';'."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


# The pretraining objectives' names (training.pretrain.OBJECTIVES; tests/test_registries.py checks them).
OBJECTIVES = ("mlm", "clm")
# LR schedules after the linear warm-up (training.pretrain.learning_rate_multiplier): constant; linear or
# cosine decay to zero at the end; wsd: warm-up, stable at the peak, then a linear decay to zero over the
# last decay_fraction of the budget (Hägele et al. 2024).
SCHEDULES = ("constant", "linear", "cosine", "wsd")


@dataclass
class TrainConfig:
    """One pretraining run: objective, optimiser, schedule and budget."""

    objective: str = field(metadata={"role": "start"})
    # BERT's next-sentence prediction beside MLM (sentence pairs from the corpus); clm ignores it
    nsp: bool = field(metadata={"role": "start", "legacy": False})
    batch_size: int = field(metadata={"role": "train"})
    learning_rate: float = field(metadata={"role": "train"})
    embedding_lr_multiplier: float = field(metadata={"role": "train", "legacy": 1.0})
    sampled_softmax: int | None = field(metadata={"role": "train", "legacy": None})
    weight_decay: float = field(metadata={"role": "train"})
    layer_lr_decay: float = field(metadata={"role": "train"})
    schedule: str = field(metadata={"role": "train"})
    warmup_fraction: float = field(metadata={"role": "train"})
    # wsd: the share of the budget, at its end, over which the LR decays to zero
    decay_fraction: float = field(metadata={"role": "train", "legacy": 0.2})
    budget_tokens: int = field(metadata={"role": "train"})
    budget_seconds: float | None = field(metadata={"role": "train", "legacy": None})
    grad_clip: float = field(metadata={"role": "train"})
    report_points: list[float] = field(metadata={"role": "train"})
    validation_sequences: int = field(metadata={"role": "train"})
    device: str = field(metadata={"role": "train"})
    seed: int = field(metadata={"role": "start"})

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

    budget_tokens: int = field(metadata={"role": "retrain"})
    # inherit (the trial's schedule) or one of SCHEDULES, with the two fractions below
    schedule: str = field(metadata={"role": "retrain"})
    warmup_fraction: float = field(metadata={"role": "retrain"})
    decay_fraction: float = field(metadata={"role": "retrain"})
    grad_accumulation_steps: int = field(metadata={"role": "retrain"})
    precision: str = field(metadata={"role": "retrain"})
    gradient_checkpointing: bool = field(metadata={"role": "retrain"})
    checkpoint_every_steps: int = field(metadata={"role": "inert"})
    log_every_steps: int = field(metadata={"role": "inert"})
    keep_checkpoints: int = field(metadata={"role": "inert"})

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

    folds: int = field(metadata={"role": "probe"})
    quick_rows: int = field(metadata={"role": "probe"})
    quick_folds: int = field(metadata={"role": "probe"})
    max_length: int = field(metadata={"role": "probe"})
    batch_size: int = field(metadata={"role": "probe"})
    regularization: float = field(metadata={"role": "probe"})
    max_iter: int = field(metadata={"role": "probe"})
    seed: int = field(metadata={"role": "probe"})
    target: str = field(metadata={"role": "selection", "legacy": "accuracy"})

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


def role_of(config_type: type, dotted: str) -> str | None:
    """The role of a setting, e.g. role_of(Config, "train.seed") is "start". A key inside a field that holds a
    mapping (search_space.model.size) takes that field's role; a key the tree does not have, None."""
    node = config_type
    for name in dotted.split("."):
        fields = {item.name: item for item in dataclasses.fields(node)}
        if name not in fields:
            return None
        if "role" in fields[name].metadata:
            return fields[name].metadata["role"]
        node = typing.get_type_hints(node)[name]
        if not dataclasses.is_dataclass(node):
            return None
    return None


def settings_with_roles(config: Any, roles: tuple[str, ...]) -> dict:
    """The settings of `config` (a tree of dataclasses) whose role is one of `roles`, as a nested mapping (a section
    with none of them left out)."""
    chosen = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if "role" in item.metadata:
            if item.metadata["role"] in roles:
                chosen[item.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        elif dataclasses.is_dataclass(value) and (section := settings_with_roles(value, roles)):
            chosen[item.name] = section
    return chosen


def legacy_defaults(config_type: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> the behaviour from before the key existed (field metadata "legacy"), for the keys added
    after the first stored configurations: what a stored configuration without the key means."""
    found = {}
    hints = typing.get_type_hints(config_type)
    for item in dataclasses.fields(config_type):
        if "legacy" in item.metadata:
            found[prefix + item.name] = item.metadata["legacy"]
        elif dataclasses.is_dataclass(hints[item.name]):
            found.update(legacy_defaults(hints[item.name], f"{prefix}{item.name}."))
    return found
