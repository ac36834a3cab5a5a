"""Stick-breaking attention (exposb) in Triton, forward and backward, in log space.

Definition (DESIGN.md): z_ij = q_i . k_j / sqrt(D), beta_ij = sigmoid(z_ij), and padded keys have
beta = 0. For query i a stick is broken outward on each side, nearest key first:
    left   A_ij = beta_ij prod_{j<l<i} (1 - beta_il)  for j < i,   r_L = prod_{j<i} (1 - beta_ij)
    right  A_ij = beta_ij prod_{i<l<j} (1 - beta_il)  for j > i,   r_R = prod_{j>i} (1 - beta_ij)
    o_i = 1/2 (sum_{j != i} A_ij v_j + (r_L + r_R) v_i),   or, causal, sum_{j<i} A_ij v_j + r_L v_i.

Forward. The (S, S) weights never reach memory: a program owns a block of queries and walks the
key blocks of each stick from the diagonal outward, carrying log2 of the stick still unbroken
(the running sum of log2(1 - beta) over the keys passed). Inside a key block, the sum over the
keys between a key and the query is a matmul of the log2(1 - beta) tile with a 0/1 triangle. The
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
dq_i = sum_l dz_il k_l / sqrt(D), dk_l = sum_i dz_il q_i / sqrt(D), and
dv_j = alpha sum_i A_ij g_i + alpha (r_L + r_R) g_j (causal: r_L g_j) for the leftover on v_j
itself. A program owns queries, so it adds its parts of dk and dv atomically to float32 buffers.

Nothing becomes NaN: entries that are not allowed get log2(1 - beta) = 0 and weight 0 through
`where` (no -inf arithmetic), padded query rows are computed like any other, and a query whose
keys are all padded has r_L = r_R = 1, so o_i = v_i.

Layout: Triton helpers and kernels -> launchers -> torch custom ops (forward, backward, autograd,
fake) -> `stickbreaking_attention`.
"""

import math

import torch
import triton
import triton.language as tl

from kernels.inputs import INTERPRETED, check_attention_inputs

LOG2_E = 1.4426950408889634  # logits are kept in base-2 units so the kernels can use exp2/log2


def _key_block(head_dim: int) -> int:
    """Keys per tile. Fixed, not tuned: the forward's checkpoints are taken once per key block.

    Sized for the backward, which holds about six (query, key) float32 tiles and a (query, D)
    accumulator: larger tiles spill registers on sm_90.
    """
    if INTERPRETED:
        return 16  # with query blocks of 32 the diagonal spans two key blocks
    return 32 if head_dim <= 64 else 16


def _configs(tuned: list[tuple[int, int, int]]) -> list[triton.Config]:
    """Autotune configs on a GPU; one small fixed config in the interpreter, where tuning is slow."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_Q": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_Q": block_q}, num_warps=warps, num_stages=stages) for block_q, warps, stages in tuned]


# (query block, num_warps, num_stages); the query block must be a multiple of the key block.
FORWARD_CONFIGS = _configs([(64, 4, 2), (64, 4, 3), (128, 4, 3), (128, 8, 2), (128, 8, 3)])
BACKWARD_CONFIGS = _configs([(64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 8, 2), (128, 8, 3)])
AUTOTUNE_KEY = ["SEQ_LEN", "HEAD_DIM", "CAUSAL", "BLOCK_K"]


# ---------------------------------------------------------------------------------------------
# Triton helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _softplus2(x):
    """log2(1 + 2^x) for any x, without overflow."""
    return tl.maximum(x, 0.0) + tl.log2(1.0 + tl.exp2(-tl.abs(x)))


@triton.jit
def _load_rows(X, rows, dims, SEQ_LEN, HEAD_DIM: tl.constexpr):
    """A (rows, D) tile of one head, zeros past the sequence end."""
    in_range = rows[:, None] < SEQ_LEN
    return tl.load(X + rows[:, None] * HEAD_DIM + dims[None, :], mask=in_range, other=0.0)


@triton.jit
def _key_blocks(query_start, key_end, LEFT: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
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
def _inclusive_sum_matrix(FROM_ABOVE: tl.constexpr, BLOCK_K: tl.constexpr):
    """0/1 (BLOCK_K, BLOCK_K) matrix M: (x @ M)[:, j] sums x[:, l] over l >= j (FROM_ABOVE) or l <= j.

    For the left stick l >= j are the keys from j toward the query, l <= j those from j outward;
    the right stick is the mirror image.
    """
    index = tl.arange(0, BLOCK_K)
    if FROM_ABOVE:
        summed = index[:, None] >= index[None, :]
    else:
        summed = index[:, None] <= index[None, :]
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
def _stick_tile(q, k, queries, keys, KEY_MASK, log_unbroken, toward_query, qk_scale, SEQ_LEN,
                LEFT: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """Weights A (queries, keys) of one key tile, and log2(1 - beta), 0 where not allowed.

    log2 A_ij = x_ij + sum of log2(1 - beta_il) over the keys l from j (included) to i, where
    x is the logit in base 2 (log2 beta = x + log2(1 - beta)); the sum over the keys of earlier
    tiles arrives as log_unbroken.
    """
    key_is_real = tl.load(KEY_MASK + keys, mask=keys < SEQ_LEN, other=0) != 0
    if LEFT:
        on_stick = keys[None, :] < queries[:, None]
    else:
        on_stick = keys[None, :] > queries[:, None]
    allowed = on_stick & key_is_real[None, :] & (queries[:, None] < SEQ_LEN)
    logits = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    log_kept = tl.where(allowed, -_softplus2(logits), 0.0)
    log_weight = logits + log_unbroken[:, None] + tl.dot(log_kept, toward_query, input_precision=DOT_PRECISION)
    # Where not allowed log_weight may be large; `where` drops exp2's inf before any arithmetic.
    weight = tl.where(allowed, tl.exp2(log_weight), 0.0)
    return weight, log_kept


@triton.jit
def _forward_stick(q, queries, query_start, key_end, K, V, KEY_MASK, CHECKPOINTS, qk_scale, SEQ_LEN,
                   LEFT: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr,
                   BLOCK_K: tl.constexpr):  # fmt: skip
    """sum_j A_ij v_j over one stick (float32) and log2 of its leftover; saves the checkpoints."""
    dims = tl.arange(0, HEAD_DIM)
    first_key, step, num_blocks = _key_blocks(query_start, key_end, LEFT, BLOCK_Q, BLOCK_K)
    toward_query = _inclusive_sum_matrix(LEFT, BLOCK_K)
    acc = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)
    log_unbroken = tl.zeros((BLOCK_Q,), tl.float32)
    for block in range(num_blocks):
        key_start = first_key + block * step
        keys = key_start + tl.arange(0, BLOCK_K)
        checkpoints, owned = _checkpoints(CHECKPOINTS, key_start, queries, SEQ_LEN, LEFT, BLOCK_K)
        tl.store(checkpoints, log_unbroken, mask=owned)
        k = _load_rows(K, keys, dims, SEQ_LEN, HEAD_DIM)
        v = _load_rows(V, keys, dims, SEQ_LEN, HEAD_DIM)
        weight, log_kept = _stick_tile(q, k, queries, keys, KEY_MASK, log_unbroken, toward_query, qk_scale, SEQ_LEN,
                                       LEFT, DOT_PRECISION)  # fmt: skip
        acc += tl.dot(weight.to(v.dtype), v, input_precision=DOT_PRECISION)
        log_unbroken += tl.sum(log_kept, 1)
    return acc, log_unbroken


@triton.jit
def _backward_stick(q, grad_out, leftover_grad, alpha, grad_q, queries, query_start, key_end, K, V, KEY_MASK,
                    CHECKPOINTS, GRAD_K, GRAD_V, scale, qk_scale, SEQ_LEN, LEFT: tl.constexpr,
                    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_K: tl.constexpr):  # fmt: skip
    """Add one stick's dq to grad_q and atomically its dk, dv; key blocks farthest first.

    dz_il = alpha (A_il g_i.v_l - beta_il F_il), F_il = r_i g_i.v_i (leftover_grad) plus
    sum_{j not nearer than l} A_ij g_i.v_j: see the module docstring.
    """
    dims = tl.arange(0, HEAD_DIM)
    first_key, step, num_blocks = _key_blocks(query_start, key_end, LEFT, BLOCK_Q, BLOCK_K)
    toward_query = _inclusive_sum_matrix(LEFT, BLOCK_K)
    away_from_query = _inclusive_sum_matrix(not LEFT, BLOCK_K)
    beyond = leftover_grad  # F up to the farther blocks: r g.v_i + their sum of A g.v
    for block in range(num_blocks):
        key_start = first_key + (num_blocks - 1 - block) * step
        keys = key_start + tl.arange(0, BLOCK_K)
        checkpoints, owned = _checkpoints(CHECKPOINTS, key_start, queries, SEQ_LEN, LEFT, BLOCK_K)
        log_unbroken = tl.load(checkpoints, mask=owned, other=0.0)
        k = _load_rows(K, keys, dims, SEQ_LEN, HEAD_DIM)
        v = _load_rows(V, keys, dims, SEQ_LEN, HEAD_DIM)
        weight, log_kept = _stick_tile(q, k, queries, keys, KEY_MASK, log_unbroken, toward_query, qk_scale, SEQ_LEN,
                                       LEFT, DOT_PRECISION)  # fmt: skip
        grad_weight = tl.dot(grad_out, tl.trans(v), input_precision=DOT_PRECISION)
        weighted_grad = weight * grad_weight  # A g.v, 0 where not allowed
        outward = beyond[:, None] + tl.dot(weighted_grad, away_from_query, input_precision=DOT_PRECISION)
        beta = 1.0 - tl.exp2(log_kept)
        grad_logits = alpha * (weighted_grad - beta * outward)
        beyond += tl.sum(weighted_grad, 1)

        grad_q += tl.dot(grad_logits.to(k.dtype), k, input_precision=DOT_PRECISION)
        grad_k = tl.dot(tl.trans(grad_logits).to(q.dtype), q, input_precision=DOT_PRECISION)
        grad_v = tl.dot(tl.trans(alpha * weight).to(grad_out.dtype), grad_out, input_precision=DOT_PRECISION)
        offsets = keys[:, None] * HEAD_DIM + dims[None, :]
        in_range = keys[:, None] < SEQ_LEN
        tl.atomic_add(GRAD_K + offsets, grad_k * scale, mask=in_range, sem="relaxed")
        tl.atomic_add(GRAD_V + offsets, grad_v, mask=in_range, sem="relaxed")
    return grad_q


@triton.jit
def _query_block(SEQ_LEN, NUM_HEADS, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's batch row and (batch, head) index, and its block of queries.

    Blocks are taken last first: when causal the last block walks the most keys.
    """
    tl.static_assert(BLOCK_Q % BLOCK_K == 0)
    batch_head = tl.program_id(1).to(tl.int64)
    batch = batch_head // NUM_HEADS
    query_start = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_Q
    return batch, batch_head, query_start, query_start + tl.arange(0, BLOCK_Q)


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.autotune(configs=FORWARD_CONFIGS, key=AUTOTUNE_KEY)
@triton.jit
def _forward_kernel(
    Q, K, V, KEY_MASK, KEY_END, OUT, CHECKPOINTS, LEFTOVER, qk_scale, SEQ_LEN, NUM_HEADS,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):  # fmt: skip
    """o for one block of queries: the left stick and, unless causal, the right one."""
    batch, batch_head, query_start, queries = _query_block(SEQ_LEN, NUM_HEADS, BLOCK_Q, BLOCK_K)
    head_offset = batch_head * SEQ_LEN * HEAD_DIM
    Q, K, V, OUT = Q + head_offset, K + head_offset, V + head_offset, OUT + head_offset
    CHECKPOINTS += batch_head * tl.cdiv(SEQ_LEN, BLOCK_K) * SEQ_LEN
    KEY_MASK += batch * SEQ_LEN
    key_end = tl.load(KEY_END + batch)
    dims = tl.arange(0, HEAD_DIM)

    q = _load_rows(Q, queries, dims, SEQ_LEN, HEAD_DIM)
    acc, log_left = _forward_stick(q, queries, query_start, key_end, K, V, KEY_MASK, CHECKPOINTS, qk_scale, SEQ_LEN,
                                   True, HEAD_DIM, DOT_PRECISION, BLOCK_Q, BLOCK_K)  # fmt: skip
    in_range = queries < SEQ_LEN
    LEFTOVER += batch_head * (1 if CAUSAL else 2) * SEQ_LEN
    leftover = tl.exp2(log_left)
    tl.store(LEFTOVER + queries, leftover, mask=in_range)
    if CAUSAL:
        alpha = 1.0
    else:
        alpha = 0.5
        right, log_right = _forward_stick(q, queries, query_start, key_end, K, V, KEY_MASK, CHECKPOINTS, qk_scale,
                                          SEQ_LEN, False, HEAD_DIM, DOT_PRECISION, BLOCK_Q, BLOCK_K)  # fmt: skip
        acc += right
        right_leftover = tl.exp2(log_right)
        tl.store(LEFTOVER + SEQ_LEN + queries, right_leftover, mask=in_range)
        leftover += right_leftover
    v_self = _load_rows(V, queries, dims, SEQ_LEN, HEAD_DIM).to(tl.float32)
    out = alpha * (acc + leftover[:, None] * v_self)
    tl.store(OUT + queries[:, None] * HEAD_DIM + dims[None, :], out.to(OUT.dtype.element_ty), mask=in_range[:, None])


@triton.autotune(configs=BACKWARD_CONFIGS, key=AUTOTUNE_KEY, reset_to_zero=["GRAD_K", "GRAD_V"])
@triton.jit
def _backward_kernel(
    Q, K, V, GRAD_OUT, KEY_MASK, KEY_END, CHECKPOINTS, LEFTOVER, GRAD_Q, GRAD_K, GRAD_V,
    scale, qk_scale, SEQ_LEN, NUM_HEADS,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):  # fmt: skip
    """dq for one block of queries; its parts of dk, dv (float32) are added atomically."""
    batch, batch_head, query_start, queries = _query_block(SEQ_LEN, NUM_HEADS, BLOCK_Q, BLOCK_K)
    head_offset = batch_head * SEQ_LEN * HEAD_DIM
    Q, K, V, GRAD_OUT = Q + head_offset, K + head_offset, V + head_offset, GRAD_OUT + head_offset
    GRAD_Q, GRAD_K, GRAD_V = GRAD_Q + head_offset, GRAD_K + head_offset, GRAD_V + head_offset
    CHECKPOINTS += batch_head * tl.cdiv(SEQ_LEN, BLOCK_K) * SEQ_LEN
    KEY_MASK += batch * SEQ_LEN
    key_end = tl.load(KEY_END + batch)
    dims = tl.arange(0, HEAD_DIM)

    q = _load_rows(Q, queries, dims, SEQ_LEN, HEAD_DIM)
    grad_out = _load_rows(GRAD_OUT, queries, dims, SEQ_LEN, HEAD_DIM)
    g = grad_out.to(tl.float32)
    grad_dot_self = tl.sum(g * _load_rows(V, queries, dims, SEQ_LEN, HEAD_DIM).to(tl.float32), 1)
    in_range = queries < SEQ_LEN
    LEFTOVER += batch_head * (1 if CAUSAL else 2) * SEQ_LEN
    alpha = 1.0 if CAUSAL else 0.5
    leftover = tl.load(LEFTOVER + queries, mask=in_range, other=0.0)
    grad_q = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)
    grad_q = _backward_stick(q, grad_out, leftover * grad_dot_self, alpha, grad_q, queries, query_start, key_end,
                             K, V, KEY_MASK, CHECKPOINTS, GRAD_K, GRAD_V, scale, qk_scale, SEQ_LEN, True, HEAD_DIM,
                             DOT_PRECISION, BLOCK_Q, BLOCK_K)  # fmt: skip
    if not CAUSAL:
        right_leftover = tl.load(LEFTOVER + SEQ_LEN + queries, mask=in_range, other=0.0)
        grad_q = _backward_stick(q, grad_out, right_leftover * grad_dot_self, alpha, grad_q, queries, query_start,
                                 key_end, K, V, KEY_MASK, CHECKPOINTS, GRAD_K, GRAD_V, scale, qk_scale, SEQ_LEN,
                                 False, HEAD_DIM, DOT_PRECISION, BLOCK_Q, BLOCK_K)  # fmt: skip
        leftover += right_leftover

    offsets = queries[:, None] * HEAD_DIM + dims[None, :]
    # The leftover of the sticks lands on v_i itself.
    tl.atomic_add(GRAD_V + offsets, alpha * leftover[:, None] * g, mask=in_range[:, None], sem="relaxed")
    tl.store(GRAD_Q + offsets, (grad_q * scale).to(GRAD_Q.dtype.element_ty), mask=in_range[:, None])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _kernel_inputs(q: torch.Tensor, key_padding_mask: torch.Tensor, causal: bool) -> dict:
    """Arguments shared by both kernels: key mask as bytes, where real keys end, sizes, precision."""
    batch, num_heads, seq_len, head_dim = q.shape
    positions = torch.arange(1, seq_len + 1, device=q.device)
    key_end = (key_padding_mask * positions).amax(dim=-1).to(torch.int32)  # (B,)
    return dict(
        KEY_MASK=key_padding_mask.contiguous().view(torch.uint8),  # (B, S)
        KEY_END=key_end,
        qk_scale=LOG2_E / math.sqrt(head_dim),
        SEQ_LEN=seq_len,
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        CAUSAL=causal,
        # The in-tile running sums are dots with float32 operands: exact for float32 inputs, tf32
        # for 16-bit inputs (relative error about 1e-3 over a tile, below their own rounding).
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_K=_key_block(head_dim),
    )


def _saved_state_shapes(q: torch.Tensor, causal: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the float32 state the forward saves: checkpoints and the sticks' leftovers."""
    batch, num_heads, seq_len, head_dim = q.shape
    num_key_blocks = triton.cdiv(seq_len, _key_block(head_dim))
    num_sticks = 1 if causal else 2
    return (batch, num_heads, num_key_blocks, seq_len), (batch, num_heads, num_sticks, seq_len)


def _grid(q: torch.Tensor):
    batch, num_heads, seq_len, _ = q.shape
    return lambda meta: (triton.cdiv(seq_len, meta["BLOCK_Q"]), batch * num_heads)


def _forward(q, k, v, key_padding_mask, causal):
    """Launch the forward on contiguous inputs: out, checkpoints, leftovers r_L (and r_R)."""
    out = torch.empty_like(q)  # (B, H, S, D)
    checkpoints_shape, leftover_shape = _saved_state_shapes(q, causal)
    # Zeros where a stick stores nothing, so the op's outputs are fully defined.
    checkpoints = q.new_zeros(checkpoints_shape, dtype=torch.float32)  # (B, H, S / BLOCK_K, S)
    leftover = q.new_empty(leftover_shape, dtype=torch.float32)  # (B, H, sticks, S)
    _forward_kernel[_grid(q)](
        q, k, v, OUT=out, CHECKPOINTS=checkpoints, LEFTOVER=leftover,
        **_kernel_inputs(q, key_padding_mask, causal),
    )  # fmt: skip
    return out, checkpoints, leftover


def _backward(grad_out, q, k, v, key_padding_mask, checkpoints, leftover, causal):
    """Launch the backward on contiguous inputs; dk, dv gather in float32 buffers."""
    grad_q = torch.empty_like(q)
    grad_k = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    grad_v = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    _backward_kernel[_grid(q)](
        q, k, v, grad_out, GRAD_Q=grad_q, GRAD_K=grad_k, GRAD_V=grad_v,
        CHECKPOINTS=checkpoints, LEFTOVER=leftover, scale=1.0 / math.sqrt(q.shape[-1]),
        **_kernel_inputs(q, key_padding_mask, causal),
    )  # fmt: skip
    return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype)


# ---------------------------------------------------------------------------------------------
# Torch custom ops: opaque to torch.compile, differentiable through register_autograd
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("kernels::stickbreaking_forward", mutates_args=())
def _stickbreaking_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """out (B, H, S, D); float32 checkpoints (B, H, S / BLOCK_K, S), leftovers (B, H, sticks, S)."""
    return _forward(q.contiguous(), k.contiguous(), v.contiguous(), key_padding_mask, causal)


@_stickbreaking_forward.register_fake
def _(q, k, v, key_padding_mask, causal):
    checkpoints_shape, leftover_shape = _saved_state_shapes(q, causal)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    contiguous = [t.contiguous() for t in (grad_out, q, k, v)]
    return _backward(*contiguous, key_padding_mask, checkpoints, leftover, causal)


@_stickbreaking_backward.register_fake
def _(grad_out, q, k, v, key_padding_mask, checkpoints, leftover, causal):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, causal = inputs
    _, checkpoints, leftover = output
    ctx.save_for_backward(q, k, v, key_padding_mask, checkpoints, leftover)
    ctx.causal = causal


def _autograd_backward(ctx, grad_out, grad_checkpoints, grad_leftover):
    # checkpoints and leftover are saved state that stickbreaking_attention never returns.
    q, k, v, key_padding_mask, checkpoints, leftover = ctx.saved_tensors
    grad_q, grad_k, grad_v = _stickbreaking_backward(
        grad_out, q, k, v, key_padding_mask, checkpoints, leftover, ctx.causal
    )
    return grad_q, grad_k, grad_v, None, None


_stickbreaking_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def stickbreaking_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool = False,
) -> torch.Tensor:
    """Stick-breaking attention (exposb) on (B, H, S, D); key_padding_mask (B, S) True = real key.

    Bidirectional as DESIGN.md defines it; `causal` keeps the left stick only. Matches
    kernels.reference.stickbreaking_attention; differentiable in q, k, v.
    """
    key_padding_mask = check_attention_inputs("stickbreaking_attention", q, k, v, key_padding_mask)
    out, _, _ = _stickbreaking_forward(q, k, v, key_padding_mask, causal)
    return out
