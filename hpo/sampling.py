"""How a study samples and prunes: the registries that study.sampler and study.pruner name."""

import warnings

import optuna

from hpo.config import ConfigError, StudyConfig

# Grouped TPE is marked experimental; we rely on it knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS = {
    "tpe": lambda config, seed: optuna.samplers.TPESampler(
        multivariate=True,
        group=True,
        constant_liar=True,
        n_startup_trials=config.sampler_startup_trials,
        seed=seed,
    ),
    "random": lambda config, seed: optuna.samplers.RandomSampler(seed=seed),
    "qmc": lambda config, seed: optuna.samplers.QMCSampler(seed=seed, scramble=True),
    # A Gaussian process (Optuna's GPSampler: Matern 5/2, log EI); the categorical dimensions are one-hot in its
    # kernel. Parallel workers see running trials as missing (no constant liar), and each suggestion refits the
    # process: fine at tens of trials, slow at thousands.
    "gp": lambda config, seed: optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=config.sampler_startup_trials, warn_independent_sampling=False
    ),
}

PRUNERS = {
    "median": lambda config: optuna.pruners.MedianPruner(
        n_startup_trials=config.pruner_startup_trials, n_warmup_steps=config.pruner_warmup_steps
    ),
    "successive_halving": lambda config: optuna.pruners.SuccessiveHalvingPruner(),
    "hyperband": lambda config: optuna.pruners.HyperbandPruner(),
    "none": lambda config: optuna.pruners.NopPruner(),
}


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    if config.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler = {config.sampler!r}; expected one of {list(SAMPLERS)}")
    return SAMPLERS[config.sampler](config, seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.pruner not in PRUNERS:
        raise ConfigError(f"study.pruner = {config.pruner!r}; expected one of {list(PRUNERS)}")
    return PRUNERS[config.pruner](config)
