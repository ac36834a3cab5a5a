"""What both Triton attention ops (softmax.py, stickbreaking.py) share: the input check, the Triton
helpers their kernels call, autotune configs, the kernel arguments they have in common, the layout of
their tensors, and the launch.

- Inputs are read through their strides: the model's q, k, v are strided views of one (B, S, 3, H, D)
  projection and are never copied, as long as they share strides and head_dim is contiguous.
- Outputs are allocated sequence-major, (B, S, H, D) in memory and returned as a (B, H, S, D) view, so
  the model's `out.transpose(1, 2).reshape(B, S, H * D)` is free, and so is the incoming gradient.
- Autotuning is keyed on the length rounded up to TUNING_LENGTH_MULTIPLE: the probe's batches have
  dozens of distinct widths, and each would otherwise pay its own tuning sweep.
- Under `torch.use_deterministic_algorithms(True)` every kernel runs its first config instead of the
  tuned one (another process may tune to another config, which sums in another order), and the
  stick-breaking backward sums per-block partial gradients in a fixed order instead of atomically.
"""

import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
# Triton reads TRITON_INTERPRET when a kernel is defined: CPU tensors work only in the interpreter.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
LOG2_E = 1.4426950408889634  # logits are kept in base-2 units so the kernels can use exp2 and log2
TUNING_LENGTH_MULTIPLE = 128  # the largest block of any config


# ---------------------------------------------------------------------------------------------
# Input check
# ---------------------------------------------------------------------------------------------


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
        key_padding_mask = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)  # (B, S)
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


# ---------------------------------------------------------------------------------------------
# Triton helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def batch_and_head(NUM_HEADS):
    """This program's batch row, head and (batch, head) index, as int64 for the pointer arithmetic."""
    batch_head = tl.program_id(1).to(tl.int64)
    return batch_head // NUM_HEADS, batch_head % NUM_HEADS, batch_head


@triton.jit
def load_rows(X, rows, dims, row_stride, SEQ_LEN):
    """A (rows, D) tile of one head, zeros past the sequence end."""
    in_range = rows[:, None] < SEQ_LEN
    return tl.load(X + rows[:, None] * row_stride + dims[None, :], mask=in_range, other=0.0)


@triton.jit
def key_is_real(KEY_MASK, keys, SEQ_LEN):
    """Which keys are real tokens (False for padding and past the sequence end)."""
    return tl.load(KEY_MASK + keys, mask=keys < SEQ_LEN, other=0) != 0


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------


def autotune_configs(
    block_names: tuple[str, ...], tuned: list[tuple[int, ...]], interpreted: tuple[int, ...]
) -> list[triton.Config]:
    """Configs from rows of (*block sizes, num_warps, num_stages) on a GPU; in the interpreter, where
    tuning is slow, the one config of block sizes `interpreted`."""
    if INTERPRETED:
        return [triton.Config(dict(zip(block_names, interpreted, strict=True)), num_warps=4, num_stages=1)]
    return [
        triton.Config(dict(zip(block_names, row[:-2], strict=True)), num_warps=row[-2], num_stages=row[-1])
        for row in tuned
    ]


def tuning_length(seq_len: int) -> int:
    """The sequence length as the autotuner sees it: rounded up to a multiple of the largest block."""
    return triton.cdiv(seq_len, TUNING_LENGTH_MULTIPLE) * TUNING_LENGTH_MULTIPLE


def kernel_arguments(
    q: torch.Tensor, key_padding_mask: torch.Tensor, causal: bool, strides: tuple, scale: float
) -> dict:
    """Arguments every kernel of both ops takes: the key mask as bytes, where each row's real keys end,
    the logit scale (`scale`, the factor of q.k) in base 2, sizes, the strides of q, k, v, and the precision
    of tl.dot."""
    num_heads, seq_len, head_dim = q.shape[1:]
    positions = torch.arange(1, seq_len + 1, device=q.device)  # (S,)
    key_end = (key_padding_mask * positions).amax(dim=-1).to(torch.int32)  # (B,): one past the last real key
    stride_batch, stride_head, stride_seq = strides
    return {
        "KEY_MASK": key_padding_mask.contiguous().view(torch.uint8),  # (B, S)
        "KEY_END": key_end,
        "qk_scale": LOG2_E * scale,
        "SEQ_LEN": seq_len,
        "NUM_HEADS": num_heads,
        "TUNING_LENGTH": tuning_length(seq_len),
        "stride_batch": stride_batch,
        "stride_head": stride_head,
        "stride_seq": stride_seq,
        "HEAD_DIM": head_dim,
        "CAUSAL": causal,
        # Exact dots for float32 inputs. With 16-bit inputs, dots of 16-bit tiles are exact either way
        # and those with float32 operands (stick-breaking's in-tile sums) round them to tf32.
        "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
    }


def shared_layout(*tensors: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[int, int, int]]:
    """The (B, H, S, D) tensors as given when they share strides with head_dim contiguous (the model's
    views of one projection, or plain contiguous tensors), else contiguous copies; and their
    (batch, head, seq) strides."""
    first = tensors[0]
    if first.stride(-1) != 1 or any(tensor.stride() != first.stride() for tensor in tensors):
        tensors = tuple(tensor.contiguous() for tensor in tensors)
    return tensors, tuple(tensors[0].stride()[:3])


def sequence_major_empty(
    shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device, leading: tuple[int, ...] = ()
) -> torch.Tensor:
    """An uninitialised (*leading, B, H, S, D) tensor laid out as (*leading, B, S, H, D) in memory."""
    batch, heads, seq_len, head_dim = shape
    storage = torch.empty((*leading, batch, seq_len, heads, head_dim), dtype=dtype, device=device)  # (..., B, S, H, D)
    return storage.transpose(-3, -2)


def sequence_major_empty_like(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One uninitialised sequence-major tensor of each (B, H, S, D) tensor's shape and dtype."""
    return tuple(sequence_major_empty(tensor.shape, tensor.dtype, tensor.device) for tensor in tensors)


def grid(block_name: str, q: torch.Tensor) -> Callable[[dict], tuple[int, int]]:
    """One program per block of `block_name` rows of the sequence and per (batch, head)."""
    batch, num_heads, seq_len, _ = q.shape
    return lambda meta: (triton.cdiv(seq_len, meta[block_name]), batch * num_heads)


def deterministic() -> bool:
    """Whether torch.use_deterministic_algorithms(True) is in force."""
    return torch.are_deterministic_algorithms_enabled()


def launch(kernel: triton.runtime.Autotuner, grid: Callable[[dict], tuple[int, ...]], **arguments) -> None:
    """Run an autotuned kernel; under torch.use_deterministic_algorithms(True), its first config."""
    if not deterministic():
        kernel[grid](**arguments)
        return
    config = kernel.configs[0]
    kernel.fn[grid](**arguments, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


# ---------------------------------------------------------------------------------------------
# Torch custom ops
# ---------------------------------------------------------------------------------------------


def register_attention_autograd(
    forward_op: torch.library.CustomOpDef, backward_op: torch.library.CustomOpDef, saved_outputs: tuple[int, ...]
) -> None:
    """Make forward_op(q, k, v, key_padding_mask, *flags) -> (out, *state) differentiable in q, k, v
    through backward_op(grad_out, q, k, v, key_padding_mask, *saved, *flags) -> (dq, dk, dv), where
    `saved` are the forward's outputs at the indices `saved_outputs`."""

    def setup_context(ctx, inputs, output):
        q, k, v, key_padding_mask, *flags = inputs
        ctx.save_for_backward(q, k, v, key_padding_mask, *(output[index] for index in saved_outputs))
        ctx.flags = flags

    def backward(ctx, grad_out, *grad_state):
        # The state outputs are saved for the backward, never returned to users: their gradients are unused.
        grad_q, grad_k, grad_v = backward_op(grad_out, *ctx.saved_tensors, *ctx.flags)
        return grad_q, grad_k, grad_v, None, *(None for _ in ctx.flags)

    forward_op.register_autograd(backward, setup_context=setup_context)
