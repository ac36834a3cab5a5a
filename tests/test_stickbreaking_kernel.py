"""Triton stick-breaking attention (exposb) against the PyTorch oracle, forward and backward, by the
tolerance rule of tests/oracle.py. On the CPU the kernels run in Triton's interpreter, made to round
16-bit and tf32 arithmetic as a GPU does where a test needs it (tests/oracle.py).
"""

import pytest
import torch

from kernels import reference
from kernels.stickbreaking import stickbreaking_attention
from tests import oracle
from tests.oracle import DEVICE, padding_mask

pytestmark = oracle.needs_triton


def random_qkv(batch: int, heads: int, seq_len: int, head_dim: int) -> list[torch.Tensor]:
    """q, k, v (B, H, S, D) as strided views of one (B, S, 3, H, D) projection, as a model makes."""
    qkv = torch.randn(batch, seq_len, 3, heads, head_dim, device=DEVICE)
    return list(qkv.permute(2, 0, 3, 1, 4).unbind(0))


def check_against_oracle(q, k, v, key_padding_mask, causal, dtype, grad_out, scale=None) -> list[torch.Tensor]:
    """Check out, dq, dk, dv of the kernel by the tolerance rule (logits q.k times `scale`; None: 1/sqrt(D));
    return them."""
    return oracle.assert_matches_oracle(
        lambda *qkv: stickbreaking_attention(*qkv, key_padding_mask, causal, scale),
        lambda *qkv: reference.stickbreaking_attention(*qkv, key_padding_mask, causal, scale),
        [q, k, v],
        grad_out,
        dtype,
    )


def run_kernel(q, k, v, key_padding_mask, causal, grad_out, dtype, attention=stickbreaking_attention):
    """out, dq, dk, dv of the kernel (or of `attention`) run in dtype."""

    def call(q, k, v):
        return attention(q, k, v, key_padding_mask, causal)

    return oracle.forward_and_gradients(call, [q, k, v], grad_out, dtype)


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
    out, grad_q, grad_k, grad_v = check_against_oracle(q, k, v, mask, causal, torch.float32, grad_out)

    # With every key padded each query keeps its whole stick(s): o_i = v_i, and only v_i learns.
    assert torch.equal(out[-1], v[-1])
    assert torch.equal(grad_v[-1], grad_out[-1])
    assert not grad_q[-1].any() and not grad_k[-1].any()


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_matches_float64_oracle_at_the_mup_scale(causal):
    """Logits q.k / D (muP, model/parametrization.py) instead of / sqrt(D), forward and backward, at an odd length.
    q and k are scaled up so that the logits still spread over a few units (beta far from 1/2)."""
    torch.manual_seed(4)
    head_dim = 32
    q, k, v = random_qkv(3, 2, 37, head_dim)
    mask = padding_mask(3, 37, "scattered")
    grad_out = torch.randn_like(q)
    out = check_against_oracle(3 * q, 3 * k, v, mask, causal, torch.float32, grad_out, scale=1 / head_dim)[0]
    assert torch.equal(out[-1], v[-1])  # every key padded: each query keeps its whole stick


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_16bit_matches_oracle_at_an_odd_length(causal, dtype):
    """16-bit inputs take the tf32 path for the in-tile sums and round weights before p @ v."""
    torch.manual_seed(0)
    q, k, v = random_qkv(3, 1, 37, 32)
    with oracle.gpu_arithmetic():
        check_against_oracle(q, k, v, padding_mask(3, 37, "tail"), causal, dtype, torch.randn_like(q))


@pytest.mark.parametrize("dtype", oracle.DTYPES.values(), ids=oracle.DTYPES.keys())
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_large_logits_match_float64_oracle(causal, dtype):
    """Logits up to +-30, forward and backward, in every dtype, by the tolerance rule."""
    generator = torch.Generator().manual_seed(1)
    q, k, v = (t.to(DEVICE) for t in oracle.large_logit_qkv((3, 2, 40, 32), oracle.MAX_LOGIT, generator))
    grad_out = torch.randn(q.shape, generator=generator, dtype=torch.float64).to(DEVICE)
    with oracle.gpu_arithmetic():
        check_against_oracle(q, k, v, padding_mask(3, 40, "tail"), causal, dtype, grad_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_16bit_output_has_only_rounding_error_at_large_logits(causal, dtype):
    """The in-tile sums run as tf32 dots for 16-bit inputs. Written as x + log2(1 - beta) + ..., the
    weight's logarithm cancelled x against -softplus(x) and carried the dots' rounding of the large
    term: in fp16 the error reached 3-5x this bound at logits of 30."""
    generator = torch.Generator().manual_seed(2)
    q, k, v = (t.to(DEVICE) for t in oracle.large_logit_qkv((2, 2, 40, 32), oracle.MAX_LOGIT, generator))
    mask = padding_mask(2, 40, "scattered")
    with oracle.gpu_arithmetic():
        out = stickbreaking_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, causal)
    oracle.assert_only_rounding_error(out, lambda *qkv: reference.stickbreaking_attention(*qkv, mask, causal), q, k, v)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_deterministic_mode_matches_oracle_and_repeats_bit_for_bit(causal):
    """Under torch.use_deterministic_algorithms(True) the backward sums per-block slots, no atomics."""
    torch.manual_seed(3)
    q, k, v = random_qkv(3, 1, 40, 32)  # two query blocks in the interpreter
    mask = padding_mask(3, 40, "scattered")
    grad_out = torch.randn_like(q)
    with oracle.deterministic_algorithms():
        first = check_against_oracle(q, k, v, mask, causal, torch.float32, grad_out)
        second = run_kernel(q, k, v, mask, causal, grad_out, torch.float32)
    for name, one, other in zip(oracle.RESULT_NAMES, first, second, strict=True):
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
    torch.library.opcheck(torch.ops.kernels.stickbreaking_forward.default, (q, k, v, mask, causal, 1 / 16))


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    q, k, v = random_qkv(2, 2, 20, 16)
    mask = padding_mask(2, 20, "tail")
    grad_out = torch.randn_like(q)
    args = (q, k, v, mask, False, grad_out, torch.float32)
    compiled = torch.compile(stickbreaking_attention, backend="aot_eager", fullgraph=True)
    results = run_kernel(*args, attention=compiled), run_kernel(*args)
    for name, got, expected in zip(oracle.RESULT_NAMES, *results, strict=True):
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
@oracle.gpu_only
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("shape", [(4, 12, 512, 64), (2, 8, 512, 128)])
def test_bfloat16_on_gpu(shape, causal):
    torch.manual_seed(0)
    batch, heads, seq_len, head_dim = shape
    q, k, v = random_qkv(batch, heads, seq_len, head_dim)
    mask = padding_mask(batch, seq_len, "tail")
    check_against_oracle(q, k, v, mask, causal, torch.bfloat16, torch.randn_like(q))


@pytest.mark.gpu
@oracle.gpu_only
def test_deterministic_backward_on_gpu():
    """At a size where many query blocks add to each key block, two deterministic runs agree bit for bit."""
    torch.manual_seed(0)
    q, k, v = random_qkv(4, 12, 512, 64)
    mask = padding_mask(4, 512, "scattered")
    grad_out = torch.randn_like(q)
    with oracle.deterministic_algorithms():
        runs = [run_kernel(q, k, v, mask, False, grad_out, torch.bfloat16) for _ in "12"]
    for name, one, other in zip(oracle.RESULT_NAMES, *runs, strict=True):
        assert torch.equal(one, other), f"{name} differs between two deterministic runs"
