"""Input checks shared by the Triton attention ops: one message per mistake, naming the input."""

import os

import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
# Triton reads TRITON_INTERPRET when a kernel is defined: CPU tensors work only in the interpreter.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def check_attention_inputs(op_name: str, q, k, v, key_padding_mask) -> torch.Tensor:
    """The key padding mask to use (all keys real when None); a ValueError that says which input is
    wrong and what was expected."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"{op_name} expects q, k, v of one shape (batch, heads, seq, head_dim); "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    batch, _, seq_len, head_dim = q.shape
    if key_padding_mask is None:
        key_padding_mask = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{op_name} supports head_dim in {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"{op_name} expects q, k, v of one dtype among {SUPPORTED_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (batch, seq_len):
        raise ValueError(
            f"key_padding_mask must be bool of shape (batch, seq) = {(batch, seq_len)}; "
            f"got {key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}"
        )
    devices = {t.device for t in (q, k, v, key_padding_mask)}
    if len(devices) != 1:
        raise ValueError(f"q, k, v and key_padding_mask must be on one device; got {devices}")
    if not (q.is_cuda or INTERPRETED):
        raise ValueError(
            f"{op_name} runs Triton kernels: it needs CUDA tensors (got {q.device}), "
            "or TRITON_INTERPRET=1 set before triton is imported to run them on the CPU"
        )
    return key_padding_mask
