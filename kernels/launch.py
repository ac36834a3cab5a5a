"""How both Triton ops hand tensors to their kernels: strides, output layout, tuning keys, launches.

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

from collections.abc import Callable

import torch
import triton

TUNING_LENGTH_MULTIPLE = 128  # the largest block of any config


def tuning_length(seq_len: int) -> int:
    """The sequence length as the autotuner sees it: rounded up to a multiple of the largest block."""
    return triton.cdiv(seq_len, TUNING_LENGTH_MULTIPLE) * TUNING_LENGTH_MULTIPLE


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
    storage = torch.empty((*leading, batch, seq_len, heads, head_dim), dtype=dtype, device=device)
    return storage.transpose(-3, -2)


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
