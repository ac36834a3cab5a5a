"""Triton stick-breaking attention (exposb) against the PyTorch oracle, forward and backward.

Tolerance rule of flash-attention's tests: the kernel's error against the oracle run in float64
must be within 2x the error of the plain PyTorch reference run in the kernel's dtype, plus a
couple of ulps of the result's scale. On the CPU the kernels run in Triton's interpreter, made to
round 16-bit and tf32 arithmetic as a GPU does where a test needs it (tests/oracle.py).
"""

import os

import pytest
import torch

from kernels import reference
from kernels.stickbreaking import stickbreaking_attention
from tests.oracle import assert_only_rounding_error, deterministic_algorithms, gpu_arithmetic, large_logit_qkv

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if not (torch.cuda.is_available() or INTERPRETED):
    pytest.skip(
        "the Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 to run them on the CPU",
        allow_module_level=True,
    )
DEVICE = "cpu" if INTERPRETED else "cuda"
RESULT_NAMES = ("out", "dq", "dk", "dv")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_LOGIT = 30.0  # beta within 1e-13 of 0 or 1 at the extremes


def padding_mask(batch: int, seq_len: int, pattern: str) -> torch.Tensor:
    """(B, S) True = real key. Row 0 unpadded, the last row all padding, the rows between padded
    at the tail ("tail") or at random positions ("scattered")."""
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    for row in range(1, batch - 1):
        if pattern == "tail":
            mask[row, seq_len * 2 // 3 :] = False
        else:
            mask[row] = torch.rand(seq_len) > 0.3
    mask[-1] = False
    return mask.to(DEVICE)


def random_qkv(batch: int, heads: int, seq_len: int, head_dim: int) -> list[torch.Tensor]:
    """q, k, v (B, H, S, D) as strided views of one (B, S, 3, H, D) projection, as a model makes."""
    qkv = torch.randn(batch, seq_len, 3, heads, head_dim, device=DEVICE)
    return list(qkv.permute(2, 0, 3, 1, 4).unbind(0))


def forward_backward(attention, q, k, v, key_padding_mask, causal, grad_out, dtype):
    """out, dq, dk, dv of `attention` run in `dtype`."""
    inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = attention(*inputs, key_padding_mask, causal)
    out.backward(grad_out.to(dtype))
    return [out.detach(), *(t.grad for t in inputs)]


def assert_matches_oracle(q, k, v, key_padding_mask, causal, dtype, grad_out) -> list[torch.Tensor]:
    """Check out, dq, dk, dv of the kernel by the tolerance rule; return them."""
    args = (q, k, v, key_padding_mask, causal, grad_out)
    oracle = forward_backward(reference.stickbreaking_attention, *args, torch.float64)
    plain = forward_backward(reference.stickbreaking_attention, *args, dtype)
    kernel = forward_backward(stickbreaking_attention, *args, dtype)
    for name, got, plain_result, expected in zip(RESULT_NAMES, kernel, plain, oracle, strict=True):
        assert got.dtype == dtype and got.shape == expected.shape, name
        assert torch.isfinite(got).all(), f"{name} has NaN or inf"
        kernel_error = (got.double() - expected).abs().max().item()
        plain_error = (plain_result.double() - expected).abs().max().item()
        ulps = 2 * torch.finfo(dtype).eps * expected.abs().max().item()
        assert kernel_error <= 2 * plain_error + ulps, (
            f"{name}: kernel error {kernel_error:.3g} > 2 x reference error {plain_error:.3g}"
            f" + {ulps:.3g} ({dtype}, causal={causal})"
        )
    return kernel


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize(
    ("seq_len", "head_dim", "pattern"),
    [(37, 32, "tail"), (100, 64, "tail"), (45, 64, "scattered"), (20, 128, "tail")],
)
def test_matches_float64_oracle(seq_len, head_dim, pattern, causal):
    torch.manual_seed(seq_len + head_dim)
    heads = 1 if seq_len >= 100 else 2
    q, k, v = random_qkv(3, heads, seq_len, head_dim)
    mask = padding_mask(3, seq_len, pattern)
    grad_out = torch.randn_like(q)
    out, grad_q, grad_k, grad_v = assert_matches_oracle(q, k, v, mask, causal, torch.float32, grad_out)

    # With every key padded each query keeps its whole stick(s): o_i = v_i, and only v_i learns.
    assert torch.equal(out[-1], v[-1])
    assert torch.equal(grad_v[-1], grad_out[-1])
    assert not grad_q[-1].any() and not grad_k[-1].any()


def test_float16_matches_oracle():
    """16-bit inputs take the tf32 path for the in-tile sums and round weights before p @ v."""
    torch.manual_seed(0)
    q, k, v = random_qkv(3, 1, 40, 32)
    assert_matches_oracle(q, k, v, padding_mask(3, 40, "tail"), False, torch.float16, torch.randn_like(q))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_large_logits_match_float64_oracle(causal, dtype):
    """Logits up to +-30, forward and backward, in every dtype, by the tolerance rule."""
    generator = torch.Generator().manual_seed(1)
    q, k, v = (t.to(DEVICE) for t in large_logit_qkv((3, 2, 40, 32), MAX_LOGIT, generator))
    grad_out = torch.randn(q.shape, generator=generator, dtype=torch.float64).to(DEVICE)
    with gpu_arithmetic():
        assert_matches_oracle(q, k, v, padding_mask(3, 40, "tail"), causal, dtype, grad_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_16bit_output_has_only_rounding_error_at_large_logits(causal, dtype):
    """The in-tile sums run as tf32 dots for 16-bit inputs. Written as x + log2(1 - beta) + ..., the
    weight's logarithm cancelled x against -softplus(x) and carried the dots' rounding of the large
    term: in fp16 the error reached 3-5x this bound at logits of 30."""
    generator = torch.Generator().manual_seed(2)
    q, k, v = (t.to(DEVICE) for t in large_logit_qkv((2, 2, 40, 32), MAX_LOGIT, generator))
    mask = padding_mask(2, 40, "scattered")
    with gpu_arithmetic():
        out = stickbreaking_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, causal)
    assert_only_rounding_error(out, lambda *qkv: reference.stickbreaking_attention(*qkv, mask, causal), q, k, v)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_deterministic_mode_matches_oracle_and_repeats_bit_for_bit(causal):
    """Under torch.use_deterministic_algorithms(True) the backward sums per-block slots, no atomics."""
    torch.manual_seed(3)
    q, k, v = random_qkv(3, 1, 40, 32)  # two query blocks in the interpreter
    mask = padding_mask(3, 40, "scattered")
    grad_out = torch.randn_like(q)
    with deterministic_algorithms():
        first = assert_matches_oracle(q, k, v, mask, causal, torch.float32, grad_out)
        second = forward_backward(stickbreaking_attention, q, k, v, mask, causal, grad_out, torch.float32)
    for name, one, other in zip(RESULT_NAMES, first, second, strict=True):
        assert torch.equal(one, other), f"{name} differs between two deterministic runs"


def test_output_is_sequence_major():
    """out is a (B, H, S, D) view of (B, S, H, D) memory: the model's merge of the heads is free."""
    q, k, v = random_qkv(2, 2, 20, 16)
    out = stickbreaking_attention(q, k, v, padding_mask(2, 20, "tail"))
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_custom_op_registration(causal):
    """Schema, fake (meta) implementation, autograd registration and AOT tracing all agree."""
    torch.manual_seed(0)
    q, k, v = (t.contiguous().requires_grad_() for t in random_qkv(2, 1, 20, 16))
    mask = padding_mask(2, 20, "tail")
    torch.library.opcheck(torch.ops.kernels.stickbreaking_forward.default, (q, k, v, mask, causal))


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    q, k, v = random_qkv(2, 2, 20, 16)
    mask = padding_mask(2, 20, "tail")
    grad_out = torch.randn_like(q)
    args = (q, k, v, mask, False, grad_out, torch.float32)
    compiled = torch.compile(stickbreaking_attention, backend="aot_eager", fullgraph=True)
    for name, got, expected in zip(
        RESULT_NAMES,
        forward_backward(compiled, *args),
        forward_backward(stickbreaking_attention, *args),
        strict=True,
    ):
        assert torch.equal(got, expected), name


def test_rejects_bad_inputs():
    q = torch.randn(1, 1, 8, 24, device=DEVICE)
    mask = torch.ones(1, 8, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim"):
        stickbreaking_attention(q, q, q, mask)
    q = torch.randn(1, 1, 8, 32, device=DEVICE)
    with pytest.raises(ValueError, match="key_padding_mask"):
        stickbreaking_attention(q, q, q, mask.int())


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA GPU, no interpreter")
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("shape", [(4, 12, 512, 64), (2, 8, 512, 128)])
def test_bfloat16_on_gpu(shape, causal):
    torch.manual_seed(0)
    batch, heads, seq_len, head_dim = shape
    q, k, v = random_qkv(batch, heads, seq_len, head_dim)
    mask = padding_mask(batch, seq_len, "tail")
    assert_matches_oracle(q, k, v, mask, causal, torch.bfloat16, torch.randn_like(q))


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA GPU, no interpreter")
def test_deterministic_backward_on_gpu():
    """At a size where many query blocks add to each key block, two deterministic runs agree bit for bit."""
    torch.manual_seed(0)
    q, k, v = random_qkv(4, 12, 512, 64)
    mask = padding_mask(4, 512, "scattered")
    grad_out = torch.randn_like(q)
    with deterministic_algorithms():
        runs = [forward_backward(stickbreaking_attention, q, k, v, mask, False, grad_out, torch.bfloat16) for _ in "12"]
    for name, one, other in zip(RESULT_NAMES, *runs, strict=True):
        assert torch.equal(one, other), f"{name} differs between two deterministic runs"
