"""The search space: every trial.suggest_* call of the project lives here.

A dimension is declared in config.yaml as search_space.<section>.<field>; its Optuna name is
"<section>.<field>". A categorical whose choices are a mapping is a preset: the chosen name is
the parameter, and its mapping sets several fields of the section (e.g. model size).
"""

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import optuna

from hpo.config import Config, ConfigError, ParamSpec, convert_field

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


def _check_all_presets(config: Config) -> None:
    """Every choice and fixed value the space can produce must give a valid configuration (e.g. heads | hidden)."""
    for name, section, field_name, spec in dimensions(config):
        if spec.type not in ("categorical", "fixed"):
            continue
        for choice in spec.choices if spec.type == "categorical" else [spec.value]:
            trial_config = copy.deepcopy(config)
            _set(trial_config, section, field_name, spec, choice)
            try:
                getattr(trial_config, section).validate()
            except ValueError as error:
                raise ConfigError(f"search_space.{name} choice {choice!r} gives an invalid config: {error}") from error


def _set(config: Config, section: str, field_name: str, spec: ParamSpec, value: Any) -> None:
    target = getattr(config, section)
    if spec.type == "categorical" and isinstance(spec.choices, dict):
        for key, preset_value in spec.choices[value].items():
            setattr(target, key, preset_value)
    else:
        setattr(target, field_name, value)


def _resolve(config: Config, pick: Callable[[str, ParamSpec], Any]) -> Config:
    """Copy of config with every active dimension set to pick(name, spec)."""
    resolved = copy.deepcopy(config)
    chosen: dict[str, Any] = {}
    for name, section, field_name, spec in dimensions(config):
        if any(chosen.get(other) not in allowed for other, allowed in (spec.condition or {}).items()):
            continue
        chosen[name] = pick(name, spec)
        _set(resolved, section, field_name, spec, chosen[name])
    return resolved


def _suggest_one(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    if spec.type == "fixed":  # one choice: recorded with the trial, ignored by samplers and importances
        return trial.suggest_categorical(name, [spec.value])
    if spec.type == "categorical":
        return trial.suggest_categorical(name, list(spec.choices))
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def suggest(trial: optuna.Trial, config: Config) -> Config:
    """The trial's run configuration: the base config with every dimension sampled."""
    return _resolve(config, lambda name, spec: _suggest_one(trial, name, spec))


def base_params(config: Config) -> dict[str, Any]:
    """The params under which the space reproduces the base config itself (its recipe as a trial): each
    dimension takes the base value (a preset: the one whose fields all match). Dimensions whose base value
    the space cannot produce are left out, for the sampler to fill in."""
    params: dict[str, Any] = {}
    for name, section, field_name, spec in dimensions(config):
        if any(params.get(other) not in allowed for other, allowed in (spec.condition or {}).items()):
            continue
        target = getattr(config, section)
        value = getattr(target, field_name, None)
        if spec.type == "fixed":
            params[name] = spec.value
        elif spec.type == "categorical" and isinstance(spec.choices, dict):
            matching = [
                preset
                for preset, fields in spec.choices.items()
                if all(getattr(target, key) == preset_value for key, preset_value in fields.items())
            ]
            if matching:
                params[name] = matching[0]
        elif spec.type == "categorical":
            if value in spec.choices:
                params[name] = value
        elif value is not None and spec.low <= value <= spec.high:
            params[name] = int(value) if spec.type == "int" else float(value)
    return params


def apply_params(config: Config, params: dict[str, Any]) -> Config:
    """The run configuration of a finished trial, from its params (for export and retrain)."""
    return _resolve(config, lambda name, spec: params[name])
