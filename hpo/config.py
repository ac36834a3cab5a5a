"""The configuration tree: typed dataclasses built from a config file plus `--set a.b=value` overrides.

Every default lives in one place, the project's config.yaml (DEFAULT_CONFIG_PATH), the file users read:
the dataclasses declare types and rules, no values, and a config file names only what it changes (a key
it leaves out takes config.yaml's value; a search space it gives replaces config.yaml's whole). A
configuration stored by an older version (a study's base config, an exported file) means what it meant
then: a key it lacks takes its value from LEGACY_DEFAULTS, the behaviour from before the key existed.

Validated once at start-up; unknown keys and values of the wrong type are errors that name the
key, the value and what was expected.
"""

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.config import ConfigError, RunConfig, config_to_dict, legacy_defaults

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config.yaml"
TYPED_SECTIONS = ("data", "model", "masking", "train", "probe", "study", "retrain")  # filled from config.yaml

# Keys added after the first stored configurations, each with the behaviour from before it existed (its field's
# metadata "legacy"), which is what a stored configuration without it means (hpo.study's resume check,
# hpo.export); a stored configuration takes config.yaml's value for any other key it lacks.
LEGACY_DEFAULTS: dict[str, Any] = {}  # filled below, once Config is defined


# The names of hpo.sampling's registries, kept here so that hpo.config needs no sampling module (and the
# sampling module may import this one); tests/test_registries.py checks each equals its registry's keys.
SAMPLERS = ("tpe", "random", "qmc", "gp")
PRUNERS = ("median", "successive_halving", "hyperband", "none")


@dataclass
class StudyConfig:
    """Sampler, pruner and crash-safety settings of the Optuna study."""

    sampler: str = field(metadata={"role": "inert"})
    sampler_startup_trials: int = field(metadata={"role": "inert"})
    pruner: str = field(metadata={"role": "inert"})
    pruner_startup_trials: int = field(metadata={"role": "inert"})
    pruner_warmup_steps: int = field(metadata={"role": "inert"})
    # a new study's first trial runs the base config's own recipe
    baseline_trial: bool = field(metadata={"role": "inert", "legacy": False})
    heartbeat_seconds: int = field(metadata={"role": "inert"})
    grace_seconds: int = field(metadata={"role": "inert"})
    max_retries: int = field(metadata={"role": "inert"})

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"study.sampler = {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"study.pruner = {self.pruner!r}; expected one of {', '.join(PRUNERS)}")
        for name in ("sampler_startup_trials", "pruner_startup_trials", "pruner_warmup_steps", "max_retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"study.{name} = {getattr(self, name)}; expected 0 or more")
        if self.heartbeat_seconds < 1 or self.grace_seconds <= self.heartbeat_seconds:
            raise ConfigError(
                f"study.heartbeat_seconds = {self.heartbeat_seconds}, study.grace_seconds = {self.grace_seconds}; "
                "expected 1 <= heartbeat_seconds < grace_seconds (a live trial must beat within its grace)"
            )


@dataclass
class ParamSpec:
    """One search dimension (see config.yaml). `choices` may map names to presets (dicts of fields to set)."""

    type: str = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: Any = None
    value: Any = None  # type fixed: the constant
    condition: dict[str, list] | None = None


@dataclass
class Config(RunConfig):
    """A study's whole configuration: what a run reads (RunConfig) plus the study's own sections.
    `provenance` (study, trial, versions; written by `main.py export`) is for people, not runs."""

    study: StudyConfig
    # none: every trial the same
    search_space: dict[str, dict[str, ParamSpec]] = field(default_factory=dict, metadata={"role": "selection"})
    provenance: dict[str, Any] | None = field(default=None, metadata={"role": "inert"})

    def validate(self) -> None:
        self.validate_sections()
        validate_space(self)

    def validate_sections(self) -> None:
        """Each section's rules, and the rules across sections."""
        for section in (self.data, self.model, self.masking, self.train, self.probe, self.study, self.retrain):
            try:
                section.validate()
            except ConfigError:
                raise
            except ValueError as error:
                raise ConfigError(str(error)) from error
        if self.model.max_seq_len < max(self.data.seq_len, self.probe.max_length):
            raise ConfigError(
                f"model.max_seq_len = {self.model.max_seq_len} is below data.seq_len = {self.data.seq_len} "
                f"or probe.max_length = {self.probe.max_length}"
            )


LEGACY_DEFAULTS.update(legacy_defaults(Config))


# The rules of the search space (hpo/space.py samples it) -------------------------------------------------

SEARCHABLE_SECTIONS = ("data", "model", "masking", "train", "probe")
PARAM_TYPES = ("float", "int", "categorical", "fixed")
FIXED_VALUE_TYPES = (bool, int, float, str)  # what Optuna can record as a one-choice categorical


def dimensions(config: Config) -> list[tuple[str, str, str, ParamSpec]]:
    """(name, section, field, spec) for every dimension, in declaration order."""
    return [
        (f"{section}.{name}", section, name, spec)
        for section, params in config.search_space.items()
        for name, spec in params.items()
    ]


def validate_space(config: Config) -> None:
    """The rules of the search space: known sections and fields, well-formed ranges, conditions on dimensions
    declared above, and every choice and fixed value giving a valid configuration."""
    declared: dict[str, ParamSpec] = {}
    for name, section, field_name, spec in dimensions(config):
        where = f"search_space.{name}"
        if section not in SEARCHABLE_SECTIONS:
            raise ConfigError(f"{where}: section {section!r} is not searchable; use one of {SEARCHABLE_SECTIONS}")
        fields = {f.name for f in dataclasses.fields(getattr(config, section))}
        if spec.type not in PARAM_TYPES:
            raise ConfigError(f"{where}.type = {spec.type!r}; expected one of {PARAM_TYPES}")
        if spec.type == "categorical":
            if isinstance(spec.choices, dict):
                for preset, values in spec.choices.items():
                    if not isinstance(values, dict) or not set(values) <= fields:
                        raise ConfigError(
                            f"{where}.choices.{preset} must map fields of {section} to values; got {values!r}"
                        )
            elif not isinstance(spec.choices, list) or not spec.choices:
                raise ConfigError(f"{where}.choices must be a non-empty list or a mapping of presets")
            elif field_name not in fields:
                raise ConfigError(f"{where}: {section} has no field {field_name!r}")
        elif spec.type == "fixed":
            if field_name not in fields:
                raise ConfigError(f"{where}: {section} has no field {field_name!r}")
            if not isinstance(spec.value, FIXED_VALUE_TYPES):
                raise ConfigError(f"{where}.value = {spec.value!r}; a fixed value must be a number, string or bool")
            spec.value = convert_field(type(getattr(config, section)), field_name, spec.value, f"{where}.value")
        else:
            if field_name not in fields:
                raise ConfigError(f"{where}: {section} has no field {field_name!r}")
            if spec.low is None or spec.high is None or not spec.low < spec.high:
                raise ConfigError(f"{where}: needs low < high; got low={spec.low}, high={spec.high}")
            if spec.log and spec.low <= 0:
                raise ConfigError(f"{where}: log scale needs low > 0; got {spec.low}")
        for other, allowed in (spec.condition or {}).items():
            if other not in declared:
                raise ConfigError(f"{where}.condition names {other!r}, which is not a dimension declared above it")
            _check_condition_values(where, other, allowed, declared[other])
        declared[name] = spec
    _check_all_presets(config)


def _check_condition_values(where: str, other: str, allowed: list, spec: ParamSpec) -> None:
    """A condition on a choice or a constant must name values it can take, or the dimension is never sampled."""
    if spec.type not in ("categorical", "fixed"):
        return
    options = list(spec.choices) if spec.type == "categorical" else [spec.value]
    never = [value for value in allowed if value not in options]
    if never:
        raise ConfigError(f"{where}.condition: {other} never takes {never}; it takes one of {options}")


# An int range with at most this many values is checked value by value, a longer one (and a float range) at its
# two ends: the rules on numbers are intervals, so the ends decide. Each dimension's values are checked alone,
# then every combination of them, unless there are more than MAX_CHECKED_COMBINATIONS.
ENUMERATED_INT_VALUES = 64
MAX_CHECKED_COMBINATIONS = 20_000


def _checked_values(spec: ParamSpec) -> list:
    if spec.type == "categorical":
        return list(spec.choices)
    if spec.type == "fixed":
        return [spec.value]
    if spec.type == "int":
        values = range(int(spec.low), int(spec.high) + 1, int(spec.step or 1))  # a range: a seed's 2**31 values
        return list(values) if len(values) <= ENUMERATED_INT_VALUES else [values[0], values[-1]]
    return [spec.low, spec.high]


def _combinations(dims: list, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of the dimensions' checked values that the space can produce (conditions respected)."""
    if not dims:
        yield dict(chosen)
        return
    (name, _, _, spec), rest = dims[0], dims[1:]
    if any(chosen.get(other) not in allowed for other, allowed in (spec.condition or {}).items()):
        yield from _combinations(rest, chosen)
        return
    for value in _checked_values(spec):
        yield from _combinations(rest, {**chosen, name: value})


def _check_all_presets(config: Config) -> None:
    """Every combination of choices, fixed values and range ends the space can produce must give a valid
    configuration (e.g. heads that divide the hidden size of every size preset); checked once, at start-up.
    A failing combination is named by its smallest failing part: one dimension's value, or the few together."""
    dims = dimensions(config)
    by_name = {name: (section, field_name, spec) for name, section, field_name, spec in dims}

    def problem(chosen: dict[str, Any]) -> ConfigError | None:
        sections = {by_name[name][0] for name in chosen}
        trial_config = dataclasses.replace(config, **{s: copy.copy(getattr(config, s)) for s in sections})
        for name, value in chosen.items():
            set_dimension(trial_config, *by_name[name], value)
        try:
            trial_config.validate_sections()
        except ConfigError as error:
            return error
        return None

    alone = [{name: value} for name, _, _, spec in dims for value in _checked_values(spec)]
    together = list(itertools.islice(_combinations(dims, {}), MAX_CHECKED_COMBINATIONS + 1))
    for chosen in alone + (together if len(together) <= MAX_CHECKED_COMBINATIONS else []):
        error = problem(chosen)
        if error is None:
            continue
        for name in list(chosen):  # drop each dimension the failure does not need
            smaller = {other: value for other, value in chosen.items() if other != name}
            if smaller and problem(smaller) is not None:
                chosen = smaller
        error = problem(chosen)
        if len(chosen) == 1:
            ((name, value),) = chosen.items()
            raise ConfigError(f"search_space.{name} choice {value!r} gives an invalid config: {error}") from error
        shown = ", ".join(f"{name}={value!r}" for name, value in chosen.items())
        raise ConfigError(f"search_space: {shown} together give an invalid config: {error}") from error


def set_dimension(config: Config, section: str, field_name: str, spec: ParamSpec, value: Any) -> None:
    """Set one dimension's value in `config` (a preset's value sets each of its fields)."""
    target = getattr(config, section)
    if spec.type == "categorical" and isinstance(spec.choices, dict):
        for key, preset_value in spec.choices[value].items():
            setattr(target, key, preset_value)
    else:
        setattr(target, field_name, value)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check (and gently coerce int -> float) a YAML value against a dataclass field type."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} = {value!r}; expected a list")
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [_convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} = {value!r}; expected a mapping")
        _, value_type = typing.get_args(annotation)
        return {key: _convert(item, value_type, f"{where}.{key}") for key, item in value.items()}
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"{where} = {value!r}; expected {annotation.__name__}")
    return value


def convert_field(cls: type, name: str, value: Any, where: str) -> Any:
    """`value` checked (and gently coerced) against the type of field `name` of dataclass `cls`."""
    return _convert(value, typing.get_type_hints(cls)[name], where)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} = {data!r}; expected a mapping")
    prefix = f"{where}." if where else ""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        nearest = difflib.get_close_matches(str(unknown[0]), names, n=1)
        suggestion = f" (did you mean {prefix}{nearest[0]}?)" if nearest else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]}{suggestion}; known keys: {', '.join(sorted(names))}")
    required = {f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        keys = ", ".join(f"{prefix}{key}" for key in missing)
        raise ConfigError(
            f"missing {'keys' if len(missing) > 1 else 'key'} {keys}; config.yaml has each with its default"
        )
    return cls(**{key: _convert(value, hints[key], f"{prefix}{key}") for key, value in data.items()})


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` (value parsed as YAML) to the raw config mapping; `search_space.SECTION.KEY=null`
    drops that dimension from the search space (the setting keeps the value of its section)."""
    path, separator, text = assignment.partition("=")
    if not separator or not path:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, for example --set train.batch_size=64")
    keys = path.strip().split(".")
    node = raw
    for key in keys[:-1]:
        if node.get(key) is None:  # absent, or an empty section (`model:` alone)
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {key} = {node!r} is not a section; expected a mapping")
    value = yaml.safe_load(text)
    if value is None and keys[0] == "search_space" and len(keys) > 1:  # a dimension dropped: its setting is fixed
        if keys[-1] not in node:
            shown = ", ".join(".".join([*keys[1:-1], key]) for key in node) or "none"
            raise ConfigError(f"--set {assignment!r}: the search space has no {'.'.join(keys[1:])} (it has: {shown})")
        del node[keys[-1]]
        return
    node[keys[-1]] = value


def read_config_file(path: Path) -> dict:
    """The raw mapping of a YAML config file."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config = {raw!r}; expected a mapping of sections (data, model, train, ...)")
    return raw


def with_defaults(raw: dict, stored: bool = False) -> dict:
    """A raw config mapping with the keys it leaves out filled: from LEGACY_DEFAULTS first when it was
    `stored` by an older version, then from config.yaml. A search space is taken whole: the file's own
    replaces config.yaml's, never merges with it."""
    defaults = read_config_file(DEFAULT_CONFIG_PATH)
    if stored:
        for dotted, value in LEGACY_DEFAULTS.items():
            section, key = dotted.split(".")
            defaults[section][key] = value
    filled = {"search_space": defaults["search_space"], **raw}
    for section in TYPED_SECTIONS:
        given = raw.get(section) or {}  # an empty section (`model:` alone) reads as None
        if isinstance(given, dict):  # anything else: from_dict names the mistake
            filled[section] = {**defaults[section], **given}
    return filled


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """A config file + config.yaml's defaults for what it leaves out + overrides -> validated Config.

    A file with `provenance` (written by `main.py export`) was complete when written: a key it lacks
    takes its legacy default, so that an older export reruns the trial's recipe."""
    path = Path(path)
    raw = read_config_file(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        config = from_dict(Config, with_defaults(raw, stored=raw.get("provenance") is not None))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    config.validate()
    return config


def run_config_key(config: Config) -> str:
    """A short fingerprint of a whole configuration: the key a study keeps it under (hpo.study.open_study)."""
    return hashlib.sha256(json.dumps(config_to_dict(config), sort_keys=True).encode()).hexdigest()[:12]


def stored_config(stored: dict) -> Config:
    """A configuration stored by this or an older version (a study's base_config) as a Config."""
    return from_dict(Config, with_defaults(stored, stored=True))


def default_config() -> Config:
    """config.yaml as it stands: every default."""
    return load_config(DEFAULT_CONFIG_PATH)


def defaults(section: str, **changes: Any) -> Any:
    """One section of config.yaml (data, model, masking, ...) with `changes`, not validated (no import of
    the registries, so no torch): what a test, a benchmark or a read-only tool builds a section from."""
    section_type = typing.get_type_hints(Config)[section]
    return dataclasses.replace(from_dict(section_type, with_defaults({})[section], section), **changes)
