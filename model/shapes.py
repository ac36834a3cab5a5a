"""The encoder's shape (hidden size, layers, heads) and the named sizes of BERT's family, the sizes a full run is
trained at (`main.py export --target_size`). No torch: the study's read-only tools name shapes too."""

from dataclasses import dataclass

from model.config import ModelConfig


@dataclass(frozen=True)
class Shape:
    """What an export may change of a recipe's encoder: its width, depth and heads."""

    hidden_size: int
    num_layers: int
    num_heads: int

    @classmethod
    def of(cls, config: ModelConfig) -> "Shape":
        return cls(config.hidden_size, config.num_layers, config.num_heads)

    def __str__(self) -> str:
        return f"{self.hidden_size}/{self.num_layers}/{self.num_heads}"

    @property
    def label(self) -> str:
        """For a file name: hidden x layers x heads."""
        return f"{self.hidden_size}x{self.num_layers}x{self.num_heads}"

    def problem(self) -> str | None:
        """Why no encoder has this shape (the rules of ModelConfig.validate), or None."""
        where = f"shape {self} (hidden/layers/heads)"
        if min(self.hidden_size, self.num_layers, self.num_heads) <= 0:
            return f"{where}: each must be positive"
        if self.hidden_size % self.num_heads:
            return f"{where}: {self.num_heads} heads do not divide hidden size {self.hidden_size}"
        if (self.hidden_size // self.num_heads) % 2:
            return f"{where}: head size {self.hidden_size // self.num_heads} must be even (rotary embedding)"
        return None


# BERT's compact models (Turc et al. 2019, "Well-Read Students Learn Better") and BERT-base: head size 64 throughout.
# Not the search space's model.size choices, which name the sizes a study tries (its mini is 192/2/3).
BERT_SIZES = {
    "tiny": Shape(128, 2, 2),
    "mini": Shape(256, 4, 4),
    "small": Shape(512, 4, 8),
    "medium": Shape(512, 8, 8),
    "base": Shape(768, 12, 12),
}
