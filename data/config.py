"""The data layer's settings: which corpus files to read and how to pack them, and how MLM batches are
masked. Plain dataclasses without torch, so the study's tools (status, report, export) load a config
without loading the model; their defaults live in config.yaml (hpo.config.load_config)."""

from dataclasses import dataclass, field

# The masking strategies' names (data.masking.MASKING_STRATEGIES), kept here so that validating a config loads
# no torch (tests/test_registries.py checks they equal the registry's keys).
MASKING_STRATEGIES = ("standard", "dynamic", "span", "whole_word")
ALL_SOURCES = (
    "austen",
    "brown",
    "gcide",
    "perl_docs",
    "python_docs",
    "spamassassin_ham",
    "wikipedia",
    "wordnet",
)


@dataclass
class CorpusConfig:
    """Which corpus files to read and how to pack them (config.yaml, section data)."""

    sources: list[str] = field(metadata={"role": "train"})
    seq_len: int = field(metadata={"role": "train"})  # tokens per packed sequence, [CLS] included
    validation_every: int = field(metadata={"role": "train"})  # every N-th document is held out for the validation loss
    cache_dir: str = field(metadata={"role": "inert"})

    def validate(self) -> None:
        unknown = sorted(set(self.sources) - set(ALL_SOURCES))
        if unknown or not self.sources:
            raise ValueError(f"data.sources has {unknown or 'no sources'}; choose from {list(ALL_SOURCES)}")
        if not 8 <= self.seq_len <= 4096:
            raise ValueError(f"data.seq_len = {self.seq_len}; expected 8..4096")
        if self.validation_every < 2:
            raise ValueError(f"data.validation_every = {self.validation_every}; expected >= 2")


@dataclass
class MaskingConfig:
    """How MLM batches are masked (config.yaml, section masking); the strategies are described in
    ARCHITECTURE.md and implemented in data/masking.py."""

    strategy: str = field(metadata={"role": "train"})  # a key of data.masking.MASKING_STRATEGIES
    # fraction of non-special tokens predicted (standard, span, whole_word)
    rate: float = field(metadata={"role": "train"})
    # dynamic: the rate is drawn per batch uniformly in [min_rate, max_rate]
    min_rate: float = field(metadata={"role": "train"})
    max_rate: float = field(metadata={"role": "train"})
    mask_token_fraction: float = field(metadata={"role": "train"})  # predicted units shown as [MASK]
    # shown as random non-special tokens; the rest unchanged
    random_token_fraction: float = field(metadata={"role": "train"})
    # span length in words ~ Geometric(p) restricted to 1..span_max_length
    span_geometric_p: float = field(metadata={"role": "train"})
    span_max_length: int = field(metadata={"role": "train"})

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and the allowed range."""
        if self.strategy not in MASKING_STRATEGIES:
            raise ValueError(f"masking.strategy = {self.strategy!r}; expected one of {', '.join(MASKING_STRATEGIES)}")
        if not 0 < self.rate < 1:
            raise ValueError(f"masking.rate = {self.rate}; expected 0 < rate < 1")
        if not 0 < self.min_rate <= self.max_rate < 1:
            raise ValueError(
                f"masking.min_rate = {self.min_rate}, masking.max_rate = {self.max_rate}; "
                "expected 0 < min_rate <= max_rate < 1"
            )
        for name in ("mask_token_fraction", "random_token_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"masking.{name} = {getattr(self, name)}; expected 0 <= fraction <= 1")
        if self.mask_token_fraction + self.random_token_fraction > 1:
            raise ValueError(
                f"masking.mask_token_fraction + masking.random_token_fraction = "
                f"{self.mask_token_fraction} + {self.random_token_fraction}; expected a sum <= 1"
            )
        if not 0 < self.span_geometric_p < 1:
            raise ValueError(f"masking.span_geometric_p = {self.span_geometric_p}; expected 0 < p < 1")
        if isinstance(self.span_max_length, bool) or not isinstance(self.span_max_length, int):
            raise ValueError(f"masking.span_max_length = {self.span_max_length!r}; expected an integer >= 1")
        if self.span_max_length < 1:
            raise ValueError(f"masking.span_max_length = {self.span_max_length}; expected an integer >= 1")
