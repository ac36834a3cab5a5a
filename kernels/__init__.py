"""Attention for every kind, one entry point: attention(kind, q, k, v, key_padding_mask, causal, backend, scale).

`scale` multiplies the logits q.k: None is BERT's 1/sqrt(head_dim); muP's is 1/head_dim (model/parametrization.py).

Backends:
- "triton": our Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).
- "reference": the PyTorch code of kernels/reference.py (torch SDPA for the softmax kinds).
- "auto": Triton on CUDA tensors, the reference elsewhere.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels import reference

# (q, k, v, key_padding_mask, causal, scale) -> out
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool, float | None], torch.Tensor]


def _sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    causal: bool,
    scale: float | None = None,
) -> torch.Tensor:
    """torch SDPA with the house rule that a query with no allowed key gets zeros, not NaN."""
    allowed = reference.allowed_keys(key_padding_mask, q.shape[-2], causal)
    row_has_key = allowed.any(dim=-1, keepdim=True)
    # SDPA returns NaN for an all-masked row; let such rows attend everywhere, then zero them.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~row_has_key, scale=scale)
    return out * row_has_key.to(out.dtype)


def _sdpa_rope_attention(q, k, v, key_padding_mask, causal, scale=None):
    q, k = reference.rotary_embedding(q), reference.rotary_embedding(k)
    return _sdpa_attention(q, k, v, key_padding_mask, causal, scale)


def _triton_softmax(q, k, v, key_padding_mask, causal, scale=None):
    from kernels.softmax import flash_attention

    return flash_attention(q, k, v, key_padding_mask, causal, rotary=False, scale=scale)


def _triton_rope(q, k, v, key_padding_mask, causal, scale=None):
    from kernels.softmax import flash_attention

    return flash_attention(q, k, v, key_padding_mask, causal, rotary=True, scale=scale)


def _triton_stickbreaking(q, k, v, key_padding_mask, causal, scale=None):
    from kernels.stickbreaking import stickbreaking_attention

    return stickbreaking_attention(q, k, v, key_padding_mask, causal, scale)


# kind -> backend -> implementation. "oracle" is the float64-checkable PyTorch definition.
ATTENTION_KINDS: dict[str, dict[str, AttentionFn]] = {
    "standard": {
        "oracle": reference.softmax_attention,
        "reference": _sdpa_attention,
        "triton": _triton_softmax,
    },
    "absolute": {
        "oracle": reference.softmax_attention,
        "reference": _sdpa_attention,
        "triton": _triton_softmax,
    },
    "rope": {
        "oracle": reference.rope_attention,
        "reference": _sdpa_rope_attention,
        "triton": _triton_rope,
    },
    "exposb": {
        "oracle": reference.stickbreaking_attention,
        "reference": reference.stickbreaking_attention,
        "triton": _triton_stickbreaking,
    },
}
BACKENDS = ("auto", "triton", "reference", "oracle")


def attention(
    kind: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    causal: bool = False,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of the given kind on (B, H, S, D) tensors; key_padding_mask (B, S), True = real; the logits
    q.k times `scale` (None: 1/sqrt(head_dim))."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {sorted(ATTENTION_KINDS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        backend = "triton" if q.is_cuda else "reference"
    return ATTENTION_KINDS[kind][backend](q, k, v, key_padding_mask, causal, scale)
