"""Position handling per attention kind: what is added to the token embeddings.

rope and exposb add nothing here: rope rotates q and k inside the attention kernel, and
stick-breaking attention orders keys by distance on its own.
"""

import math

import torch
from torch import nn

from model.config import ModelConfig


class LearnedPositions(nn.Module):
    """BERT's learned absolute position table."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.table = nn.Embedding(config.max_seq_len, config.hidden_size)  # initialised with the token table's scale

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.table.weight[:seq_len]  # (S, H)


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al.): sin on even, cos on odd channels, at an amplitude of 1
    (model.sinusoid_amplitude: unit) or scaled to the token table's (table: the same root mean square as a
    row of the table at its start, embedding_std; a sinusoid's is 1 / sqrt(2)). At amplitude 1 beside a
    table of std 0.1 the positions outweigh the tokens about 7 to 1 before the first layer norm, as in
    Vaswani et al., who scale the token embeddings by sqrt(hidden) for this reason."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.amplitude = math.sqrt(2) * config.embedding_std if config.sinusoid_amplitude == "table" else 1.0
        table = torch.empty(config.max_seq_len, config.hidden_size)  # (max_seq_len, H)
        self.register_buffer("table", table, persistent=False)
        self.reset_table()

    @torch.no_grad()
    def reset_table(self) -> None:
        """Fill the table; also called after a Hugging Face load, which leaves non-persistent buffers empty."""
        max_seq_len, hidden_size = self.table.shape
        position = torch.arange(max_seq_len, dtype=torch.float64)[:, None]  # (max_seq_len, 1)
        frequency = torch.exp(-math.log(10000.0) * torch.arange(0, hidden_size, 2) / hidden_size)  # (ceil(H / 2),)
        table = torch.zeros(max_seq_len, hidden_size, dtype=torch.float64)  # (max_seq_len, H)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency[: hidden_size // 2])
        self.table.copy_(self.amplitude * table)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.table[:seq_len]  # (S, H)


class NoPositions(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, seq_len: int) -> None:
        return None


# attention kind -> what the embedding layer adds for positions
POSITIONS_BY_ATTENTION_KIND: dict[str, type[nn.Module]] = {
    "standard": LearnedPositions,
    "absolute": SinusoidalPositions,
    "rope": NoPositions,
    "exposb": NoPositions,
}
