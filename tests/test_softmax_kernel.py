"""Triton flash attention (kernels/softmax.py) against a float64 oracle, by the tolerance rule of
tests/oracle.py. On the CPU the kernels run in Triton's interpreter (tests/conftest.py); tests in
16-bit dtypes make it round as a GPU does (tests/oracle.py).
"""

import pytest
import torch

from kernels import reference, softmax, stickbreaking
from kernels.common import TUNING_LENGTH_MULTIPLE, tuning_length
from kernels.softmax import _flash_attention_forward, flash_attention
from tests import oracle
from tests.oracle import DEVICE, padding_mask

pytestmark = oracle.needs_triton

ORACLES = {False: reference.softmax_attention, True: reference.rope_attention}
# In float32 the flash backward's delta = rowsum(out * grad_out), summed in another order than
# dp = grad_out . v, leaves a few ulps of dp in dp - delta where PyTorch's softmax backward
# subtracts sum(p * dp) from the same dp: about 8 ulps at 1.0 cover it.
ABSOLUTE_SLACK = {torch.float32: 1e-6, torch.bfloat16: 0.0, torch.float16: 0.0}


def check_against_oracle(shape, causal, rotary, dtype, seed=0, max_logit=None, scale=None) -> list[torch.Tensor]:
    """Compare flash_attention with the oracle in float64 and in dtype; return our [out, dq, dk, dv].
    With max_logit, q is scaled so that the largest |logit| is max_logit; `scale` is the logits' factor
    (None: 1/sqrt(D))."""
    generator = torch.Generator().manual_seed(seed)
    if max_logit is None:
        q, k, v = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in "qkv")
    else:
        q, k, v = oracle.large_logit_qkv(shape, max_logit, generator)
    grad_out = torch.randn(shape, generator=generator, dtype=torch.float64).to(DEVICE)
    mask = padding_mask(shape[0], shape[2])
    return oracle.assert_matches_oracle(
        lambda *qkv: flash_attention(*qkv, mask, causal=causal, rotary=rotary, scale=scale),
        lambda *qkv: ORACLES[rotary](*qkv, mask, causal, scale),
        [x.to(DEVICE) for x in (q, k, v)],
        grad_out,
        dtype,
        slack=ABSOLUTE_SLACK[dtype],
    )


# Neither length is a multiple of a block (interpreter blocks are 16 and 32): ragged tails.
@pytest.mark.parametrize(("head_dim", "seq_len"), [(32, 100), (64, 37)])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("rotary", [False, True], ids=["standard", "rope"])
def test_matches_oracle_in_float32(rotary, causal, head_dim, seq_len):
    out, *grads = check_against_oracle((3, 2, seq_len, head_dim), causal, rotary, torch.float32)
    # Batch row 2 is all padding: its outputs are exactly zero, and so are all its gradients.
    assert (out[2] == 0).all()
    assert all((grad[2] == 0).all() for grad in grads)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("rotary", [False, True], ids=["standard", "rope"])
def test_matches_oracle_at_the_mup_scale(rotary, causal):
    """Logits q.k / D (muP, model/parametrization.py) instead of / sqrt(D), forward and backward, at an odd length;
    the last batch row is all padding, which still comes out as zeros."""
    head_dim = 32
    out, *grads = check_against_oracle((3, 2, 37, head_dim), causal, rotary, torch.float32, seed=4, scale=1 / head_dim)
    assert (out[2] == 0).all() and all((grad[2] == 0).all() for grad in grads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_16bit_matches_oracle_at_an_odd_length(causal, dtype):
    """fp16 and bf16 at a length that leaves ragged tails, rope included (the interpreter rounding as a GPU)."""
    with oracle.gpu_arithmetic():
        check_against_oracle((3, 2, 37, 32), causal, True, dtype, seed=3)


@pytest.mark.parametrize("head_dim", [16, 128])
@pytest.mark.parametrize("rotary", [False, True], ids=["standard", "rope"])
def test_smallest_and_largest_head_dim(rotary, head_dim):
    check_against_oracle((1, 1, 45, head_dim), causal=True, rotary=rotary, dtype=torch.float32)


@pytest.mark.parametrize("dtype", oracle.DTYPES.values(), ids=oracle.DTYPES.keys())
@pytest.mark.parametrize("rotary", [False, True], ids=["standard", "rope"])
def test_large_logits_match_oracle(rotary, dtype):
    """Logits up to +-30, forward and backward, in every dtype (the interpreter rounding as a GPU)."""
    with oracle.gpu_arithmetic():
        check_against_oracle((3, 2, 40, 32), False, rotary, dtype, seed=1, max_logit=oracle.MAX_LOGIT)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_16bit_output_has_only_rounding_error_at_large_logits(causal, dtype):
    generator = torch.Generator().manual_seed(2)
    q, k, v = (t.to(DEVICE) for t in oracle.large_logit_qkv((3, 2, 40, 32), oracle.MAX_LOGIT, generator))
    mask = padding_mask(3, 40)
    with oracle.gpu_arithmetic():
        out = flash_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, causal=causal)
    oracle.assert_only_rounding_error(out, lambda *qkv: reference.softmax_attention(*qkv, mask, causal), q, k, v)


def test_rows_without_any_allowed_key_are_zero_with_finite_gradients():
    # Leading padding with causal masking: the first queries of row 1 see no key at all.
    mask = torch.ones(3, 20, dtype=torch.bool, device=DEVICE)
    mask[1, :5] = False
    mask[2] = False
    q, k, v = (torch.randn(3, 2, 20, 32, device=DEVICE, requires_grad=True) for _ in "qkv")
    out = flash_attention(q, k, v, mask, causal=True, rotary=True)
    out.backward(torch.randn_like(out))

    assert (out[1, :, :5] == 0).all() and (out[2] == 0).all()
    assert torch.isfinite(out).all()
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        assert torch.isfinite(tensor.grad).all(), f"d{name} has non-finite values"
    assert (q.grad[1, :, :5] == 0).all() and (q.grad[2] == 0).all()
    assert (k.grad[1, :, :5] == 0).all() and (v.grad[1, :, :5] == 0).all()


@pytest.mark.parametrize("layout", ["one projection", "mixed strides"])
def test_strided_inputs_give_the_contiguous_result(layout):
    """The model's q, k, v are views of one (B, S, 3, H, D) projection, read through their strides;
    tensors of different strides (here k sequence-major, v with head_dim strided) are copied first."""
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 21, 3, 2, 32, generator=generator).to(DEVICE)
    strided = list(qkv.permute(2, 0, 3, 1, 4).unbind(0))  # each (B, H, S, D)
    if layout == "mixed strides":
        strided[0] = strided[0].contiguous()
        strided[2] = strided[2].transpose(-1, -2).contiguous().transpose(-1, -2)
    contiguous = [x.detach().contiguous().requires_grad_() for x in strided]
    strided = [x.detach().requires_grad_() for x in strided]
    mask = padding_mask(2, 21)
    grad_out = torch.randn(2, 2, 21, 32, generator=generator).to(DEVICE)
    results = []
    for inputs in (strided, contiguous):
        out = flash_attention(*inputs, mask, rotary=True)
        results.append([out, *torch.autograd.grad(out, inputs, grad_out)])
    for name, got, expected in zip(oracle.RESULT_NAMES, *results, strict=True):
        torch.testing.assert_close(got, expected, msg=name)
    assert results[0][0].transpose(1, 2).is_contiguous(), "out is not sequence-major"


def test_deterministic_mode_repeats_bit_for_bit():
    """Under torch.use_deterministic_algorithms(True) every kernel runs its first config."""
    with oracle.deterministic_algorithms():
        first, second = (check_against_oracle((3, 1, 40, 32), True, True, torch.float32) for _ in "12")
    for name, one, other in zip(oracle.RESULT_NAMES, first, second, strict=True):
        assert torch.equal(one, other), f"{name} differs between two deterministic runs"


def test_autotuning_is_keyed_on_the_rounded_length():
    """Probe batches of ~40 widths share one tuning sweep per multiple of TUNING_LENGTH_MULTIPLE."""
    assert [tuning_length(n) for n in (1, 37, TUNING_LENGTH_MULTIPLE, TUNING_LENGTH_MULTIPLE + 1)] == [
        TUNING_LENGTH_MULTIPLE,
        TUNING_LENGTH_MULTIPLE,
        TUNING_LENGTH_MULTIPLE,
        2 * TUNING_LENGTH_MULTIPLE,
    ]
    autotuned = [softmax._forward_kernel, softmax._key_value_grad_kernel, softmax._query_grad_kernel]
    autotuned += [stickbreaking._forward_kernel, stickbreaking._backward_kernel]
    for kernel in autotuned:
        assert "TUNING_LENGTH" in kernel.keys and "SEQ_LEN" not in kernel.keys, kernel.fn.__name__


def test_custom_op_registration():
    """Schema, fake implementation, autograd and torch.compile (AOT dispatch) agree with the op."""
    q, k, v = (torch.randn(1, 1, 16, 16, device=DEVICE, requires_grad=True) for _ in "qkv")
    mask = padding_mask(1, 16)
    torch.library.opcheck(_flash_attention_forward, (q, k, v, mask, True, True, 1 / 16))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"head_dim": 48}, "head_dim"),
        ({"mask_len": 7}, "key_padding_mask"),
        ({"v_dtype": torch.float64}, "dtype"),
    ],
)
def test_rejects_bad_inputs_with_a_clear_message(change, message):
    head_dim = change.get("head_dim", 32)
    q, k = (torch.randn(1, 1, 8, head_dim, device=DEVICE) for _ in "qk")
    v = torch.randn(1, 1, 8, head_dim, device=DEVICE, dtype=change.get("v_dtype", torch.float32))
    mask = torch.ones(1, change.get("mask_len", 8), dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v, mask)


@pytest.mark.gpu
@oracle.gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [(4, 12, 512, 64), (2, 4, 333, 128)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("rotary", [False, True], ids=["standard", "rope"])
def test_matches_oracle_in_half_precision_on_gpu(rotary, causal, shape, dtype):
    check_against_oracle(shape, causal, rotary, dtype)
