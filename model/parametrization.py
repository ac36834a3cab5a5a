"""How the encoder's width sets its initial scales, learning rates and multipliers (model.parametrization).

- `standard`: BERT's at every width: linear layers N(0, 0.02^2), the recipe's learning rates, attention logits
  q.k / sqrt(head size), the tied readout at hidden_size**-0.5. Under it the best learning rate moves with width
  (Tensor Programs V, Yang et al. 2022, Fig. 1).
- `mup`: the maximal-update parametrisation (Tensor Programs V, Table 3, for Adam; microsoft/mup's MuReadout and
  MuAdamW), so that a recipe tuned at `base_width` keeps its best learning rates at other widths. With the width
  multiplier m = hidden_size / base_width: hidden matrices (both sides grow with width) start with variance
  proportional to 1/fan_in and learn at the LR / m; a readout matrix (fan-out fixed: the next-sentence head)
  starts with variance proportional to 1/fan_in^2 and learns at the LR / m; input-like parameters (tables,
  biases, norms) keep their scale and LR; the tied readout is scaled proportionally to 1/hidden_size; attention
  logits are model.attention_multiplier x q.k / head size (1/d, not 1/sqrt(d): q and k grow correlated as the
  head grows; the multiplier is muP's attn_mult, a constant of the recipe), and the query projection starts at zero
  (model.zero_query: Tensor Programs V's advice, not part of the parametrisation; with it off and the multiplier at
  sqrt(head size), mup at its base width is standard exactly).

At m = 1 the two give the same weights and learning rates; they differ only in the attention (tests/test_model.py):
the zero query projection, and the logits' scale unless attention_multiplier = sqrt(head size). Our heads keep
their size as the width grows (64: more heads, not wider ones), so the logits' scale is one constant at every
width and 1/d against 1/sqrt(d) does not bear on the transfer there; config.yaml's multiplier, 8 = sqrt(64), keeps
standard's attention at the base width (microsoft/mup's README does the same: 8 / d for a base head size 64).
No torch: what a width does to a recipe can be read without loading the model.
"""

import math
from dataclasses import dataclass

from model.config import ModelConfig

BERT_INIT_STD = 0.02  # BERT's linear layers, the standard parametrisation's at every width and mup's at the base


@dataclass(frozen=True)
class Parametrization:
    """What the width changes in an encoder of one ModelConfig."""

    width_multiplier: float  # m = hidden_size / base_width under mup; 1 under standard (nothing follows the width)
    attention_scale: float  # the attention logits' factor of q.k
    readout_scale: float  # the tied readout's factor of the head's features (the table rows keep their scale)
    zero_query: bool  # the query projection starts at zero (muP: the first attention ignores the keys' content)

    def matrix_std(self, readout: bool = False) -> float:
        """Initial std of a linear layer's matrix: BERT's at the base width; variance proportional to 1/fan_in
        for a hidden matrix, to 1/fan_in^2 for a readout (whose fan-out does not grow with the width)."""
        return BERT_INIT_STD / (self.width_multiplier if readout else math.sqrt(self.width_multiplier))

    def matrix_group(self, learning_rate: float, weight_decay: float) -> dict[str, float]:
        """Adam's LR and weight decay of a group of matrices, from the recipe's: the LR / m (an update moves a
        matrix's output by LR times its fan-in under Adam), the decay x m so that AdamW's per-step shrink,
        LR x decay, stays the recipe's (MuAdamW does the same)."""
        return {"lr": learning_rate / self.width_multiplier, "weight_decay": weight_decay * self.width_multiplier}


def head_size(config: ModelConfig) -> int:
    return config.hidden_size // config.num_heads


def standard(config: ModelConfig) -> Parametrization:
    """BERT's at every width; the tied readout at hidden_size**-0.5 (as T5), so that unit-scale rows give first
    logits of unit spread."""
    return Parametrization(
        width_multiplier=1.0,
        attention_scale=1.0 / math.sqrt(head_size(config)),
        readout_scale=config.hidden_size**-0.5,
        zero_query=False,
    )


def maximal_update(config: ModelConfig) -> Parametrization:
    """muP with the base width config.base_width.

    The tied readout: Adam moves each coordinate of a table row by about one LR a step, along the head's features,
    so a logit moves by readout_scale x hidden_size x LR. It stays put across widths only with readout_scale
    proportional to 1/hidden_size (Table 3: an output matrix learns at an LR of 1/fan_in): standard's scale at the
    base width, / m. (hidden_size**-0.5 / m would shrink the readout's learning as 1/sqrt(m).)
    """
    width_multiplier = config.hidden_size / config.base_width
    return Parametrization(
        width_multiplier=width_multiplier,
        attention_scale=config.attention_multiplier / head_size(config),
        readout_scale=config.base_width**-0.5 / width_multiplier,
        zero_query=config.zero_query,
    )


PARAMETRIZATIONS = {"standard": standard, "mup": maximal_update}
