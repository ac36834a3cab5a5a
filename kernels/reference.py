"""Plain PyTorch oracles for every attention kind: the test truth and the fallback without a GPU.

All functions take q, k, v of shape (B, H, S, D) and a boolean key_padding_mask (B, S) with
True = real token, and the logits' scale (default 1/sqrt(D): BERT's; 1/D under muP, model/parametrization.py).
They materialise the S x S matrix, so they are for checking and for small CPU runs, not for speed.
"""

import math

import torch
import torch.nn.functional as F


def logit_scale(head_dim: int, scale: float | None) -> float:
    """The factor of the attention logits q.k: `scale`, or 1/sqrt(head_dim) when None."""
    return 1.0 / math.sqrt(head_dim) if scale is None else scale


def allowed_keys(key_padding_mask: torch.Tensor, seq_len: int, causal: bool) -> torch.Tensor:
    """Boolean (B, 1, S, S) matrix: may query i look at key j."""
    allowed = key_padding_mask[:, None, None, :].expand(-1, 1, seq_len, -1)
    if causal:
        causal_mask = torch.ones(seq_len, seq_len, dtype=torch.bool, device=key_padding_mask.device)
        allowed = allowed & causal_mask.tril()
    return allowed


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(scale q k^T) v over allowed keys; a row with no allowed key gives zeros."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * logit_scale(q.shape[-1], scale)  # (B, H, S, S)
    allowed = allowed_keys(key_padding_mask, q.shape[-2], causal)
    row_has_key = allowed.any(dim=-1, keepdim=True)  # (B, 1, S, 1)
    # An empty row is filled with zeros before the softmax and zeroed after: finite both ways.
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~row_has_key, 0.0)
    weights = torch.softmax(scores, dim=-1) * row_has_key
    return torch.matmul(weights, v)


def scale_to_max_logit(q: torch.Tensor, k: torch.Tensor, max_logit: float, scale: float | None = None) -> torch.Tensor:
    """q scaled so that the largest |q_i . k_j| * scale is exactly max_logit: inputs that test
    attention at large logits (softmax near one-hot, stick-breaking beta near 0 and 1)."""
    logits = torch.matmul(q, k.transpose(-1, -2)) * logit_scale(q.shape[-1], scale)
    return q * (max_logit / logits.abs().amax())


def rotary_tables(
    seq_len: int, head_dim: int, device: torch.device, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, float64 (S, D/2), of the rotary angle of each position and frequency."""
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, device=device, dtype=torch.float64) / half)  # (D/2,)
    angles = torch.arange(seq_len, device=device, dtype=torch.float64)[:, None] * inv_freq  # (S, D/2)
    return angles.cos(), angles.sin()


def rotary_embedding(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al.) on (B, H, S, D), rotating the two halves of D."""
    seq_len, head_dim = x.shape[-2], x.shape[-1]
    half = head_dim // 2
    cos, sin = rotary_tables(seq_len, head_dim, x.device, base)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (S, D/2)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Rotary embedding on q and k, then softmax attention."""
    return softmax_attention(rotary_embedding(q), rotary_embedding(k), v, key_padding_mask, causal, scale)


def _stick_weights(
    q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-space stick-breaking weights: left/right log A (B, H, S, S) and log remainders (B, H, S)."""
    seq_len = q.shape[-2]
    logits = torch.matmul(q, k.transpose(-1, -2)) * logit_scale(q.shape[-1], scale)  # (B, H, S, S)
    real_key = key_padding_mask[:, None, None, :]
    # Padded keys have beta = 0: log beta = -inf (take nothing), log(1 - beta) = 0 (break nothing).
    log_beta = F.logsigmoid(logits).masked_fill(~real_key, float("-inf"))
    log_one_minus_beta = F.logsigmoid(-logits).masked_fill(~real_key, 0.0)

    index = torch.arange(seq_len, device=q.device)
    left = index[None, :] < index[:, None]  # (S, S): key j strictly left of query i
    right = index[None, :] > index[:, None]

    # Sum over the keys strictly between j and i. Summing from i outward keeps every partial sum
    # a sum of the terms in between (no large cancelling totals).
    left_terms = log_one_minus_beta * left
    left_between = left_terms.flip(-1).cumsum(-1).flip(-1) - left_terms  # sum_{j<l<i}
    right_terms = log_one_minus_beta * right
    right_between = right_terms.cumsum(-1) - right_terms  # sum_{i<l<j}

    log_weight_left = (log_beta + left_between).masked_fill(~left, float("-inf"))
    log_weight_right = (log_beta + right_between).masked_fill(~right, float("-inf"))
    log_remainder_left = left_terms.sum(-1)
    log_remainder_right = right_terms.sum(-1)
    return log_weight_left, log_weight_right, log_remainder_left, log_remainder_right


def stickbreaking_weights(
    q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """Full (B, H, S, S) attention matrix of exposb, the remainder on the diagonal; rows sum to one."""
    log_left, log_right, rem_left, rem_right = _stick_weights(q, k, key_padding_mask, scale)
    diagonal = torch.diag_embed
    if causal:
        return log_left.exp() + diagonal(rem_left.exp())
    return 0.5 * (log_left.exp() + log_right.exp() + diagonal(rem_left.exp() + rem_right.exp()))


def stickbreaking_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Bidirectional stick-breaking attention (exposb) as ARCHITECTURE.md defines it; causal = left stick."""
    return torch.matmul(stickbreaking_weights(q, k, key_padding_mask, causal, scale), v)
