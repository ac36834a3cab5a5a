"""Flash-style softmax attention in Triton, forward and backward, with optional fused rotary.

softmax(scale q k^T) v over the allowed keys (key padding, optionally causal; scale 1/sqrt(D) unless the
caller gives one, e.g. muP's 1/D), computed with
an online softmax so the (S, S) score matrix never reaches memory. The forward saves the
log-sum-exp of every row; the backward recomputes the probabilities from it (one kernel, launched
twice: programs that own a block of keys for dk/dv, then programs that own a block of queries for dq).

With `rotary`, q and k are rotated as kernels.reference.rotary_embedding does (the two halves of
D, base 10000) while they are loaded, and dq, dk are rotated back before they are stored; the
rotated q and k are never written to memory.

q, k, v are read through their strides and outputs are written sequence-major, autotuning is keyed
on the length rounded up to a block multiple, and deterministic runs use fixed configs: see
kernels/common.py. No kernel uses atomics, so a fixed config gives the same bits run after run.

Layout: Triton helpers and kernels -> launchers -> torch custom ops (forward, backward, fake,
autograd) -> `flash_attention`.
"""

import functools

import torch
import triton
import triton.language as tl

from kernels import common, reference
from kernels.common import batch_and_head, key_is_real, load_rows

# (owned block, looped block, num_warps, num_stages), around the Triton fused-attention
# tutorial's choices for Hopper. Configs that do not fit in shared memory are skipped by autotune.
# In the interpreter, owned block 32 and loop block 16: odd lengths leave ragged tails in both loops.
INTERPRETER_BLOCKS = (32, 16)
FORWARD_CONFIGS = common.autotune_configs(
    ("BLOCK_Q", "BLOCK_K"),
    [
        (64, 64, 4, 3),
        (64, 64, 4, 4),
        (64, 128, 4, 3),
        (128, 32, 4, 4),
        (128, 64, 4, 3),
        (128, 64, 8, 3),
        (128, 64, 8, 4),
        (128, 128, 8, 3),
    ],
    INTERPRETER_BLOCKS,
)
GRAD_TUNED = [(64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 32, 4, 5), (128, 64, 8, 3)]
KEY_GRAD_CONFIGS = common.autotune_configs(("BLOCK_K", "BLOCK_Q"), GRAD_TUNED, INTERPRETER_BLOCKS)
QUERY_GRAD_CONFIGS = common.autotune_configs(("BLOCK_Q", "BLOCK_K"), GRAD_TUNED, INTERPRETER_BLOCKS)
AUTOTUNE_KEY = ["TUNING_LENGTH", "HEAD_DIM", "CAUSAL", "ROTARY"]
PREPROCESS_BLOCK = 32 if common.INTERPRETED else 64


# ---------------------------------------------------------------------------------------------
# Triton helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_cos_sin(COS, SIN, rows, dims, SEQ_LEN, HEAD_DIM: tl.constexpr):
    """cos and sin of the rotary angle for each (row, dim) of a tile; the table is (S, D/2)."""
    half: tl.constexpr = HEAD_DIM // 2
    index = rows[:, None] * half + (dims % half)[None, :]
    in_range = rows[:, None] < SEQ_LEN
    cos = tl.load(COS + index, mask=in_range, other=1.0)
    sin = tl.load(SIN + index, mask=in_range, other=0.0)
    return cos, sin


@triton.jit
def _load_rotated_rows(X, rows, dims, row_stride, SEQ_LEN, COS, SIN, HEAD_DIM: tl.constexpr, ROTARY: tl.constexpr):
    """A (rows, D) tile of q or k, zeros past the sequence end; rotated when ROTARY."""
    x = load_rows(X, rows, dims, row_stride, SEQ_LEN)
    if ROTARY:
        # rotate_half(x) reads the other half of D: load the tile again with its halves swapped
        # (same cache lines) instead of shuffling registers inside the hot loop.
        swapped_dims = (dims + HEAD_DIM // 2) % HEAD_DIM
        x_swapped = load_rows(X, rows, swapped_dims, row_stride, SEQ_LEN)
        cos, sin = _load_cos_sin(COS, SIN, rows, dims, SEQ_LEN, HEAD_DIM)
        sign = tl.where(dims < HEAD_DIM // 2, -1.0, 1.0)
        rotated = x.to(tl.float32) * cos + sign[None, :] * x_swapped.to(tl.float32) * sin
        x = rotated.to(x.dtype)
    return x


@triton.jit
def _rotate_gradient_back(grad, rows, dims, SEQ_LEN, COS, SIN, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Gradient w.r.t. the unrotated rows: the transpose (inverse) rotation of `grad`."""
    half: tl.constexpr = HEAD_DIM // 2
    halves = tl.permute(tl.reshape(grad, (BLOCK, 2, half)), (0, 2, 1))  # (BLOCK, D/2, 2)
    first, second = tl.split(halves)
    swapped = tl.reshape(tl.permute(tl.join(second, first), (0, 2, 1)), (BLOCK, HEAD_DIM))
    cos, sin = _load_cos_sin(COS, SIN, rows, dims, SEQ_LEN, HEAD_DIM)
    sign = tl.where(dims < half, 1.0, -1.0)
    return grad * cos + sign[None, :] * swapped * sin


@triton.jit
def _allowed(queries, keys, real_keys, SEQ_LEN, CAUSAL: tl.constexpr):
    """May each query see each key. Arguments come pre-shaped, (Q, 1) and (1, K) or transposed,
    so one helper serves the (queries, keys) and (keys, queries) tiles."""
    allowed = real_keys & (queries < SEQ_LEN)
    if CAUSAL:
        allowed = allowed & (keys <= queries)
    return allowed


@triton.jit
def _key_end(row_key_end, CAUSAL: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Where this query block's loop over keys stops: keys past the last real key of the batch row
    (row_key_end) and, if causal, past this query block are never allowed."""
    key_end = row_key_end
    if CAUSAL:
        key_end = tl.minimum(key_end, (tl.program_id(0) + 1) * BLOCK_Q)
    return key_end


@triton.jit
def _key_tile(q, queries, key_start, K, V, KEY_MASK, COS, SIN, stride_seq, qk_scale, SEQ_LEN,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, ROTARY: tl.constexpr, DOT_PRECISION: tl.constexpr,
              BLOCK_K: tl.constexpr):  # fmt: skip
    """k, v of the keys from key_start, and the (queries, keys) tile of base-2 scores with which are allowed."""
    keys = key_start + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, HEAD_DIM)
    k = _load_rotated_rows(K, keys, dims, stride_seq, SEQ_LEN, COS, SIN, HEAD_DIM, ROTARY)
    v = load_rows(V, keys, dims, stride_seq, SEQ_LEN)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    real_keys = key_is_real(KEY_MASK, keys, SEQ_LEN)
    allowed = _allowed(queries[:, None], keys[None, :], real_keys[None, :], SEQ_LEN, CAUSAL)
    return k, v, scores, allowed


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.autotune(configs=FORWARD_CONFIGS, key=AUTOTUNE_KEY)
@triton.jit
def _forward_kernel(
    Q, K, V, KEY_MASK, KEY_END, COS, SIN, OUT, LSE, qk_scale, SEQ_LEN, NUM_HEADS,
    TUNING_LENGTH,  # only a key of the autotuner
    stride_batch, stride_head, stride_seq, out_stride_batch, out_stride_head, out_stride_seq,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, ROTARY: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    batch, head, batch_head = batch_and_head(NUM_HEADS)
    head_offset = batch * stride_batch + head * stride_head
    Q, K, V = Q + head_offset, K + head_offset, V + head_offset
    OUT += batch * out_stride_batch + head * out_stride_head
    KEY_MASK += batch * SEQ_LEN
    queries = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)

    q = _load_rotated_rows(Q, queries, dims, stride_seq, SEQ_LEN, COS, SIN, HEAD_DIM, ROTARY)
    row_max = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)

    for key_start in range(0, _key_end(tl.load(KEY_END + batch), CAUSAL=CAUSAL, BLOCK_Q=BLOCK_Q), BLOCK_K):
        _, v, scores, allowed = _key_tile(q, queries, key_start, K, V, KEY_MASK, COS, SIN, stride_seq, qk_scale,
                                          SEQ_LEN, HEAD_DIM=HEAD_DIM, CAUSAL=CAUSAL, ROTARY=ROTARY,
                                          DOT_PRECISION=DOT_PRECISION, BLOCK_K=BLOCK_K)  # fmt: skip
        scores = tl.where(allowed, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        # A row with nothing allowed yet has max -inf; shifting by 0 keeps exp2 at 0, not NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        correction = tl.exp2(row_max - shift)
        probabilities = tl.exp2(scores - shift[:, None])
        row_sum = row_sum * correction + tl.sum(probabilities, 1)
        acc = acc * correction[:, None] + tl.dot(probabilities.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max

    # A row with no allowed key has sum 0 and acc 0: it comes out as zeros, its lse as 0.
    has_key = row_sum > 0.0
    safe_sum = tl.where(has_key, row_sum, 1.0)
    out = acc / safe_sum[:, None]
    lse = tl.where(has_key, row_max + tl.log2(safe_sum), 0.0)
    in_range = queries < SEQ_LEN
    tl.store(
        OUT + queries[:, None] * out_stride_seq + dims[None, :],
        out.to(OUT.dtype.element_ty),
        mask=in_range[:, None],
    )
    tl.store(LSE + batch_head * SEQ_LEN + queries, lse, mask=in_range)


@triton.jit
def _delta_kernel(
    OUT, GRAD_OUT, DELTA, SEQ_LEN, NUM_HEADS, out_stride_batch, out_stride_head, out_stride_seq,
    grad_out_stride_batch, grad_out_stride_head, grad_out_stride_seq, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(out * grad_out), the softmax-backward term shared by dq and dk."""
    batch, head, batch_head = batch_and_head(NUM_HEADS)
    OUT += batch * out_stride_batch + head * out_stride_head
    GRAD_OUT += batch * grad_out_stride_batch + head * grad_out_stride_head
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    dims = tl.arange(0, HEAD_DIM)
    in_range = rows < SEQ_LEN
    out = tl.load(OUT + rows[:, None] * out_stride_seq + dims[None, :], mask=in_range[:, None], other=0.0)
    grad_out_offsets = rows[:, None] * grad_out_stride_seq + dims[None, :]
    grad_out = tl.load(GRAD_OUT + grad_out_offsets, mask=in_range[:, None], other=0.0)
    out, grad_out = out.to(tl.float32), grad_out.to(tl.float32)
    tl.store(DELTA + batch_head * SEQ_LEN + rows, tl.sum(out * grad_out, 1), mask=in_range)


@triton.jit
def _key_value_grad(Q, K, V, GRAD_OUT, LSE, DELTA, KEY_MASK, row_key_end, COS, SIN, GRAD_K, GRAD_V, scale, qk_scale,
                    SEQ_LEN, stride_seq, grad_out_stride_seq, grad_stride_seq, HEAD_DIM: tl.constexpr,
                    CAUSAL: tl.constexpr, ROTARY: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_K: tl.constexpr):  # fmt: skip
    """dk, dv for this program's block of keys, looping over the queries that may see them; pointers
    are at this program's head."""
    key_start = tl.program_id(0) * BLOCK_K
    keys = key_start + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, HEAD_DIM)

    k = _load_rotated_rows(K, keys, dims, stride_seq, SEQ_LEN, COS, SIN, HEAD_DIM, ROTARY)
    v = load_rows(V, keys, dims, stride_seq, SEQ_LEN)
    real_keys = key_is_real(KEY_MASK, keys, SEQ_LEN)
    grad_k = tl.zeros((BLOCK_K, HEAD_DIM), tl.float32)
    grad_v = tl.zeros((BLOCK_K, HEAD_DIM), tl.float32)

    # Earlier queries cannot see these keys when causal; a block of padding only gets zeros.
    query_start = 0
    if CAUSAL:
        query_start = (key_start // BLOCK_Q) * BLOCK_Q
    query_end = tl.where(key_start < row_key_end, SEQ_LEN, query_start)
    for block_start in range(query_start, query_end, BLOCK_Q):
        queries = block_start + tl.arange(0, BLOCK_Q)
        q = _load_rotated_rows(Q, queries, dims, stride_seq, SEQ_LEN, COS, SIN, HEAD_DIM, ROTARY)
        grad_out = load_rows(GRAD_OUT, queries, dims, grad_out_stride_seq, SEQ_LEN)
        lse = tl.load(LSE + queries, mask=queries < SEQ_LEN, other=0.0)
        delta = tl.load(DELTA + queries, mask=queries < SEQ_LEN, other=0.0)
        # Transposed tiles (keys, queries), so the sums over queries are plain dots.
        scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        allowed_t = _allowed(queries[None, :], keys[:, None], real_keys[:, None], SEQ_LEN, CAUSAL)
        probabilities_t = tl.where(allowed_t, tl.exp2(scores_t - lse[None, :]), 0.0)
        grad_v += tl.dot(probabilities_t.to(grad_out.dtype), grad_out, input_precision=DOT_PRECISION)
        grad_p_t = tl.dot(v, tl.trans(grad_out), input_precision=DOT_PRECISION)
        grad_scores_t = probabilities_t * (grad_p_t - delta[None, :])
        grad_k += tl.dot(grad_scores_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    grad_k *= scale
    if ROTARY:
        grad_k = _rotate_gradient_back(grad_k, keys, dims, SEQ_LEN, COS, SIN, BLOCK_K, HEAD_DIM)
    offsets = keys[:, None] * grad_stride_seq + dims[None, :]
    in_range = keys[:, None] < SEQ_LEN
    tl.store(GRAD_K + offsets, grad_k.to(GRAD_K.dtype.element_ty), mask=in_range)
    tl.store(GRAD_V + offsets, grad_v.to(GRAD_V.dtype.element_ty), mask=in_range)


@triton.jit
def _query_grad(Q, K, V, GRAD_OUT, LSE, DELTA, KEY_MASK, row_key_end, COS, SIN, GRAD_Q, scale, qk_scale, SEQ_LEN,
                stride_seq, grad_out_stride_seq, grad_stride_seq, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                ROTARY: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr,
                BLOCK_K: tl.constexpr):  # fmt: skip
    """dq for this program's block of queries, looping over the keys they may see; pointers are at
    this program's head."""
    queries = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, HEAD_DIM)

    q = _load_rotated_rows(Q, queries, dims, stride_seq, SEQ_LEN, COS, SIN, HEAD_DIM, ROTARY)
    grad_out = load_rows(GRAD_OUT, queries, dims, grad_out_stride_seq, SEQ_LEN)
    lse = tl.load(LSE + queries, mask=queries < SEQ_LEN, other=0.0)
    delta = tl.load(DELTA + queries, mask=queries < SEQ_LEN, other=0.0)
    grad_q = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)

    for key_start in range(0, _key_end(row_key_end, CAUSAL=CAUSAL, BLOCK_Q=BLOCK_Q), BLOCK_K):
        k, v, scores, allowed = _key_tile(q, queries, key_start, K, V, KEY_MASK, COS, SIN, stride_seq, qk_scale,
                                          SEQ_LEN, HEAD_DIM=HEAD_DIM, CAUSAL=CAUSAL, ROTARY=ROTARY,
                                          DOT_PRECISION=DOT_PRECISION, BLOCK_K=BLOCK_K)  # fmt: skip
        probabilities = tl.where(allowed, tl.exp2(scores - lse[:, None]), 0.0)
        grad_p = tl.dot(grad_out, tl.trans(v), input_precision=DOT_PRECISION)
        grad_scores = probabilities * (grad_p - delta[:, None])
        grad_q += tl.dot(grad_scores.to(k.dtype), k, input_precision=DOT_PRECISION)

    grad_q *= scale
    if ROTARY:
        grad_q = _rotate_gradient_back(grad_q, queries, dims, SEQ_LEN, COS, SIN, BLOCK_Q, HEAD_DIM)
    tl.store(
        GRAD_Q + queries[:, None] * grad_stride_seq + dims[None, :],
        grad_q.to(GRAD_Q.dtype.element_ty),
        mask=queries[:, None] < SEQ_LEN,
    )


@triton.jit
def _grad_kernel(
    Q, K, V, GRAD_OUT, LSE, DELTA, KEY_MASK, KEY_END, COS, SIN, GRAD_Q, GRAD_K, GRAD_V, scale, qk_scale, SEQ_LEN,
    NUM_HEADS, TUNING_LENGTH,  # only a key of the autotuner
    stride_batch, stride_head, stride_seq, grad_out_stride_batch, grad_out_stride_head, grad_out_stride_seq,
    grad_stride_batch, grad_stride_head, grad_stride_seq,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, ROTARY: tl.constexpr, DOT_PRECISION: tl.constexpr,
    OWNS_KEYS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """dk, dv for one block of keys (OWNS_KEYS), or dq for one block of queries."""
    batch, head, batch_head = batch_and_head(NUM_HEADS)
    head_offset = batch * stride_batch + head * stride_head
    Q, K, V = Q + head_offset, K + head_offset, V + head_offset
    GRAD_OUT += batch * grad_out_stride_batch + head * grad_out_stride_head
    grad_offset = batch * grad_stride_batch + head * grad_stride_head
    LSE += batch_head * SEQ_LEN
    DELTA += batch_head * SEQ_LEN
    KEY_MASK += batch * SEQ_LEN
    row_key_end = tl.load(KEY_END + batch)
    if OWNS_KEYS:
        _key_value_grad(Q, K, V, GRAD_OUT, LSE, DELTA, KEY_MASK, row_key_end, COS, SIN, GRAD_K + grad_offset,
                        GRAD_V + grad_offset, scale, qk_scale, SEQ_LEN, stride_seq, grad_out_stride_seq,
                        grad_stride_seq, HEAD_DIM, CAUSAL, ROTARY, DOT_PRECISION, BLOCK_Q, BLOCK_K)  # fmt: skip
    else:
        _query_grad(Q, K, V, GRAD_OUT, LSE, DELTA, KEY_MASK, row_key_end, COS, SIN, GRAD_Q + grad_offset, scale,
                    qk_scale, SEQ_LEN, stride_seq, grad_out_stride_seq, grad_stride_seq, HEAD_DIM, CAUSAL, ROTARY,
                    DOT_PRECISION, BLOCK_Q, BLOCK_K)  # fmt: skip


# One kernel, tuned twice: a program owns a block of keys (dk, dv) or a block of queries (dq), and the
# owned block is the first of each config.
_key_value_grad_kernel = triton.autotune(configs=KEY_GRAD_CONFIGS, key=AUTOTUNE_KEY)(_grad_kernel)
_query_grad_kernel = triton.autotune(configs=QUERY_GRAD_CONFIGS, key=AUTOTUNE_KEY)(_grad_kernel)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _rotary_tables(seq_len: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (S, D/2) float32: reference.rotary_tables, rounded once and cached."""
    cos, sin = reference.rotary_tables(seq_len, head_dim, device)  # (S, D/2) float64
    return cos.float().contiguous(), sin.float().contiguous()


def _kernel_arguments(
    q: torch.Tensor, key_padding_mask: torch.Tensor, causal: bool, rotary: bool, strides, scale: float
) -> dict:
    """The arguments common.kernel_arguments gives every kernel, and the rotary tables."""
    arguments = common.kernel_arguments(q, key_padding_mask, causal, strides, scale)
    if rotary:
        cos, sin = _rotary_tables(q.shape[2], q.shape[3], q.device)
    else:
        cos = sin = arguments["KEY_END"]  # never read: ROTARY is a compile-time False
    return {**arguments, "COS": cos, "SIN": sin, "ROTARY": rotary}


def _forward(q, k, v, key_padding_mask, causal, rotary, scale):
    """Launch the forward kernel: out (B, H, S, D) sequence-major, lse (B, H, S) base 2."""
    (q, k, v), strides = common.shared_layout(q, k, v)
    (out,) = common.sequence_major_empty_like(q)  # (B, H, S, D)
    lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)  # (B, H, S)
    out_stride_batch, out_stride_head, out_stride_seq, _ = out.stride()
    common.launch(
        _forward_kernel, common.grid("BLOCK_Q", q), Q=q, K=k, V=v, OUT=out, LSE=lse,
        out_stride_batch=out_stride_batch, out_stride_head=out_stride_head, out_stride_seq=out_stride_seq,
        **_kernel_arguments(q, key_padding_mask, causal, rotary, strides, scale),
    )  # fmt: skip
    return out, lse


def _backward(grad_out, q, k, v, key_padding_mask, out, lse, causal, rotary, scale):
    """Launch delta, dk/dv and dq kernels; the gradients come out sequence-major."""
    batch, num_heads, seq_len, head_dim = q.shape
    (q, k, v), strides = common.shared_layout(q, k, v)
    (grad_out,), grad_out_strides = common.shared_layout(grad_out)
    delta = torch.empty_like(lse)  # (B, H, S)
    _delta_kernel[(triton.cdiv(seq_len, PREPROCESS_BLOCK), batch * num_heads)](
        out, grad_out, delta, seq_len, num_heads, *out.stride()[:3], *grad_out_strides,
        HEAD_DIM=head_dim, BLOCK=PREPROCESS_BLOCK,
    )  # fmt: skip
    grad_q, grad_k, grad_v = common.sequence_major_empty_like(q, k, v)  # each (B, H, S, D)
    grad_stride_batch, grad_stride_head, grad_stride_seq, _ = grad_q.stride()
    shared = dict(
        Q=q, K=k, V=v, GRAD_OUT=grad_out, LSE=lse, DELTA=delta, GRAD_Q=grad_q, GRAD_K=grad_k, GRAD_V=grad_v,
        scale=scale, grad_out_stride_batch=grad_out_strides[0],
        grad_out_stride_head=grad_out_strides[1], grad_out_stride_seq=grad_out_strides[2],
        grad_stride_batch=grad_stride_batch, grad_stride_head=grad_stride_head, grad_stride_seq=grad_stride_seq,
        **_kernel_arguments(q, key_padding_mask, causal, rotary, strides, scale),
    )  # fmt: skip
    common.launch(_key_value_grad_kernel, common.grid("BLOCK_K", k), OWNS_KEYS=True, **shared)
    common.launch(_query_grad_kernel, common.grid("BLOCK_Q", q), OWNS_KEYS=False, **shared)
    return grad_q, grad_k, grad_v


# ---------------------------------------------------------------------------------------------
# Torch custom ops: opaque to torch.compile, differentiable through register_autograd
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("kernels::flash_attention_forward", mutates_args=())
def _flash_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    causal: bool,
    rotary: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out (B, H, S, D) and the rows' log-sum-exp (B, H, S), base 2."""
    return _forward(q, k, v, key_padding_mask, causal, rotary, scale)


@_flash_attention_forward.register_fake
def _(q, k, v, key_padding_mask, causal, rotary, scale):
    (out,) = common.sequence_major_empty_like(q)
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("kernels::flash_attention_backward", mutates_args=())
def _flash_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    rotary: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_out, q, k, v, key_padding_mask, out, lse, causal, rotary, scale)


@_flash_attention_backward.register_fake
def _(grad_out, q, k, v, key_padding_mask, out, lse, causal, rotary, scale):
    return common.sequence_major_empty_like(q, k, v)


# The backward needs both outputs: out (for delta) and lse.
common.register_attention_autograd(_flash_attention_forward, _flash_attention_backward, saved_outputs=(0, 1))


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool = False,
    rotary: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(scale q k^T) v on (B, H, S, D), scale 1/sqrt(D) when None; key_padding_mask (B, S) True = real key.

    A query with no allowed key gets zeros. With `rotary`, q and k are first rotated as
    kernels.reference.rotary_embedding does. Differentiable in q, k, v.
    """
    key_padding_mask = common.check_attention_inputs("flash_attention", q, k, v, key_padding_mask)
    scale = reference.logit_scale(q.shape[-1], scale)
    out, _ = _flash_attention_forward(q, k, v, key_padding_mask, causal, rotary, scale)
    return out
