"""Helpers shared by the kernel tests: inputs with large logits, and GPU arithmetic in the interpreter.

Triton's interpreter (TRITON_INTERPRET=1) runs `tl.dot` as an exact float32 numpy matmul: it
ignores `input_precision="tf32"`, multiplies bfloat16 operands as their raw uint16 bits, and
truncates float32 -> bfloat16 where a GPU rounds to nearest. `gpu_arithmetic()` makes it do what
an NVIDIA GPU does, so that 16-bit kernels and the tf32 rounding of float32 dots are tested on the CPU.
"""

import contextlib
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch

from kernels import reference


def large_logit_qkv(
    shape: tuple[int, int, int, int], max_logit: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """float64 q, k, v (B, H, S, D), q scaled so that max |q.k| / sqrt(D) is exactly `max_logit`."""
    q, k, v = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in "qkv")
    return [reference.scale_to_max_logit(q, k, max_logit), k, v]


def _float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, as a GPU's cvt.rn.bf16.f32; the interpreter keeps bfloat16 as uint16."""
    rounded = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return rounded.view(torch.int16).numpy().view(np.uint16)


def _bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _round_to_tf32(values: np.ndarray) -> np.ndarray:
    """Keep 10 mantissa bits, rounding to nearest even, as tensor cores read float32 operands in tf32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    round_bias = ((bits >> np.uint32(13)) & np.uint32(1)) + np.uint32(0x0FFF)
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    return np.where(finite, (bits + round_bias) & np.uint32(0xFFFFE000), bits).view(np.float32)


@contextlib.contextmanager
def gpu_arithmetic() -> Iterator[None]:
    """Within the block, the interpreter's dots and float32 <-> bfloat16 casts round as a GPU's do
    (on a GPU, nothing to do)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import triton.language as tl
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original_dot, original_cast = builder.create_dot, builder.cast_impl

    def operand(handle) -> np.ndarray:
        if handle.dtype.scalar == tl.bfloat16:
            return _bfloat16_bits_to_float32(handle.data)
        return handle.data.astype(np.float32)

    def create_dot(self, a, b, accumulator, input_precision, max_num_imprecise_acc):
        if accumulator.dtype.scalar != tl.float32:
            return original_dot(self, a, b, accumulator, input_precision, max_num_imprecise_acc)
        left, right = operand(a), operand(b)
        if input_precision == ir.INPUT_PRECISION.TF32 and tl.float32 in (a.dtype.scalar, b.dtype.scalar):
            left, right = _round_to_tf32(left), _round_to_tf32(right)
        product = np.matmul(left, right, dtype=np.float32) + accumulator.data
        return interpreter.TensorHandle(product.astype(np.float32), tl.float32)

    def cast_impl(self, source, target_type):
        if source.dtype.scalar == tl.float32 and target_type.scalar == tl.bfloat16:
            return interpreter.TensorHandle(_float32_to_bfloat16_bits(source.data), tl.bfloat16)
        if source.dtype.scalar == tl.bfloat16 and target_type.scalar == tl.float32:
            return interpreter.TensorHandle(_bfloat16_bits_to_float32(source.data), tl.float32)
        return original_cast(self, source, target_type)

    builder.create_dot, builder.cast_impl = create_dot, cast_impl
    try:
        yield
    finally:
        builder.create_dot, builder.cast_impl = original_dot, original_cast


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """torch.use_deterministic_algorithms(True) within the block, the previous setting after it. Our
    kernels follow the flag; torch's own ops without a deterministic version only warn (warn_only)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def assert_only_rounding_error(
    out: torch.Tensor, attention: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """`out`, computed in a 16-bit dtype from q, k, v, is off the float64 `attention` of the same rounded
    inputs by at most twice the rounding a float32 computation must make: each weight A_ij rounded
    before the product with v, and the output rounded, i.e. eps * (|o_i| + sum_j A_ij |v_j|) with eps
    the dtype's machine epsilon (two unit roundoffs). `attention` takes float64 q, k, v."""
    rounded = [tensor.to(out.dtype).double() for tensor in (q, k, v)]
    truth = attention(*rounded)
    weighted_magnitude = attention(rounded[0], rounded[1], rounded[2].abs())  # weights are >= 0
    # Rows that must come out exactly (all keys padded: zeros) have a bound of 0 plus the tiny term.
    bound = torch.finfo(out.dtype).eps * (truth.abs() + weighted_magnitude) + torch.finfo(torch.float64).tiny
    excess = (out.double() - truth).abs() / bound
    worst = tuple(int(index) for index in torch.unravel_index(excess.argmax(), excess.shape))
    assert excess.max().item() <= 1.0, (
        f"{out.dtype} output off by {excess.max().item():.2f}x its rounding bound at {worst}: "
        f"{out[worst].item():.6g} against {truth[worst].item():.6g}"
    )
