"""Test-wide setup: without a GPU, Triton kernels run in the interpreter on CPU tensors. Shared fixtures: the
bundled data, fake studies in the real search space (and their confirmations), the flags of a tiny but real study."""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

CONFIG_PATH = Path(__file__).resolve().parents[1] / "config.yaml"
# A real study, shrunk so that a trial takes seconds on a CPU.
TINY_OVERRIDES = [
    "data.sources=[wikipedia]",
    "data.seq_len=32",
    "train.batch_size=8",
    "train.budget_seconds=null",
    "train.budget_tokens=1024",
    "train.validation_sequences=16",
    "probe.max_length=32",
    "probe.quick_rows=200",
    "probe.quick_folds=2",
    "probe.folds=2",
    "probe.max_iter=100",
]

FAKE_RANDOM_INIT_ACCURACY = 0.45  # of every completed trial of a fake study (make_study)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def data_dir():
    from data.files_location import resolve_data_dir

    return resolve_data_dir()


@pytest.fixture(scope="session")
def tokenizer(data_dir):
    from data.tokenizer import Tokenizer

    return Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")


def _make_study(path: Path, trials: list[tuple[dict, float | None]], overrides: list[str] = ()) -> str:
    """A study named "fake" whose trials sample the real space (with some params fixed) and are told
    a value (None: pruned) directly; returns its storage URL."""
    from hpo.config import load_config
    from hpo.space import suggest

    config = load_config(CONFIG_PATH, overrides)
    storage = f"sqlite:///{path}"
    study = optuna.create_study(
        study_name="fake", storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.set_user_attr("base_config", dataclasses.asdict(config))
    for index, (fixed, value) in enumerate(trials):
        if fixed:
            study.enqueue_trial(fixed)
        trial = study.ask()
        suggest(trial, config)
        trial.report(0.4 + 0.01 * index, step=5)
        for name, attr in {
            "tokens_per_second": 1000.0 + index,
            "wall_seconds": 30.0,
            "parameters": 12345,
            "tokens_seen": 30_000 + index,
        }.items():
            trial.set_user_attr(name, attr)
        if value is None:
            trial.set_user_attr("pruned_reason", "quick probe 0.4000 at step 5")
            study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("probe_standard_error", 0.012)
            trial.set_user_attr("probe_accuracy", value)
            trial.set_user_attr("random_init_accuracy", FAKE_RANDOM_INIT_ACCURACY)
            study.tell(trial, value)
    return storage


@pytest.fixture
def make_study() -> Callable[..., str]:
    """make_study(path, trials, overrides=()) -> storage URL of a fake study (no pretraining)."""
    return _make_study


@pytest.fixture(scope="session")
def tiny_study_flags(tmp_path_factory) -> list[str]:
    """--set flags of a tiny real study; its tokenised corpus is cached once for the whole session."""
    cache_dir = tmp_path_factory.mktemp("tiny-cache")
    overrides = [*TINY_OVERRIDES, f"data.cache_dir={cache_dir}"]
    return [flag for override in overrides for flag in ("--set", override)]


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch) -> Path:
    """Run in tmp_path, so that what a study writes under the working folder (studies/NAME/logs/, its
    report and exports) stays out of the project."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def encode_calls(monkeypatch) -> list[tuple[bool, list[int] | None]]:
    """Every Encoder.encode call from here on, as (causal, the token types' distinct values or None)."""
    from model.bert import Encoder

    calls = []
    original = Encoder.encode

    def spy(self, input_ids, key_padding_mask, causal=False, token_types=None):
        calls.append((causal, None if token_types is None else token_types.unique().tolist()))
        return original(self, input_ids, key_padding_mask, causal, token_types)

    monkeypatch.setattr(Encoder, "encode", spy)
    return calls


def fake_companion(tmp_path, values: dict[int, dict[int, float]]) -> optuna.Study:
    """A companion study (of the study "fake" in tmp_path/fake.db) holding confirmation runs with the given values:
    recipe trial number -> seed -> value."""
    from hpo.confirmation import RECIPES_ATTR, SEEDS_ATTR, Recipe

    storage = f"sqlite:///{tmp_path / 'fake.db'}"
    companion = optuna.create_study(study_name="fake-confirm", storage=storage, direction="maximize")
    recipes = [Recipe(trial, {"train.learning_rate": 0.001 * (trial + 1)}, 1000, 0.05) for trial in values]
    seeds = sorted({seed for by_seed in values.values() for seed in by_seed})
    companion.set_user_attr(RECIPES_ATTR, [recipe.__dict__ for recipe in recipes])
    companion.set_user_attr(SEEDS_ATTR, seeds)
    for recipe in recipes:
        for seed, value in values[recipe.trial].items():
            distributions = {
                name: optuna.distributions.FloatDistribution(0, 1)
                if name == "train.learning_rate"
                else optuna.distributions.IntDistribution(0, 10**12)
                for name in recipe.run_params(seed)
            }
            companion.add_trial(
                optuna.trial.create_trial(params=recipe.run_params(seed), distributions=distributions, value=value)
            )
    return companion
