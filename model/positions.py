"""Position handling per attention kind: what is added to the token embeddings.

rope and exposb add nothing here: rope rotates q and k inside the attention kernel, and
stick-breaking attention orders keys by distance on its own.
"""

import math

import torch
from torch import nn


class LearnedPositions(nn.Module):
    """BERT's learned absolute position table."""

    def __init__(self, max_seq_len: int, hidden_size: int):
        super().__init__()
        self.table = nn.Embedding(max_seq_len, hidden_size)  # initialised with the token table's scale

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.table.weight[:seq_len]  # (S, H)


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al.): sin on even, cos on odd channels."""

    def __init__(self, max_seq_len: int, hidden_size: int):
        super().__init__()
        self.register_buffer("table", torch.empty(max_seq_len, hidden_size), persistent=False)  # (max_seq_len, H)
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
        self.table.copy_(table)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.table[:seq_len]  # (S, H)


class NoPositions(nn.Module):
    def __init__(self, max_seq_len: int, hidden_size: int):
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
