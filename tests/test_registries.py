"""The config modules name each registry's kinds as a plain tuple (so validating a config loads no torch and no
module imports its own importer): each tuple must equal its registry's keys, in order."""

import pytest

import data.config
import data.masking
import hpo.config
import hpo.sampling
import kernels
import model.bert
import model.config
import model.parametrization
import training.config
import training.pretrain


@pytest.mark.parametrize(
    ("names", "registry"),
    [
        (model.config.ATTENTION_KINDS, kernels.ATTENTION_KINDS),
        (model.config.ATTENTION_BACKENDS, kernels.BACKENDS),
        (model.config.POOLINGS, model.bert.POOLINGS),
        (model.config.PARAMETRIZATIONS, model.parametrization.PARAMETRIZATIONS),
        (data.config.MASKING_STRATEGIES, data.masking.MASKING_STRATEGIES),
        (training.config.OBJECTIVES, training.pretrain.OBJECTIVES),
        (hpo.config.SAMPLERS, hpo.sampling.SAMPLERS),
        (hpo.config.PRUNERS, hpo.sampling.PRUNERS),
    ],
)
def test_each_config_tuple_names_its_registry(names, registry):
    assert names == tuple(registry)


def test_positions_cover_every_attention_kind():
    from model.positions import POSITIONS_BY_ATTENTION_KIND

    assert tuple(POSITIONS_BY_ATTENTION_KIND) == model.config.ATTENTION_KINDS
