"""The search space: every trial.suggest_* call of the project lives here.

A dimension is declared in config.yaml as search_space.<section>.<field>; its Optuna name is
"<section>.<field>". A categorical whose choices are a mapping is a preset: the chosen name is
the parameter, and its mapping sets several fields of the section (e.g. model size).
"""

import copy
from collections.abc import Callable
from typing import Any

import optuna

from hpo.config import Config, ParamSpec, dimensions, set_dimension


def _resolve(config: Config, pick: Callable[[str, ParamSpec], Any]) -> Config:
    """Copy of config with every active dimension set to pick(name, spec)."""
    resolved = copy.deepcopy(config)
    chosen: dict[str, Any] = {}
    for name, section, field_name, spec in dimensions(config):
        if any(chosen.get(other) not in allowed for other, allowed in (spec.condition or {}).items()):
            continue
        chosen[name] = pick(name, spec)
        set_dimension(resolved, section, field_name, spec, chosen[name])
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
