"""The best trials of a study -> full run configurations (config.yaml format) with provenance, for a retrain."""

import dataclasses
import datetime
import sys
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from hpo.config import Config, ConfigError, stored_config
from hpo.confirmation import load_confirmation
from hpo.space import apply_params
from hpo.storage import displayed_url, load_existing_study
from hpo.study_values import (
    OLD_TOKENS_ATTR,
    RUN_CONFIG_ATTR,
    RUN_CONFIGS_ATTR,
    TOKENS_ATTR,
    objective_name,
    ranked_trials,
)
from hpo.versions import software_versions
from model.shapes import Shape
from training.results import TrialScore


def study_base_config(study: optuna.Study) -> Config:
    """The configuration the study was started with (its "base_config" user attr)."""
    if "base_config" not in study.user_attrs:
        raise ConfigError(
            f"study {study.study_name!r} has no 'base_config' user attr (it was not started by main.py), "
            "so its trials cannot be turned into run configurations"
        )
    try:
        return stored_config(study.user_attrs["base_config"])
    except ConfigError as error:
        raise ConfigError(
            f"study {study.study_name!r}: its stored base_config no longer matches hpo/config.py: {error}"
        ) from error


def trial_base_config(study: optuna.Study, trial: FrozenTrial) -> Config:
    """The configuration a trial's run used before its params: kept in the study under the key the trial records
    (so that a --force resume does not change what an earlier trial ran); the study's base config for trials
    from before."""
    stored = study.user_attrs.get(RUN_CONFIGS_ATTR, {}).get(trial.user_attrs.get(RUN_CONFIG_ATTR))
    if stored is None:
        return study_base_config(study)
    try:
        return stored_config(stored)
    except ConfigError as error:
        raise ConfigError(
            f"study {study.study_name!r}: the configuration trial {trial.number} ran with no longer matches "
            f"hpo/config.py: {error}"
        ) from error


def trial_config(study: optuna.Study, trial: FrozenTrial) -> Config:
    """The full, validated run configuration of a finished trial: what it ran."""
    base = trial_base_config(study, trial)
    try:
        config = apply_params(base, trial.params)
    except KeyError as error:
        raise ConfigError(
            f"trial {trial.number} has no value for dimension {error.args[0]!r} of the study's search space"
        ) from error
    config.validate()
    return config


def provenance(study: optuna.Study, storage_url: str, trial: FrozenTrial, rank: int, rule: str) -> dict[str, Any]:
    """Where a configuration came from: study, trial, its score, the rule that chose it, and the software."""
    return {
        "selection": rule,
        "study": study.study_name,
        "storage": displayed_url(storage_url),
        "trial": trial.number,
        "rank": rank,
        "objective": objective_name(study),
        "value": trial.value,
        "standard_error": trial.user_attrs.get("probe_standard_error"),
        "params": dict(trial.params),
        "trial_attributes": dict(trial.user_attrs),
        "trial_completed": trial.datetime_complete.isoformat(timespec="seconds") if trial.datetime_complete else None,
        "exported": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        **software_versions(),
    }


# Tensor Programs V (Yang et al. 2022): muP carries the learning rates and initial scales across width; the
# regularisation (dropout, weight decay) is among the hyperparameters it does not carry.
NOT_TRANSFERRED = "does not transfer across width (Tensor Programs V): the trial's value, re-tune it at this size"
NOT_TRANSFERRED_KEYS = (("model", "dropout"), ("train", "weight_decay"))
STANDARD_REFUSAL = (
    "model.parametrization = standard carries no recipe to another shape: its best learning rate moves with width "
    "(issue 28: config.yaml's recipe, tuned 128 wide, scored 25 points below its own random-init encoder at 512 "
    "wide); run the study under muP (--set model.parametrization=mup, model.base_width = the study's width) to "
    "export it at another size, or export it at its own shape"
)


def at_shape(config: Config, target: Shape) -> Config:
    """The recipe of `config` (a trial's, with its provenance) at the target shape: under mup its learning rates
    carried by the parametrisation from the width it was tuned at (model.base_width, kept), and the provenance says
    so; unchanged at the trial's own shape; refused (ConfigError) under standard, whose best LR moves with width."""
    base = Shape.of(config.model)
    if target == base:
        return config
    if target.problem():
        raise ConfigError(f"the export's target {target.problem()}")
    if config.model.parametrization != "mup":
        raise ConfigError(f"trial {(config.provenance or {}).get('trial')}: {STANDARD_REFUSAL}")
    model = dataclasses.replace(
        config.model, hidden_size=target.hidden_size, num_layers=target.num_layers, num_heads=target.num_heads
    )
    carried = dataclasses.replace(config, model=model, provenance=dict(config.provenance or {}))
    carried.provenance["shape"] = {
        "base": dataclasses.asdict(base),
        "target": dataclasses.asdict(target),
        "base_width": config.model.base_width,
        "rule": f"muP: LRs carried by the parametrisation from base width {config.model.base_width}",
        "not_transferred": [f"{section}.{key}" for section, key in NOT_TRANSFERRED_KEYS],
    }
    if target.num_layers != base.num_layers:
        carried.provenance["shape"]["depth"] = (
            f"{base.num_layers} -> {target.num_layers} layers: muP carries the LRs across width, not depth; "
            "here the best LR moved at most one x2 step from 2 to 8 layers (128 wide, 1M tokens, 2 seeds; "
            "BENCHMARKS.md, bench/width_transfer.py --depths), without a residual scaling by depth"
        )
    carried.validate()
    return carried


def with_comments(text: str, comments: dict[tuple[str, str], str]) -> str:
    """YAML `text` (a dump of sections of scalar settings) with `# comment` beside each (section, key)'s line."""
    lines, section = [], None
    for line in text.splitlines():
        if line and not line.startswith((" ", "-")):
            section = line.split(":")[0]
        key = line[2:].split(":")[0] if line.startswith("  ") and not line.startswith("   ") else None
        comment = comments.get((section, key))
        lines.append(f"{line}  # {comment}" if comment else line)
    return "\n".join(lines) + "\n"


def write_config(config: Config, path: Path) -> None:
    """Write a configuration that hpo.config.load_config reads back unchanged (with comments for people)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = config.provenance or {}
    header = (
        f"# Full run configuration of trial {source.get('trial')} of study {source.get('study')!r}, "
        "exported by `python main.py export`.\n"
        f"# Chosen as: {source.get('selection', 'not recorded')}.\n"
    )
    body = yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
    shape = source.get("shape")
    if shape:
        base, target = (Shape(**shape[end]) for end in ("base", "target"))
        header += f"# Shape (hidden/layers/heads) {base} -> {target}; {shape['rule']}.\n"
        if "depth" in shape:
            header += f"# Depth {shape['depth']}.\n"
        body = with_comments(body, dict.fromkeys(NOT_TRANSFERRED_KEYS, NOT_TRANSFERRED))
    header += "# Use it as the --config of a run; `provenance` is for people.\n"
    path.write_text(header + body, encoding="utf-8")


MIN_CONFIRMED_SEEDS = 2  # a confirmation with fewer seeds finished by every recipe has no standard error
BEST_TRIAL_RULE = "the best single trial value (no confirmation over seeds: see `main.py confirm`)"


def chosen_best(study: optuna.Study, ranked: list[FrozenTrial]) -> tuple[FrozenTrial, str, dict | None]:
    """The trial best_config.yaml is made of, the rule that chose it, and the confirmation's figures: the
    confirmed leader when a confirmation holds at least two seeds finished by every recipe, else the best trial."""
    summary = load_confirmation(study)
    if summary is None:
        return ranked[0], BEST_TRIAL_RULE, None
    if not summary.finished:
        print(
            f"note: the confirmation of study {study.study_name!r} is unfinished ({summary.runs_done} of "
            f"{summary.runs_planned} runs); run `main.py confirm` again to finish it",
            file=sys.stderr,
        )
    leader = summary.leader
    if leader is None or len(summary.complete_seeds) < MIN_CONFIRMED_SEEDS:
        return ranked[0], BEST_TRIAL_RULE + f"; its confirmation has fewer than {MIN_CONFIRMED_SEEDS} seeds done", None
    trial = next(trial for trial in ranked if trial.number == leader.recipe.trial)
    figures = {
        "study": summary.study_name,
        "seeds": summary.complete_seeds,
        "values": leader.values,
        "mean": leader.mean,
        "standard_error": leader.standard_error,
        "probability_best": leader.probability_best,
        "recipes": {str(line.recipe.trial): line.mean for line in summary.recipes},
    }
    return trial, summary.rule(), figures


def export_best(
    study_name: str,
    storage_url: str,
    output_dir: Path,
    top_k: int = 0,
    target: Shape | None = None,
    target_name: str | None = None,
) -> list[Path]:
    """Write output_dir/best_config.yaml (the confirmed leader, or the best trial) and, with top_k,
    output_dir/top_K/rank_N.yaml (by trial value); returns the paths. With a target shape, each recipe at that
    shape (at_shape) in best_config_NAME.yaml and top_K_NAME/ (NAME: target_name, else e.g. 512x4x8); nothing is
    written when one of them is refused."""
    study = load_existing_study(study_name, storage_url)
    ranked = ranked_trials(study)
    if not ranked:
        states = ", ".join(f"{trial.state.name.lower()} trial {trial.number}" for trial in study.trials) or "no trials"
        raise ConfigError(
            f"study {study_name!r} has no completed trial yet ({states}); run more trials before exporting"
        )
    best, rule, confirmation = chosen_best(study, ranked)
    suffix = f"_{target_name or target.label}" if target else ""
    targets = [(output_dir / f"best_config{suffix}.yaml", best, rule, confirmation)]
    for rank, trial in enumerate(ranked[:top_k], start=1):
        path = output_dir / f"top_{top_k}{suffix}" / f"rank_{rank}.yaml"
        targets.append((path, trial, f"rank {rank} by trial value", None))
    configs = []
    for _, trial, why, figures in targets:
        config = trial_config(study, trial)
        config.provenance = provenance(study, storage_url, trial, ranked.index(trial) + 1, why)
        if figures is not None:
            config.provenance["confirmation"] = figures
        configs.append(at_shape(config, target) if target else config)
    for (path, *_), config in zip(targets, configs, strict=True):
        write_config(config, path)
    if top_k > len(ranked):
        print(f"note: only {len(ranked)} completed trial(s), so top_{top_k}/ holds {len(ranked)}", file=sys.stderr)
    return [path for path, _, _, _ in targets]


def exported_trial_score(config: Config) -> TrialScore | None:
    """The score of the trial an exported config comes from (its provenance); None for another config, or an
    export from before the trials recorded their random-init accuracy."""
    source = config.provenance or {}
    attributes = source.get("trial_attributes", {})
    tokens = attributes.get(TOKENS_ATTR, attributes.get(OLD_TOKENS_ATTR))
    if tokens is None or not all(name in attributes for name in ("probe_accuracy", "random_init_accuracy")):
        return None
    return TrialScore(
        study=source.get("study"),
        trial=source.get("trial"),
        tokens=tokens,
        accuracy=attributes["probe_accuracy"],
        random_init_accuracy=attributes["random_init_accuracy"],
    )
