"""The encoder's settings (config.yaml, section model): a plain dataclass without torch, so the study's
tools load a config without loading the model; the defaults live in config.yaml."""

from dataclasses import dataclass

# The names of the registries this section chooses from, kept here so that validating a config loads no torch
# (tests/test_registries.py checks each equals its registry's keys).
ATTENTION_KINDS = ("standard", "absolute", "rope", "exposb")  # kernels.ATTENTION_KINDS
ATTENTION_BACKENDS = ("auto", "triton", "reference", "oracle")  # kernels.BACKENDS
POOLINGS = ("mean", "first", "pooler")  # model.bert.POOLINGS


@dataclass
class ModelConfig:
    """Shape and behaviour of the encoder; the vocabulary size comes from the tokenizer."""

    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_multiple: int  # feed-forward width = ffn_multiple * hidden_size
    embedding_std: float  # initial scale of the token, segment and learned position tables
    dropout: float
    attention_kind: str  # a key of kernels.ATTENTION_KINDS
    attention_backend: str  # one of kernels.BACKENDS
    pooling: str  # a key of model.bert.POOLINGS
    max_seq_len: int
    gradient_checkpointing: bool
    compile: bool  # torch.compile the encoder's forward for training (training/pretrain.py)

    def validate(self) -> None:
        if self.attention_kind not in ATTENTION_KINDS:
            raise ValueError(f"model.attention_kind = {self.attention_kind!r}; expected one of {list(ATTENTION_KINDS)}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"model.attention_backend = {self.attention_backend!r}; expected one of {ATTENTION_BACKENDS}"
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
