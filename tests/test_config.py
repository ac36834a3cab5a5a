import dataclasses
import math
import typing
from pathlib import Path

import optuna
import pytest
import yaml

from data.config import CorpusConfig
from hpo.config import (
    LEGACY_DEFAULTS,
    SAMPLERS,
    TYPED_SECTIONS,
    Config,
    ConfigError,
    default_config,
    dimensions,
    from_dict,
    load_config,
    stored_config,
)
from hpo.space import apply_params
from model.config import ModelConfig
from training.config import (
    REFERENCE_ROLES,
    ROLES,
    TRIAL_ROLES,
    WEIGHT_ROLES,
    config_to_dict,
    role_of,
    settings_with_roles,
)

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


def test_default_config_loads_and_searches_six_dimensions():
    config = load_config(CONFIG)
    names = {name for name, *_ in dimensions(config)}
    assert {
        "model.attention_kind",
        "masking.strategy",
        "train.learning_rate",
        "model.dropout",
        "train.layer_lr_decay",
        "model.size",
    } <= names


def test_override_is_typed_and_applied():
    config = load_config(CONFIG, ["train.budget_tokens=1234", "train.learning_rate=2e-3", "model.pooling=first"])
    assert config.train.budget_tokens == 1234
    assert config.train.learning_rate == pytest.approx(2e-3)
    assert config.model.pooling == "first"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.budget=5", "unknown key train.budget"),
        ("nosuchsection.x=1", "unknown key nosuchsection"),
        ("train.batch_size=many", "train.batch_size = 'many'; expected int"),
        ("model.attention_kind=linear", "model.attention_kind = 'linear'"),
        ("masking.rate=1.5", "masking.rate = 1.5"),
        ("model.hidden_size=129", "does not divide"),
        ("model.hidden_size=130", "must be even"),
        ("model.parametrization=mu", "model.parametrization = 'mu'; expected one of standard, mup"),
        ("model.base_width=0", "model.base_width = 0; expected a positive width"),
        ("model.attention_multiplier=0", "model.attention_multiplier = 0.0; expected a positive number"),
        ("search_space.model.size.choices.odd={hidden_size: 100, num_heads: 3}", "search_space.model.size choice"),
        ("search_space.train.learning_rate.low=0", "log scale needs low > 0"),
        ("search_space.train.nothing={type: float, low: 0, high: 1}", "train has no field 'nothing'"),
        ("train.budget_tokens", "expected KEY=VALUE"),
        ("search_space.train.batch_size={type: fixed, value: lots}", "search_space.train.batch_size.value = 'lots'"),
        ("search_space.model.dropout={type: fixed, value: 2.0}", "model.dropout = 2.0"),
        ("search_space.model.pooling={type: fixed, value: [mean]}", "a fixed value must be a number"),
        # A range searched beside a preset: each value is valid alone (2 heads), not with the "mini" preset's 3.
        (
            "search_space.model.hidden_size={type: int, low: 128, high: 256, step: 64}",
            "search_space: model.size='mini', model.hidden_size=128 together give an invalid config: "
            "model.num_heads = 3 does not divide model.hidden_size = 128",
        ),
        (
            "search_space.model.dropout={type: float, low: 0.0, high: 1.0}",
            "search_space.model.dropout choice 1.0 gives an invalid config: model.dropout = 1.0",
        ),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(CONFIG, [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_conditional_dimension_is_skipped_when_inactive():
    config = load_config(
        CONFIG,
        [
            "search_space.masking.span_max_length={type: int, low: 3, high: 10, condition: {masking.strategy: [span]}}",
        ],
    )
    base = {
        "train.objective": "mlm",
        "model.attention_kind": "rope",
        "model.size": "mini",
        "model.dropout": 0.1,
        "train.learning_rate": 1e-3,
        "train.embedding_lr_multiplier": 30.0,
        "train.layer_lr_decay": 0.9,
        "masking.rate": 0.3,
    }
    whole_word = apply_params(config, {**base, "masking.strategy": "whole_word"})
    assert whole_word.masking.span_max_length == config.masking.span_max_length
    span = apply_params(config, {**base, "masking.strategy": "span", "masking.span_max_length": 4})
    assert span.masking.span_max_length == 4
    assert (span.model.hidden_size, span.model.num_heads) == (192, 3)


def test_masking_strategy_is_only_sampled_for_the_masked_objective():
    import optuna

    from hpo.space import suggest

    config = load_config(
        CONFIG,
        [
            "search_space.train.objective={type: categorical, choices: [mlm, clm]}",
            "search_space.masking.strategy.condition={train.objective: [mlm]}",
        ],
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(40):
        trial = study.ask()
        run_config = suggest(trial, config)
        seen.setdefault(run_config.train.objective, []).append("masking.strategy" in trial.params)
        study.tell(trial, 0.0)
    assert set(seen) == {"mlm", "clm"}
    assert all(seen["mlm"]) and not any(seen["clm"])


def test_fixed_value_is_set_and_recorded_with_the_trial():
    import optuna

    from hpo.space import suggest

    config = load_config(CONFIG, ["search_space.train.batch_size={type: fixed, value: 16}"])
    trial = optuna.create_study().ask()
    assert suggest(trial, config).train.batch_size == 16
    assert trial.params["train.batch_size"] == 16
    assert apply_params(config, trial.params).train.batch_size == 16


def test_config_yaml_is_the_one_source_of_defaults():
    """No section dataclass carries a default of its own, and config.yaml names every field: a changed
    default is changed in config.yaml alone."""
    sections = typing.get_type_hints(Config)
    for section in TYPED_SECTIONS:
        fields = dataclasses.fields(sections[section])
        assert all(f.default is f.default_factory is dataclasses.MISSING for f in fields), section
        assert set(yaml.safe_load(CONFIG.read_text())[section]) == {f.name for f in fields}, section


def test_a_file_names_only_what_it_changes_and_the_rest_comes_from_config_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  hidden_size: 64\ntrain:\n  learning_rate: 1.0e-3\n")
    config, default = load_config(path), default_config()
    assert (config.model.hidden_size, config.train.learning_rate) == (64, 1e-3)
    assert config.model.embedding_std == default.model.embedding_std  # not a value kept in hpo/config.py
    assert (config.masking, config.probe, config.study) == (default.masking, default.probe, default.study)
    assert config.search_space == default.search_space

    path.write_text("model:\ntrain: {}\n")  # empty sections: every value from config.yaml
    assert (load_config(path).model, load_config(path).train) == (default.model, default.train)
    assert load_config(path, ["model.dropout=0.05"]).model.dropout == 0.05
    path.write_text("model: 5\n")
    with pytest.raises(ConfigError, match="model = 5; expected a mapping"):
        load_config(path)

    path.write_text("search_space:\n  train:\n    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n")
    assert list(load_config(path).search_space) == ["train"]  # a file's space replaces config.yaml's whole


def test_a_stored_or_exported_config_without_a_newer_key_means_what_it_meant_then(tmp_path):
    stored = config_to_dict(default_config())
    for dotted in LEGACY_DEFAULTS:
        section, key = dotted.split(".")
        del stored[section][key]
    old = stored_config(stored)
    for dotted, value in LEGACY_DEFAULTS.items():
        section, key = dotted.split(".")
        assert getattr(getattr(old, section), key) == value, dotted
    assert old.model.embedding_std == 1.0 != default_config().model.embedding_std

    exported = tmp_path / "old_export.yaml"  # an export carries provenance: it was complete when written
    exported.write_text(yaml.safe_dump({**stored, "provenance": {"study": "old", "trial": 3}}, sort_keys=False))
    assert load_config(exported).model.embedding_std == 1.0
    written = tmp_path / "mine.yaml"  # a user's file: config.yaml's value
    written.write_text(yaml.safe_dump(stored, sort_keys=False))
    assert load_config(written).model.embedding_std == default_config().model.embedding_std


def test_a_missing_key_in_a_direct_build_is_named():
    with pytest.raises(ConfigError, match="missing keys model.attention_backend, .*, model.pooling"):
        from_dict(ModelConfig, {"hidden_size": 64}, "model")
    with pytest.raises(ConfigError, match="missing key data.cache_dir;"):
        from_dict(CorpusConfig, {"sources": ["brown"], "seq_len": 64, "validation_every": 10}, "data")


# The keys of the first stored configurations (the first release's config.yaml, commit e7cb328), by section.
FIRST_RELEASE_KEYS = {
    "data": ("cache_dir", "seq_len", "sources", "validation_every"),
    "model": (
        *("attention_backend", "attention_kind", "dropout", "ffn_multiple", "gradient_checkpointing"),
        *("hidden_size", "max_seq_len", "num_heads", "num_layers", "pooling"),
    ),
    "masking": (
        *("mask_token_fraction", "max_rate", "min_rate", "random_token_fraction", "rate"),
        *("span_geometric_p", "span_max_length", "strategy"),
    ),
    "train": (
        *("batch_size", "budget_tokens", "device", "grad_clip", "layer_lr_decay", "learning_rate", "objective"),
        *("report_points", "schedule", "seed", "validation_sequences", "warmup_fraction", "weight_decay"),
    ),
    "probe": ("batch_size", "folds", "max_iter", "max_length", "quick_folds", "quick_rows", "regularization", "seed"),
}


def test_every_score_key_added_since_the_first_studies_says_what_its_absence_meant():
    """A key added to a section that changes what a score means must say, in its field's "legacy" metadata, how
    runs behaved before it existed; otherwise an older study would resume as if it had config.yaml's value."""
    sections = typing.get_type_hints(Config)
    added = {
        f"{section}.{field.name}"
        for section in FIRST_RELEASE_KEYS
        for field in dataclasses.fields(sections[section])
        if field.name not in FIRST_RELEASE_KEYS[section] and field.metadata["role"] in TRIAL_ROLES
    }
    missing = sorted(added - set(LEGACY_DEFAULTS))
    assert not missing, f"give the field of {', '.join(missing)} its 'legacy' metadata: the behaviour from before"


def test_every_setting_declares_what_it_shapes():
    """Each leaf field of the configuration tree has a role (training.config.ROLES): the lists of settings that
    matter (a study's resume check, a retrain's hash, the random-init cache key) are derived from them."""
    sections = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        if dataclasses.is_dataclass(sections[field.name]):
            for leaf in dataclasses.fields(sections[field.name]):
                assert leaf.metadata.get("role") in ROLES, f"{field.name}.{leaf.name}"
        else:
            assert field.metadata.get("role") in ROLES, field.name
    assert role_of(Config, "train.seed") == "start" and role_of(Config, "search_space.model.size") == "selection"
    assert role_of(Config, "retrain.keep_checkpoints") == "inert" and role_of(Config, "train.nothing") is None


def test_the_derived_lists_of_settings():
    config = default_config()
    reference = settings_with_roles(config, REFERENCE_ROLES)
    assert set(reference) == {"model", "train", "probe"}
    assert set(reference["train"]) == {"objective", "nsp", "seed"} and "target" not in reference["probe"]
    assert "dropout" not in reference["model"] and "hidden_size" in reference["model"]
    weights = settings_with_roles(config, WEIGHT_ROLES)
    assert set(weights) == {"data", "model", "masking", "train", "retrain"} and "cache_dir" not in weights["data"]
    assert "keep_checkpoints" not in weights["retrain"] and "budget_tokens" in weights["retrain"]
    assert LEGACY_DEFAULTS["probe.target"] == "accuracy" and LEGACY_DEFAULTS["study.baseline_trial"] is False
    # The parametrisation shapes the random init (its probe reference) and a stored study's runs were standard.
    assert {"parametrization", "base_width", "attention_multiplier"} <= set(reference["model"])
    assert LEGACY_DEFAULTS["model.parametrization"] == "standard" and LEGACY_DEFAULTS["model.base_width"] == 128
    assert LEGACY_DEFAULTS["model.attention_multiplier"] == 1.0  # mup's logits were q.k / head size
    assert LEGACY_DEFAULTS["model.zero_query"] is True  # and its query projection started at zero


def test_a_null_drops_a_dimension_of_the_search_space_and_names_what_there_is_to_drop():
    config = load_config(CONFIG, ["search_space.model.size=null"])
    assert "size" not in config.search_space["model"] and "attention_kind" in config.search_space["model"]
    assert config.model.hidden_size == load_config(CONFIG).model.hidden_size  # the section's value, fixed
    with pytest.raises(ConfigError, match=r"the search space has no model.sizes \(it has: model.attention_kind, "):
        load_config(CONFIG, ["search_space.model.sizes=null"])
    assert load_config(CONFIG, ["train.budget_seconds=null"]).train.budget_seconds is None  # outside it: a value


def test_a_wide_int_range_is_checked_at_its_ends_without_listing_it():
    # A seed searched over 2**31 values (as `compare` does with train.seed): checked at 0 and 2**31 - 1 in
    # milliseconds, where listing the range first took all memory (CI was killed by the kernel).
    config = load_config(CONFIG, ["search_space.train.seed={type: int, low: 0, high: 2147483647}"])
    assert config.search_space["train"]["seed"].high == 2147483647


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_drives_the_default_search_space_past_its_startup_trials(sampler):
    """12 trials on config.yaml's space (a conditional dimension and presets among them), each scored by a smooth
    function of its recipe: every sampler proposes valid recipes after its start-up trials too (gp's and tpe's
    models take over at the 11th)."""
    from hpo.sampling import make_sampler
    from hpo.space import suggest

    config = load_config(CONFIG, [f"study.sampler={sampler}"])
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config.study, seed=0))

    def objective(trial: optuna.Trial) -> float:
        recipe = suggest(trial, config)
        recipe.validate()
        return -abs(math.log(recipe.train.learning_rate / 1e-3)) - recipe.model.dropout

    study.optimize(objective, n_trials=12)
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 12
    assert len({trial.params["train.learning_rate"] for trial in study.trials}) == 12
