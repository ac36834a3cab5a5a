"""What the kernel tests share: the interpreter flag, the padding masks, the tolerance rule, inputs with
large logits, and GPU arithmetic in the interpreter.

Tolerance rule of flash-attention's tests: a kernel's error against the float64 oracle must be within
2x the error of plain PyTorch (the oracle run in the kernel's dtype), plus two ulps of the result's
scale.

Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py when no GPU is visible, before
triton is first imported) runs `tl.dot` as an exact float32 numpy matmul: it ignores
`input_precision="tf32"`, multiplies bfloat16 operands as their raw uint16 bits, and truncates
float32 -> bfloat16 where a GPU rounds to nearest. `gpu_arithmetic()` makes it do what an NVIDIA GPU
does, so that 16-bit kernels and the tf32 rounding of float32 dots are tested on the CPU.
"""

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from kernels import reference
from kernels.common import INTERPRETED  # the one reading of TRITON_INTERPRET, where the kernels read it

DEVICE = "cpu" if INTERPRETED else "cuda"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_LOGIT = 30.0  # softmax near one-hot, stick-breaking beta within 1e-13 of 0 or 1 at the extremes
RESULT_NAMES = ("out", "dq", "dk", "dv")
needs_triton = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="the Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 set before triton is imported",
)
gpu_only = pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA GPU, no interpreter")


def padding_mask(batch: int, seq_len: int, pattern: str = "tail") -> torch.Tensor:
    """(B, S) True = real key, on DEVICE. Rows cycle through: no padding; padding by `pattern` ("tail":
    the last quarter and a hole at S/3, "scattered": about 30% at random positions); all padding."""
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    for row in range(batch):
        if row % 3 == 1 and pattern == "tail":
            mask[row, seq_len - seq_len // 4 :] = False
            mask[row, seq_len // 3] = False
        elif row % 3 == 1:
            mask[row] = torch.rand(seq_len) > 0.3
        elif row % 3 == 2:
            mask[row] = False
    return mask.to(DEVICE)


def forward_and_gradients(
    attention: Callable[..., torch.Tensor], inputs: list[torch.Tensor], grad_out: torch.Tensor, dtype: torch.dtype
) -> list[torch.Tensor]:
    """[out, dq, dk, dv] of attention(q, k, v) on copies of q, k, v cast to dtype."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in inputs]
    out = attention(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out.to(dtype))]


def assert_matches_oracle(
    kernel: Callable[..., torch.Tensor],
    oracle: Callable[..., torch.Tensor],
    inputs: list[torch.Tensor],
    grad_out: torch.Tensor,
    dtype: torch.dtype,
    slack: float = 0.0,
) -> list[torch.Tensor]:
    """Check [out, dq, dk, dv] of kernel(q, k, v) in dtype by the tolerance rule (with an extra absolute
    `slack`) against oracle(q, k, v) in float64; return the kernel's."""
    ours = forward_and_gradients(kernel, inputs, grad_out, dtype)
    plain = forward_and_gradients(oracle, inputs, grad_out, dtype)
    truth = forward_and_gradients(oracle, inputs, grad_out, torch.float64)
    for name, got, plain_result, expected in zip(RESULT_NAMES, ours, plain, truth, strict=True):
        assert got.dtype == dtype and got.shape == expected.shape, name
        assert torch.isfinite(got).all(), f"{name} has NaN or inf"
        error = (got.double() - expected).abs().max().item()
        plain_error = (plain_result.double() - expected).abs().max().item()
        allowed = 2 * plain_error + 2 * torch.finfo(dtype).eps * expected.abs().max().item() + slack
        assert error <= allowed, (
            f"{name}: kernel error {error:.3g} vs float64, plain PyTorch {dtype} {plain_error:.3g}"
            f" (allowed {allowed:.3g})"
        )
    return ours


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
    if not INTERPRETED:
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
