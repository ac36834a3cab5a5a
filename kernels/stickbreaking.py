"""Stick-breaking attention (exposb) in Triton, forward and backward, in log space.

Definition (ARCHITECTURE.md): z_ij = scale q_i . k_j (scale 1/sqrt(D) unless the caller gives one, e.g.
muP's 1/D), beta_ij = sigmoid(z_ij), and padded keys have beta = 0. For query i a stick is broken outward
on each side, nearest key first:
    left   A_ij = beta_ij prod_{j<l<i} (1 - beta_il)  for j < i,   r_L = prod_{j<i} (1 - beta_ij)
    right  A_ij = beta_ij prod_{i<l<j} (1 - beta_il)  for j > i,   r_R = prod_{j>i} (1 - beta_ij)
    o_i = 1/2 (sum_{j != i} A_ij v_j + (r_L + r_R) v_i),   or, causal, sum_{j<i} A_ij v_j + r_L v_i.

Forward. The (S, S) weights never reach memory: a program owns a block of queries and walks the
key blocks of each stick from the diagonal outward, carrying log2 of the stick still unbroken
(the running sum of log2(1 - beta) over the keys passed). Inside a key block, the sum over the
keys strictly between a key and the query is a matmul of the log2(1 - beta) tile with a strict
0/1 triangle, and log2 A = log2 beta + that sum + the carried value, as ARCHITECTURE.md writes it. (The
form x + a sum that includes log2(1 - beta_ij) ~ -x cancels for a large logit x; with 16-bit inputs
the in-tile dot rounds its operands to tf32, and the cancelled error grew with x: 0.4% at x = 20.) The
right stick is the left stick with the index order reversed, which here is index arithmetic
(`LEFT`), never a copy. For the backward, the forward saves the carried value at every key block
(a checkpoint: (S / BLOCK_K) floats per query and head) and the leftovers r_L, r_R.

Backward, for one stick of query i (index i dropped), alpha = 1/2 (1 when causal), g = dL/do_i.
The stick adds alpha (sum_j A_j v_j + r v_i) to o_i, so dL/dA_j = alpha g.v_j and
dL/dr = alpha g.v_i. With d log A_j / dz_l = (1 - beta_l)[l = j] - beta_l [l nearer than j] and
d log r / dz_l = -beta_l:
    dL/dz_l = alpha (A_l g.v_l - beta_l F_l),   F_l = r g.v_i + sum_{j not nearer than l} A_j g.v_j.
The r g.v_i term is the gradient through the leftover r, which depends on q_i and every k_j.
F_l is a sum from the far end of the stick, so the backward walks each stick's key blocks
farthest first, starting from r g.v_i; the weights A it needs are recomputed exactly as in the
forward from the saved checkpoints. (Walking nearest first would need F_l as a total minus the
nearer terms, an absolute error that the tiny weights of far keys do not scale down.) Then
dq_i = scale sum_l dz_il k_l, dk_l = scale sum_i dz_il q_i, and
dv_j = alpha sum_i A_ij g_i + alpha (r_L + r_R) g_j (causal: r_L g_j) for the leftover on v_j
itself, added by PyTorch after the kernel. A program owns queries, so it adds its parts of dk and dv
atomically to float32 buffers; atomics add in no fixed order, so under
torch.use_deterministic_algorithms(True) each program and stick stores its parts in a buffer slot of
its own instead, and the slots are summed in a fixed order (memory: 2 S / BLOCK_Q slots of dk and dv).

Nothing becomes NaN: entries that are not allowed get log2(1 - beta) = 0 and weight 0 through
`where` (no -inf arithmetic), padded query rows are computed like any other, and a query whose
keys are all padded has r_L = r_R = 1, so o_i = v_i.

Layout: Triton helpers and kernels -> launchers -> torch custom ops (forward, backward, fake,
autograd) -> `stickbreaking_attention`.
"""

import torch
import triton
import triton.language as tl

from kernels import common, reference
from kernels.common import batch_and_head, key_is_real, load_rows


def _key_block_size(head_dim: int) -> int:
    """Keys per tile. Fixed, not tuned: the forward's checkpoints are taken once per key block.

    Sized for the backward, which holds about six (query, key) float32 tiles and a (query, D)
    accumulator: larger tiles spill registers on sm_90.
    """
    if common.INTERPRETED:
        return 16  # with query blocks of 32 the diagonal spans two key blocks
    return 32 if head_dim <= 64 else 16


# (query block, num_warps, num_stages); the query block must be a multiple of the key block. The
# first config is the one deterministic runs use. In the interpreter, query blocks of 32.
INTERPRETER_BLOCKS = (32,)
FORWARD_CONFIGS = common.autotune_configs(
    ("BLOCK_Q",), [(64, 4, 2), (64, 4, 3), (128, 4, 3), (128, 8, 2), (128, 8, 3)], INTERPRETER_BLOCKS
)
BACKWARD_CONFIGS = common.autotune_configs(
    ("BLOCK_Q",), [(64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 8, 2), (128, 8, 3)], INTERPRETER_BLOCKS
)
AUTOTUNE_KEY = ["TUNING_LENGTH", "HEAD_DIM", "CAUSAL", "BLOCK_K"]


# ---------------------------------------------------------------------------------------------
# Triton helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _stick_block_range(query_start, key_end, LEFT: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    """First key, step and count of one stick's key blocks, the block nearest the queries first.

    Blocks sit at multiples of BLOCK_K. Keys from key_end on (past the last real key) are padding,
    which breaks nothing: they are skipped.
    """
    if LEFT:
        num_blocks = tl.cdiv(tl.minimum(query_start + BLOCK_Q, key_end), BLOCK_K)
        first_key = (num_blocks - 1) * BLOCK_K
        step = -BLOCK_K
    else:
        num_blocks = tl.cdiv(tl.maximum(key_end - query_start, 0), BLOCK_K)
        first_key = query_start
        step = BLOCK_K
    return first_key, step, num_blocks


@triton.jit
def _tile_sum_matrix(TOWARD_QUERY: tl.constexpr, LEFT: tl.constexpr, BLOCK_K: tl.constexpr):
    """0/1 (BLOCK_K, BLOCK_K) matrix M: (x @ M)[:, j] sums x[:, l] over the keys l of the tile from
    key j toward the query, j excluded (TOWARD_QUERY), or from key j away from it, j included.

    Toward the query is a higher index on the left stick, a lower one on the right stick. Keys on the
    far side of the query carry zeros in x, so "toward the query from j" within the tile means
    "between j and the query".
    """
    index = tl.arange(0, BLOCK_K)
    if LEFT:
        toward_query = index[:, None] > index[None, :]
    else:
        toward_query = index[:, None] < index[None, :]
    if TOWARD_QUERY:
        summed = toward_query
    else:
        summed = ~toward_query
    return tl.where(summed, 1.0, 0.0)


@triton.jit
def _checkpoints(CHECKPOINTS, key_start, queries, SEQ_LEN, LEFT: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pointers to log2 of the stick unbroken before this key block, and which are this stick's.

    One (S / BLOCK_K, S) table serves both sticks: key blocks below a query's own block belong
    to its left stick, those above to its right stick. In the query's own block nothing has been
    passed yet (the keys walked before it are all on the other side), so the value is 0 and
    nothing is stored.
    """
    block_index = key_start // BLOCK_K
    query_block = queries // BLOCK_K
    if LEFT:
        owned = block_index < query_block
    else:
        owned = block_index > query_block
    return CHECKPOINTS + block_index * SEQ_LEN + queries, owned & (queries < SEQ_LEN)


@triton.jit
def _stick_tile(q, k, queries, keys, KEY_MASK, log_unbroken, between, qk_scale, SEQ_LEN,
                LEFT: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """Weights A (queries, keys) of one key tile, beta, and log2(1 - beta); all 0 where not allowed.

    log2 A_ij = log2 beta_ij + the sum of log2(1 - beta_il) over the keys l strictly between j and
    i; the keys of earlier tiles arrive summed in log_unbroken, those of this tile through the
    `between` triangle. Both logs come straight from the logit x (base 2): log2 beta = -softplus(-x)
    and log2(1 - beta) = -softplus(x), which share the term log2(1 + 2^-|x|).
    """
    real_keys = key_is_real(KEY_MASK, keys, SEQ_LEN)
    if LEFT:
        on_stick = keys[None, :] < queries[:, None]
    else:
        on_stick = keys[None, :] > queries[:, None]
    allowed = on_stick & real_keys[None, :] & (queries[:, None] < SEQ_LEN)
    logits = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    tail = tl.log2(1.0 + tl.exp2(-tl.abs(logits)))
    log_beta = -(tl.maximum(-logits, 0.0) + tail)
    log_kept = tl.where(allowed, -(tl.maximum(logits, 0.0) + tail), 0.0)
    log_weight = log_beta + log_unbroken[:, None] + tl.dot(log_kept, between, input_precision=DOT_PRECISION)
    # Where not allowed log_weight may be large; `where` drops exp2's inf before any arithmetic.
    weight = tl.where(allowed, tl.exp2(log_weight), 0.0)
    beta = tl.where(allowed, tl.exp2(log_beta), 0.0)
    return weight, beta, log_kept


@triton.jit
def _forward_stick(q, queries, query_start, key_end, K, V, stride_seq, KEY_MASK, CHECKPOINTS, qk_scale, SEQ_LEN,
                   LEFT: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr,
                   BLOCK_K: tl.constexpr):  # fmt: skip
    """sum_j A_ij v_j over one stick (float32) and log2 of its leftover; saves the checkpoints."""
    dims = tl.arange(0, HEAD_DIM)
    first_key, step, num_blocks = _stick_block_range(query_start, key_end, LEFT=LEFT, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K)
    between = _tile_sum_matrix(TOWARD_QUERY=True, LEFT=LEFT, BLOCK_K=BLOCK_K)
    acc = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)
    log_unbroken = tl.zeros((BLOCK_Q,), tl.float32)
    for block in range(num_blocks):
        key_start = first_key + block * step
        keys = key_start + tl.arange(0, BLOCK_K)
        checkpoints, owned = _checkpoints(CHECKPOINTS, key_start, queries, SEQ_LEN, LEFT=LEFT, BLOCK_K=BLOCK_K)
        tl.store(checkpoints, log_unbroken, mask=owned)
        k = load_rows(K, keys, dims, stride_seq, SEQ_LEN)
        v = load_rows(V, keys, dims, stride_seq, SEQ_LEN)
        weight, _, log_kept = _stick_tile(q, k, queries, keys, KEY_MASK, log_unbroken, between, qk_scale, SEQ_LEN,
                                          LEFT=LEFT, DOT_PRECISION=DOT_PRECISION)  # fmt: skip
        acc += tl.dot(weight.to(v.dtype), v, input_precision=DOT_PRECISION)
        log_unbroken += tl.sum(log_kept, 1)
    return acc, log_unbroken


@triton.jit
def _add_to(X, offsets, values, mask, DETERMINISTIC: tl.constexpr):
    """X[offsets] += values: a plain store into a slot of its own when deterministic, else atomically."""
    if DETERMINISTIC:
        tl.store(X + offsets, values, mask=mask)
    else:
        tl.atomic_add(X + offsets, values, mask=mask, sem="relaxed")


@triton.jit
def _backward_stick(q, grad_out, leftover_grad, alpha, grad_q, queries, query_start, key_end, K, V, stride_seq,
                    KEY_MASK, CHECKPOINTS, GRAD_K, GRAD_V, grad_stride_seq, scale, qk_scale, SEQ_LEN,
                    LEFT: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    DETERMINISTIC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Add one stick's dq to grad_q and its dk, dv to GRAD_K, GRAD_V; key blocks farthest first.

    dz_il = alpha (A_il g_i.v_l - beta_il F_il), F_il = r_i g_i.v_i (leftover_grad) plus
    sum_{j not nearer than l} A_ij g_i.v_j: see the module docstring.
    """
    dims = tl.arange(0, HEAD_DIM)
    first_key, step, num_blocks = _stick_block_range(query_start, key_end, LEFT=LEFT, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K)
    between = _tile_sum_matrix(TOWARD_QUERY=True, LEFT=LEFT, BLOCK_K=BLOCK_K)
    key_and_beyond = _tile_sum_matrix(TOWARD_QUERY=False, LEFT=LEFT, BLOCK_K=BLOCK_K)
    beyond = leftover_grad  # F up to the farther blocks: r g.v_i + their sum of A g.v
    for block in range(num_blocks):
        key_start = first_key + (num_blocks - 1 - block) * step
        keys = key_start + tl.arange(0, BLOCK_K)
        checkpoints, owned = _checkpoints(CHECKPOINTS, key_start, queries, SEQ_LEN, LEFT=LEFT, BLOCK_K=BLOCK_K)
        log_unbroken = tl.load(checkpoints, mask=owned, other=0.0)
        k = load_rows(K, keys, dims, stride_seq, SEQ_LEN)
        v = load_rows(V, keys, dims, stride_seq, SEQ_LEN)
        weight, beta, _ = _stick_tile(q, k, queries, keys, KEY_MASK, log_unbroken, between, qk_scale, SEQ_LEN,
                                      LEFT=LEFT, DOT_PRECISION=DOT_PRECISION)  # fmt: skip
        grad_weight = tl.dot(grad_out, tl.trans(v), input_precision=DOT_PRECISION)
        weighted_grad = weight * grad_weight  # A g.v, 0 where not allowed
        outward = beyond[:, None] + tl.dot(weighted_grad, key_and_beyond, input_precision=DOT_PRECISION)
        grad_logits = alpha * (weighted_grad - beta * outward)
        beyond += tl.sum(weighted_grad, 1)

        grad_q += tl.dot(grad_logits.to(k.dtype), k, input_precision=DOT_PRECISION)
        grad_k = tl.dot(tl.trans(grad_logits).to(q.dtype), q, input_precision=DOT_PRECISION)
        grad_v = tl.dot(tl.trans(alpha * weight).to(grad_out.dtype), grad_out, input_precision=DOT_PRECISION)
        offsets = keys[:, None] * grad_stride_seq + dims[None, :]
        in_range = keys[:, None] < SEQ_LEN
        _add_to(GRAD_K, offsets, grad_k * scale, in_range, DETERMINISTIC=DETERMINISTIC)
        _add_to(GRAD_V, offsets, grad_v, in_range, DETERMINISTIC=DETERMINISTIC)
    return grad_q


@triton.jit
def _program_queries(NUM_HEADS, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's batch row, head and (batch, head) index, its query block's index and queries.

    Blocks are taken last first: when causal the last block walks the most keys.
    """
    tl.static_assert(BLOCK_Q % BLOCK_K == 0)
    batch, head, batch_head = batch_and_head(NUM_HEADS)
    block_index = tl.num_programs(0) - 1 - tl.program_id(0)
    query_start = block_index * BLOCK_Q
    queries = query_start + tl.arange(0, BLOCK_Q)
    return batch, head, batch_head, block_index, query_start, queries


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.autotune(configs=FORWARD_CONFIGS, key=AUTOTUNE_KEY)
@triton.jit
def _forward_kernel(
    Q, K, V, KEY_MASK, KEY_END, OUT, CHECKPOINTS, LEFTOVER, qk_scale, SEQ_LEN, NUM_HEADS,
    TUNING_LENGTH,  # only a key of the autotuner
    stride_batch, stride_head, stride_seq, out_stride_batch, out_stride_head, out_stride_seq,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):  # fmt: skip
    """o for one block of queries: the left stick and, unless causal, the right one."""
    batch, head, batch_head, _, query_start, queries = _program_queries(NUM_HEADS, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K)
    head_offset = batch * stride_batch + head * stride_head
    Q, K, V = Q + head_offset, K + head_offset, V + head_offset
    OUT += batch * out_stride_batch + head * out_stride_head
    CHECKPOINTS += batch_head * tl.cdiv(SEQ_LEN, BLOCK_K) * SEQ_LEN
    KEY_MASK += batch * SEQ_LEN
    key_end = tl.load(KEY_END + batch)
    dims = tl.arange(0, HEAD_DIM)

    q = load_rows(Q, queries, dims, stride_seq, SEQ_LEN)
    acc, log_left = _forward_stick(q, queries, query_start, key_end, K, V, stride_seq, KEY_MASK, CHECKPOINTS,
                                   qk_scale, SEQ_LEN, LEFT=True, HEAD_DIM=HEAD_DIM, DOT_PRECISION=DOT_PRECISION,
                                   BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K)  # fmt: skip
    in_range = queries < SEQ_LEN
    LEFTOVER += batch_head * (1 if CAUSAL else 2) * SEQ_LEN
    leftover = tl.exp2(log_left)
    tl.store(LEFTOVER + queries, leftover, mask=in_range)
    if CAUSAL:
        alpha = 1.0
    else:
        alpha = 0.5
        right, log_right = _forward_stick(q, queries, query_start, key_end, K, V, stride_seq, KEY_MASK, CHECKPOINTS,
                                          qk_scale, SEQ_LEN, LEFT=False, HEAD_DIM=HEAD_DIM,
                                          DOT_PRECISION=DOT_PRECISION, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K)  # fmt: skip
        acc += right
        right_leftover = tl.exp2(log_right)
        tl.store(LEFTOVER + SEQ_LEN + queries, right_leftover, mask=in_range)
        leftover += right_leftover
    v_self = load_rows(V, queries, dims, stride_seq, SEQ_LEN).to(tl.float32)
    out = alpha * (acc + leftover[:, None] * v_self)
    out_offsets = queries[:, None] * out_stride_seq + dims[None, :]
    tl.store(OUT + out_offsets, out.to(OUT.dtype.element_ty), mask=in_range[:, None])


@triton.autotune(configs=BACKWARD_CONFIGS, key=AUTOTUNE_KEY, reset_to_zero=["GRAD_K", "GRAD_V"])
@triton.jit
def _backward_kernel(
    Q, K, V, GRAD_OUT, KEY_MASK, KEY_END, CHECKPOINTS, LEFTOVER, GRAD_Q, GRAD_K, GRAD_V,
    scale, qk_scale, SEQ_LEN, NUM_HEADS,
    TUNING_LENGTH,  # only a key of the autotuner
    stride_batch, stride_head, stride_seq, grad_out_stride_batch, grad_out_stride_head, grad_out_stride_seq,
    grad_stride_batch, grad_stride_head, grad_stride_seq, grad_slot_stride,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, DETERMINISTIC: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    """dq for one block of queries; its parts of dk, dv (float32) are added to GRAD_K, GRAD_V, in
    slot (query block, stick) of them when DETERMINISTIC."""
    batch, head, batch_head, block_index, query_start, queries = _program_queries(
        NUM_HEADS, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K
    )
    head_offset = batch * stride_batch + head * stride_head
    Q, K, V = Q + head_offset, K + head_offset, V + head_offset
    GRAD_OUT += batch * grad_out_stride_batch + head * grad_out_stride_head
    grad_offset = batch * grad_stride_batch + head * grad_stride_head
    GRAD_Q += grad_offset
    num_sticks = 1 if CAUSAL else 2
    if DETERMINISTIC:
        grad_offset += block_index.to(tl.int64) * num_sticks * grad_slot_stride
    GRAD_K, GRAD_V = GRAD_K + grad_offset, GRAD_V + grad_offset
    CHECKPOINTS += batch_head * tl.cdiv(SEQ_LEN, BLOCK_K) * SEQ_LEN
    KEY_MASK += batch * SEQ_LEN
    key_end = tl.load(KEY_END + batch)
    dims = tl.arange(0, HEAD_DIM)

    q = load_rows(Q, queries, dims, stride_seq, SEQ_LEN)
    grad_out = load_rows(GRAD_OUT, queries, dims, grad_out_stride_seq, SEQ_LEN)
    v_self = load_rows(V, queries, dims, stride_seq, SEQ_LEN).to(tl.float32)
    grad_dot_self = tl.sum(grad_out.to(tl.float32) * v_self, 1)
    in_range = queries < SEQ_LEN
    LEFTOVER += batch_head * num_sticks * SEQ_LEN
    alpha = 1.0 if CAUSAL else 0.5
    leftover = tl.load(LEFTOVER + queries, mask=in_range, other=0.0)
    grad_q = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)
    grad_q = _backward_stick(q, grad_out, leftover * grad_dot_self, alpha, grad_q, queries, query_start, key_end,
                             K, V, stride_seq, KEY_MASK, CHECKPOINTS, GRAD_K, GRAD_V, grad_stride_seq, scale,
                             qk_scale, SEQ_LEN, LEFT=True, HEAD_DIM=HEAD_DIM, DOT_PRECISION=DOT_PRECISION,
                             DETERMINISTIC=DETERMINISTIC, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K)  # fmt: skip
    if not CAUSAL:
        right_leftover = tl.load(LEFTOVER + SEQ_LEN + queries, mask=in_range, other=0.0)
        if DETERMINISTIC:
            GRAD_K, GRAD_V = GRAD_K + grad_slot_stride, GRAD_V + grad_slot_stride
        grad_q = _backward_stick(q, grad_out, right_leftover * grad_dot_self, alpha, grad_q, queries, query_start,
                                 key_end, K, V, stride_seq, KEY_MASK, CHECKPOINTS, GRAD_K, GRAD_V, grad_stride_seq,
                                 scale, qk_scale, SEQ_LEN, LEFT=False, HEAD_DIM=HEAD_DIM, DOT_PRECISION=DOT_PRECISION,
                                 DETERMINISTIC=DETERMINISTIC, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K)  # fmt: skip

    grad_q_offsets = queries[:, None] * grad_stride_seq + dims[None, :]
    tl.store(GRAD_Q + grad_q_offsets, (grad_q * scale).to(GRAD_Q.dtype.element_ty), mask=in_range[:, None])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _kernel_arguments(
    q: torch.Tensor, key_padding_mask: torch.Tensor, causal: bool, strides: tuple, scale: float
) -> dict:
    """The arguments common.kernel_arguments gives every kernel, and the key block size.

    The in-tile running sums are dots with float32 operands: exact for float32 inputs, tf32 for
    16-bit inputs (DOT_PRECISION). tf32 rounds each summed log2(1 - beta) by 2^-11 of itself, so a
    weight 2^-s behind keys summing to -s is off by at most s 2^-s 2^-11 ln 2 < 2^-12: below 16-bit
    rounding (tests/test_stickbreaking_kernel.py checks the output against that bound).
    """
    arguments = common.kernel_arguments(q, key_padding_mask, causal, strides, scale)
    return {**arguments, "BLOCK_K": _key_block_size(q.shape[-1])}


def _saved_state_shapes(q: torch.Tensor, causal: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the float32 state the forward saves: checkpoints and the sticks' leftovers."""
    batch, num_heads, seq_len, head_dim = q.shape
    num_key_blocks = triton.cdiv(seq_len, _key_block_size(head_dim))
    num_sticks = 1 if causal else 2
    return (batch, num_heads, num_key_blocks, seq_len), (batch, num_heads, num_sticks, seq_len)


def _forward(q, k, v, key_padding_mask, causal, scale):
    """Launch the forward: out (sequence-major), checkpoints, leftovers r_L (and r_R)."""
    (q, k, v), strides = common.shared_layout(q, k, v)
    (out,) = common.sequence_major_empty_like(q)  # (B, H, S, D)
    checkpoints_shape, leftover_shape = _saved_state_shapes(q, causal)
    # Zeros where a stick stores nothing, so the op's outputs are fully defined.
    checkpoints = q.new_zeros(checkpoints_shape, dtype=torch.float32)  # (B, H, S / BLOCK_K, S)
    leftover = q.new_empty(leftover_shape, dtype=torch.float32)  # (B, H, sticks, S)
    out_stride_batch, out_stride_head, out_stride_seq, _ = out.stride()
    common.launch(
        _forward_kernel, common.grid("BLOCK_Q", q), Q=q, K=k, V=v, OUT=out, CHECKPOINTS=checkpoints, LEFTOVER=leftover,
        out_stride_batch=out_stride_batch, out_stride_head=out_stride_head, out_stride_seq=out_stride_seq,
        **_kernel_arguments(q, key_padding_mask, causal, strides, scale),
    )  # fmt: skip
    return out, checkpoints, leftover


def _sum_slots(slots: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) sequence-major sum of (slots, B, H, S, D) sequence-major partials, in a fixed order."""
    if slots.shape[0] == 1:
        return slots[0]
    return slots.transpose(-3, -2).sum(0).transpose(1, 2)


def _backward(grad_out, q, k, v, key_padding_mask, checkpoints, leftover, causal, scale):
    """Launch the backward; dk, dv gather in float32 buffers (one slot per query block and stick
    when deterministic), and the leftover's share of dv is added here."""
    (q, k, v), strides = common.shared_layout(q, k, v)
    (grad_out,), grad_out_strides = common.shared_layout(grad_out)
    is_deterministic = common.deterministic()
    slots = 1
    if is_deterministic:
        block_q = BACKWARD_CONFIGS[0].kwargs["BLOCK_Q"]
        slots = triton.cdiv(q.shape[2], block_q) * leftover.shape[2]
    (grad_q,) = common.sequence_major_empty_like(q)  # (B, H, S, D)
    # each (slots, B, H, S, D) float32
    grad_k, grad_v = (common.sequence_major_empty(q.shape, torch.float32, q.device, (slots,)).zero_() for _ in "kv")
    grad_stride_slot, grad_stride_batch, grad_stride_head, grad_stride_seq, _ = grad_k.stride()
    common.launch(
        _backward_kernel, common.grid("BLOCK_Q", q), Q=q, K=k, V=v, GRAD_OUT=grad_out, GRAD_Q=grad_q, GRAD_K=grad_k,
        GRAD_V=grad_v, CHECKPOINTS=checkpoints, LEFTOVER=leftover, scale=scale,
        grad_out_stride_batch=grad_out_strides[0], grad_out_stride_head=grad_out_strides[1],
        grad_out_stride_seq=grad_out_strides[2], grad_stride_batch=grad_stride_batch,
        grad_stride_head=grad_stride_head, grad_stride_seq=grad_stride_seq, grad_slot_stride=grad_stride_slot,
        DETERMINISTIC=is_deterministic, **_kernel_arguments(q, key_padding_mask, causal, strides, scale),
    )  # fmt: skip
    grad_k, grad_v = _sum_slots(grad_k), _sum_slots(grad_v)  # each (B, H, S, D) float32
    alpha = 1.0 if causal else 0.5
    # The sticks' leftover r lands on v_i itself: dv_i += alpha (r_L + r_R) g_i.
    grad_v += alpha * leftover.sum(2)[..., None] * grad_out
    return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype)


# ---------------------------------------------------------------------------------------------
# Torch custom ops: opaque to torch.compile, differentiable through register_autograd
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("kernels::stickbreaking_forward", mutates_args=())
def _stickbreaking_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """out (B, H, S, D); float32 checkpoints (B, H, S / BLOCK_K, S), leftovers (B, H, sticks, S)."""
    return _forward(q, k, v, key_padding_mask, causal, scale)


@_stickbreaking_forward.register_fake
def _(q, k, v, key_padding_mask, causal, scale):
    checkpoints_shape, leftover_shape = _saved_state_shapes(q, causal)
    (out,) = common.sequence_major_empty_like(q)
    return out, q.new_empty(checkpoints_shape, dtype=torch.float32), q.new_empty(leftover_shape, dtype=torch.float32)


@torch.library.custom_op("kernels::stickbreaking_backward", mutates_args=())
def _stickbreaking_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    checkpoints: torch.Tensor,
    leftover: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_out, q, k, v, key_padding_mask, checkpoints, leftover, causal, scale)


@_stickbreaking_backward.register_fake
def _(grad_out, q, k, v, key_padding_mask, checkpoints, leftover, causal, scale):
    return common.sequence_major_empty_like(q, k, v)


# The backward needs the saved state (checkpoints, leftovers), not out.
common.register_attention_autograd(_stickbreaking_forward, _stickbreaking_backward, saved_outputs=(1, 2))


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def stickbreaking_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Stick-breaking attention (exposb) on (B, H, S, D); key_padding_mask (B, S) True = real key; logits
    scale q.k, scale 1/sqrt(D) when None.

    Bidirectional as ARCHITECTURE.md defines it; `causal` keeps the left stick only. Matches
    kernels.reference.stickbreaking_attention; differentiable in q, k, v. Bit-reproducible on one
    GPU and software stack under torch.use_deterministic_algorithms(True) (see kernels/common.py).
    """
    key_padding_mask = common.check_attention_inputs("stickbreaking_attention", q, k, v, key_padding_mask)
    out, _, _ = _stickbreaking_forward(q, k, v, key_padding_mask, causal, reference.logit_scale(q.shape[-1], scale))
    return out
