"""The encoder's settings (config.yaml, section model): a plain dataclass without torch, so the study's
tools load a config without loading the model; the defaults live in config.yaml."""

import math
from dataclasses import dataclass, field

# The names of the registries this section chooses from, kept here so that validating a config loads no torch
# (tests/test_registries.py checks each equals its registry's keys).
ATTENTION_KINDS = ("standard", "absolute", "rope", "exposb")  # kernels.ATTENTION_KINDS
ATTENTION_BACKENDS = ("auto", "triton", "reference", "oracle")  # kernels.BACKENDS
POOLINGS = ("mean", "first", "last", "pooler")  # model.bert.POOLINGS
SINUSOID_AMPLITUDES = ("table", "unit")  # model.positions.SinusoidalPositions
PARAMETRIZATIONS = ("standard", "mup")  # model.parametrization.PARAMETRIZATIONS


@dataclass
class ModelConfig:
    """Shape and behaviour of the encoder; the vocabulary size comes from the tokenizer."""

    hidden_size: int = field(metadata={"role": "start"})
    num_layers: int = field(metadata={"role": "start"})
    num_heads: int = field(metadata={"role": "start"})
    ffn_multiple: int = field(metadata={"role": "start"})  # feed-forward width = ffn_multiple * hidden_size
    # initial scale of the token, segment and learned position tables
    embedding_std: float = field(metadata={"role": "start", "legacy": 1.0})
    dropout: float = field(metadata={"role": "train"})
    attention_kind: str = field(metadata={"role": "start"})  # a key of kernels.ATTENTION_KINDS
    attention_backend: str = field(metadata={"role": "train"})  # one of kernels.BACKENDS
    pooling: str = field(metadata={"role": "start"})  # a key of model.bert.POOLINGS
    max_seq_len: int = field(metadata={"role": "start"})
    # absolute: sinusoids at the token table's scale (table) or at amplitude 1 (unit, before 2026-12-04)
    sinusoid_amplitude: str = field(metadata={"role": "start", "legacy": "unit"})
    gradient_checkpointing: bool = field(metadata={"role": "train"})
    # torch.compile the encoder's forward for training (training/pretrain.py)
    compile: bool = field(metadata={"role": "train", "legacy": False})
    # how the width sets initial scales and learning rates: a key of model.parametrization.PARAMETRIZATIONS
    parametrization: str = field(metadata={"role": "start", "legacy": "standard"})
    # mup: the hidden size the recipe's learning rates were tuned at (the width multiplier is hidden_size / this)
    base_width: int = field(metadata={"role": "start", "legacy": 128})
    # mup: attention logits are attention_multiplier x q.k / head size (microsoft/mup's attn_mult); sqrt(head size)
    # makes them standard's at that head size (1.0 before 2026-12-07)
    attention_multiplier: float = field(metadata={"role": "start", "legacy": 1.0})
    # mup: the query projection starts at zero (Tensor Programs V's advice: the first attention is uniform)
    zero_query: bool = field(metadata={"role": "start", "legacy": True})

    def inert_keys(self) -> tuple[str, ...]:
        """The settings that change nothing in this encoder: mup's, under the standard parametrisation."""
        return ("base_width", "attention_multiplier", "zero_query") if self.parametrization == "standard" else ()

    def validate(self) -> None:
        if self.attention_kind not in ATTENTION_KINDS:
            raise ValueError(f"model.attention_kind = {self.attention_kind!r}; expected one of {list(ATTENTION_KINDS)}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"model.attention_backend = {self.attention_backend!r}; expected one of {ATTENTION_BACKENDS}"
            )
        if self.sinusoid_amplitude not in SINUSOID_AMPLITUDES:
            expected = ", ".join(SINUSOID_AMPLITUDES)
            raise ValueError(f"model.sinusoid_amplitude = {self.sinusoid_amplitude!r}; expected one of {expected}")
        if self.parametrization not in PARAMETRIZATIONS:
            expected = ", ".join(PARAMETRIZATIONS)
            raise ValueError(f"model.parametrization = {self.parametrization!r}; expected one of {expected}")
        if self.base_width <= 0:
            raise ValueError(
                f"model.base_width = {self.base_width}; expected a positive width: the hidden size at which the "
                "recipe was tuned (e.g. 128)"
            )
        if not (math.isfinite(self.attention_multiplier) and self.attention_multiplier > 0):
            raise ValueError(
                f"model.attention_multiplier = {self.attention_multiplier}; expected a positive number: mup's "
                "attention logits are it x q.k / head size (8 = sqrt(64) gives standard's at head size 64)"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"model.pooling = {self.pooling!r}; expected one of {list(POOLINGS)}")
        if self.hidden_size <= 0 or self.num_layers <= 0 or self.num_heads <= 0:
            raise ValueError("model.hidden_size, model.num_layers and model.num_heads must be positive")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.num_heads = {self.num_heads} does not divide model.hidden_size = {self.hidden_size}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"head size {self.hidden_size // self.num_heads} must be even (rotary embedding)")
        if not self.embedding_std > 0:
            raise ValueError(f"model.embedding_std = {self.embedding_std}; expected > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout = {self.dropout}; expected 0 <= dropout < 1")
