"""Chunked (chunkwise-parallel) Triton kernels (GPU) for the gated recurrence of common/chunk.py, forward and
backward, in the layout of flash-linear-attention's chunk_gla / chunk_simple_gla:

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,        o_t = scale * q_t^T S_t

The sequence is cut into chunks of CHUNK_SIZE (BT) steps. A sequential pass carries the state from chunk
to chunk and stores the state entering each one (h: [B, NT, H, K, V], float32); every chunk then gets its
outputs in parallel, from that state (inter-chunk) and from a causal BT x BT attention matrix A
(intra-chunk), built sub-chunk by sub-chunk (SUB_CHUNK = BC steps) because a per-channel gate does not
factor out of q_i . k_j. The backward pass mirrors this: a reverse pass for the state gradient dh, then
per-chunk kernels for dv, the intra-chunk parts of dq and dk, and their inter-chunk parts with dg.

Numerical safety. Every exponent formed is a sum of gates, so <= 0, and every such sum is built directly
(a cumulative sum of gates over exactly that range of steps), never as a difference of two cumulative
sums: at gate scale 10 a chunk's cumulative gate reaches -500, where a difference loses ~3e-5 of its
value to rounding. With G(a..b) the sum of g over steps a..b of a chunk:
  - q_i reads the state entering its chunk through exp(G(0..i)); k_j writes to the state leaving it
    through exp(G(j+1..BT-1)); the state itself decays by exp(G(0..BT-1)).
  - A[i, j] (j < i in an earlier sub-chunk, r the first step of i's sub-chunk) is
    (q_i exp(G(r..i))) . (k_j exp(G(j+1..r-1))); the backward pass splits dk's part at the end of j's
    sub-chunk instead. Within a sub-chunk, exp(G(j+1..i)) for i >= j is a running sum (vector gates) or
    a masked cumulative sum (scalar gates), and i < j never reaches exp.
Everything is accumulated in float32 whatever the input dtype. Matrix products take their operands in
the inputs' type: bfloat16 / float16 inputs multiply as bfloat16 / float16 on tensor cores (a float32
tile such as q * exp(G) is rounded to that type first, as flash-linear-attention does), float32 inputs as
TF32 (FP32_DOT; "ieee" for exact float32).

Gate gradient. Per key channel (summed over channels for scalar gates), dg_t is the sum over every
(source, sink) pair whose decay includes g_t, i.e. source before t, sink at t or after. For t in a chunk
with entering state h and leaving-state gradient dh, and dq, dk split into their intra-chunk parts
without the same step (dq', dk') and their inter-chunk parts (dq_h, dk_h):

    dg_t = sum_{s >= t} q_s dq_h_s                  h    -> outputs at t or after in the chunk
         + exp(G(0..BT-1)) <h, dh>_rows              h    -> later chunks and the final state
         + sum_{j < t} k_j dk_h_j                    k_j  -> later chunks and the final state
         + sum_{i >= t > j} A_ij do_i . v_j          k_j  -> outputs in the chunk (intra-chunk pairs)

Each line only holds pairs that straddle t, so nothing cancels. For scalar gates the last line is read
off a two-way cumulative sum of A * (do v^T) (chunk_bwd_dA_kernel). A per-channel gate would need that
for every channel, so vector gates use sum_{s >= t} (q_s dq'_s - k_s dk'_s) instead, where the pairs
inside [t, BT) cancel: those are at most one step's decay, exp(g), of the size of the true terms, while
the same-step pairs (q_t k_t scale v_t . do_t, of the size of the outputs) are left out of dq' and dk'
(and added to dq and dk afterwards), or their rounding would swamp a small gate gradient. The pairs of
k_j with the future likewise enter through an exclusive sum instead of cancelling against the final
state's path, as the fused-recurrent kernels keep that path apart.
"""

from __future__ import annotations

import dataclasses
import functools

import triton
import triton.language as tl

from alloyml.kernels.common.fused_recurrent_triton import SCALAR_GATE, VECTOR_GATE, gate_kind

# Grids put batch * head on axis 0 (up to 2^31 - 1 programs; axes 1 and 2 stop at 65,535, which
# B * H reaches with many packed sequences, e.g. 4,096 documents x 16 heads).
CHUNK_SIZE = 64  # BT: a power of two, a multiple of SUB_CHUNK
SUB_CHUNK = 16  # BC: the side of the intra-chunk blocks of A (tl.dot needs >= 16)
MAX_BLOCK = 64  # the largest key / value block; tests may lower it to reach several blocks
# Warps of the per-chunk kernels: they hold several 64 x 64 float32 tiles, which with 4 warps need more than
# 255 registers per thread (ptxas for sm_90 spilled up to 2.3 KB a thread; with 8, at most 0.4 KB).
CHUNK_WARPS = 8
# Launch settings per kernel and shape bucket: key / value block caps (BK, BV, each also capped by MAX_BLOCK
# and the next power of two of K / V, and >= 16) and warps, by gate kind. A hand table: no GPU has been lent
# to time candidates on, so it is chosen from the sm_90a compile inspection (tests/kernels/
# test_triton_compile.py: registers, spills, shared memory of each specialisation), to keep every kernel
# off the 255-register cap, where ptxas is one step from spilling: the state passes with per-channel gates
# take 8 warps (ptxas, bf16 K = V = 128: 255 -> 137 registers forward, 168 -> 128 backward), and the
# inter-chunk gradient kernel with gates takes key blocks of 32 (its scalar-gate dg buffer has one row per
# key block, so it is sized from this table too). Not timed: on a GPU, time candidates per row before
# trusting these as tuned.
LAUNCH_TABLE = {
    # kernel: (settings for every gate kind, {gate kind: overrides})
    "chunk_fwd_h_kernel": ({"BK": 64, "BV": 64, "num_warps": 4}, {VECTOR_GATE: {"num_warps": 8}}),
    "chunk_bwd_dh_kernel": ({"BK": 64, "BV": 64, "num_warps": 4}, {VECTOR_GATE: {"num_warps": 8}}),
    "chunk_fwd_attn_kernel": ({"BK": 64, "num_warps": CHUNK_WARPS}, {}),
    "chunk_fwd_o_kernel": ({"BK": 64, "BV": 64, "num_warps": CHUNK_WARPS}, {}),
    "chunk_bwd_dA_kernel": ({"BV": 64, "num_warps": CHUNK_WARPS}, {}),
    "chunk_bwd_dv_kernel": ({"BK": 64, "BV": 64, "num_warps": CHUNK_WARPS}, {}),
    "chunk_bwd_intra_kernel": ({"BK": 64, "num_warps": 4}, {}),
    "chunk_bwd_inter_kernel": ({"BK": 64, "BV": 64, "num_warps": CHUNK_WARPS},
                               {SCALAR_GATE: {"BK": 32}, VECTOR_GATE: {"BK": 32}}),
}
# How float32 inputs multiply: "tf32" (tensor cores, 2^-11 relative rounding of each operand) or "ieee"
# (exact float32, as FMA loops: the tests' setting when they compare with float64 at 1e-5).
FP32_DOT = "tf32"


def dot_precision(dtype) -> str:
    """The DOT mode of the kernels for inputs of `dtype`: 16-bit inputs multiply as themselves."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, FP32_DOT)


# --- helpers ---------------------------------------------------------------------------------------------

@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    """a @ b accumulated in float32. DOT "bf16" / "fp16": the operands (float32 tiles here) rounded to the
    inputs' 16-bit type and multiplied on tensor cores at its full rate; "tf32" / "ieee": float32 operands
    multiplied in TF32 on tensor cores or exactly (as FMA loops, many times slower)."""
    if DOT == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == "fp16":
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        return tl.dot(a, b, input_precision=DOT)

@triton.jit
def _rows(x, i_b, i_h, o_t, m_t, o_c, m_c, T, H: tl.constexpr, D: tl.constexpr):
    """Rows o_t, columns o_c of x: [B, T, H, D] as float32, zero where masked."""
    p = x + ((i_b * T + o_t) * H + i_h).to(tl.int64)[:, None] * D + o_c[None, :]
    return tl.load(p, mask=m_t[:, None] & m_c[None, :], other=0.0).to(tl.float32)


@triton.jit
def _store_rows(x, value, i_b, i_h, o_t, m_t, o_c, m_c, T, H: tl.constexpr, D: tl.constexpr):
    p = x + ((i_b * T + o_t) * H + i_h).to(tl.int64)[:, None] * D + o_c[None, :]
    tl.store(p, value.to(x.dtype.element_ty), mask=m_t[:, None] & m_c[None, :])


@triton.jit
def _gates(g, i_b, i_h, o_t, m_t, o_k, m_k, T, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr):
    """Log-gates of steps o_t (zero where ~m_t, and everywhere without gates): [len(o_t), len(o_k)].

    A scalar gate is broadcast over the key channels rather than returned as [len(o_t), 1]: Triton 3.6
    aborts while lowering a cumulative sum over a [64, 1] tensor for sm_90 (ScanOpToLLVM's
    AddPartialReduce assertion, seen on an H200), and every caller takes cumulative sums of the gates."""
    if GATE == 2:  # one branch is compiled, so the shapes may differ (separate returns may not)
        b_g = _rows(g, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
    elif GATE == 1:
        b_g = tl.load(g + ((i_b * T + o_t) * H + i_h).to(tl.int64), mask=m_t, other=0.0).to(tl.float32)[:, None]
        b_g = b_g + tl.zeros_like(o_k).to(tl.float32)[None, :]
    else:
        b_g = tl.zeros_like(o_t).to(tl.float32)[:, None] + tl.zeros_like(o_k).to(tl.float32)[None, :]
    return b_g


@triton.jit
def _gates_after(g, i_b, i_h, o_t, end, o_k, m_k, T, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr):
    """The sum of gates over steps t+1..end-1 for each t in o_t: a reverse cumulative sum of the gates
    shifted by one step."""
    o_next = o_t + 1
    shifted = _gates(g, i_b, i_h, o_next, (o_next < end) & (o_next < T), o_k, m_k, T, H, K, GATE)
    return tl.cumsum(shifted, 0, reverse=True)


@triton.jit
def _state_ptrs(x, row, o_k, o_v, K: tl.constexpr, V: tl.constexpr):
    """A [BK, BV] block of the state number `row` in x: [..., K, V]."""
    return x + row.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]


@triton.jit
def _state_block(x0, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 LOAD: tl.constexpr):
    """The [BK, BV] state block of a (batch * head, value block, key block) program: (batch * head, batch,
    head, key and value offsets and masks, block mask, the block of x0: [B, H, K, V] if LOAD else zeros)."""
    i_bh, i_v, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_k, o_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    b = tl.zeros([BK, BV], dtype=tl.float32)
    if LOAD:
        b += tl.load(_state_ptrs(x0, i_bh, o_k, o_v, K, V), mask=m_h, other=0.0).to(tl.float32)
    return i_bh, i_bh // H, i_bh % H, o_k, o_v, m_k, m_v, m_h, b


@triton.jit
def _chunk_block(T, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """The rows and feature block of a (batch * head, chunk, feature block) program: (feature block, chunk,
    batch * head, batch, head, step offsets and mask, feature offsets and mask for a feature dimension D)."""
    i_bh, i_t, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    return i_d, i_t, i_bh, i_bh // H, i_bh % H, o_t, o_t < T, o_d, o_d < D


@triton.jit
def _sum_before_combine(before_a, total_a, before_b, total_b):
    """Scan of (sum of the elements before, sum up to here): an exclusive cumulative sum, built
    directly rather than as an inclusive one minus the element."""
    return total_a + before_b, total_a + total_b


# --- forward ---------------------------------------------------------------------------------------------

@triton.jit
def chunk_fwd_h_kernel(k, v, g, h0, h, ht, seg_first, seg_last, seg_owner, T, NT, H: tl.constexpr,
                       K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       GATE: tl.constexpr, USE_H0: tl.constexpr, SEGMENTS: tl.constexpr, DOT: tl.constexpr):
    """State pass, one program per (key block, value block, batch * head): writes the state entering each
    chunk, h: [B, NT, H, K, V], and the final state ht: [B, H, K, V].

    SEGMENTS (packed sequences as one stream of chunks, B = 1; see varlen.stream_layout): chunk i_t
    belongs to sequence seg_owner[i_t]; where seg_first[i_t] the state restarts from that sequence's
    initial state (h0: [N, H, K, V], or zeros), and where seg_last[i_t] the state leaving the chunk is
    that sequence's final state (ht: [N, H, K, V]). Both are selects, not branches."""
    i_bh, i_b, i_h, o_k, o_v, m_k, m_v, m_h, b_h = _state_block(h0, H, K, V, BK, BV, USE_H0 and not SEGMENTS)
    for i_t in range(0, NT):
        if SEGMENTS:
            i_n = tl.load(seg_owner + i_t).to(tl.int64)
            b_start = tl.zeros([BK, BV], dtype=tl.float32)
            if USE_H0:
                b_start += tl.load(_state_ptrs(h0, i_n * H + i_h, o_k, o_v, K, V), mask=m_h, other=0.0)
            b_h = tl.where(tl.load(seg_first + i_t) != 0, b_start, b_h)
        tl.store(_state_ptrs(h, (i_b * NT + i_t) * H + i_h, o_k, o_v, K, V), b_h, mask=m_h)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        b_k = _rows(k, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)  # [BT, BK]
        b_v = _rows(v, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)  # [BT, BV]
        if GATE != 0:
            b_g = _gates(g, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K, GATE)  # [BT, BK]
            b_k = b_k * tl.exp(_gates_after(g, i_b, i_h, o_t, i_t * BT + BT, o_k, m_k, T, H, K, GATE))
            b_h = b_h * tl.exp(tl.sum(b_g, 0))[:, None]
        b_h += _dot(tl.trans(b_k), b_v, DOT)
        if SEGMENTS:
            tl.store(_state_ptrs(ht, i_n * H + i_h, o_k, o_v, K, V), b_h,
                     mask=m_h & ((tl.zeros([BK, BV], dtype=tl.int32) + tl.load(seg_last + i_t)) != 0))
    if not SEGMENTS:
        tl.store(_state_ptrs(ht, i_bh, o_k, o_v, K, V), b_h, mask=m_h)


@triton.jit
def chunk_fwd_attn_kernel(q, k, g, A, scale, T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                          BC: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, DOT: tl.constexpr):
    """The intra-chunk attention A: [B, T, H, BT] (A[t, j] pairs step t with step j of t's chunk, scale
    included, zero for j > t), one program per (chunk and sub-chunk, batch * head) writing the sub-chunk's
    BC rows: the blocks of earlier sub-chunks in one product, then the diagonal block."""
    NC: tl.constexpr = BT // BC
    i_bh, i_tc = tl.program_id(0), tl.program_id(1)
    i_t, i_c = i_tc // NC, i_tc % NC
    i_b, i_h = i_bh // H, i_bh % H
    t0, r = i_t * BT, i_t * BT + i_c * BC  # first step of the chunk, of the sub-chunk
    o_d = tl.arange(0, BC)  # step within the sub-chunk
    o_i, o_j = r + o_d, t0 + tl.arange(0, BT)
    m_i, m_before = o_i < T, (o_j < T) & (o_j < r)
    b_A = tl.zeros([BC, BT], dtype=tl.float32)  # against the steps before r
    b_Ad = tl.zeros([BC, BC], dtype=tl.float32)  # within the sub-chunk
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_q = _rows(q, i_b, i_h, o_i, m_i, o_k, m_k, T, H, K)  # [BC, BK]
        b_gq = _gates(g, i_b, i_h, o_i, m_i, o_k, m_k, T, H, K, GATE)
        b_kb = _rows(k, i_b, i_h, o_j, m_before, o_k, m_k, T, H, K)  # [BT, BK]
        b_kb = b_kb * tl.exp(_gates_after(g, i_b, i_h, o_j, r, o_k, m_k, T, H, K, GATE))  # G(j+1..r-1)
        b_A += _dot(b_q * tl.exp(tl.cumsum(b_gq, 0)), tl.trans(b_kb), DOT)  # G(r..i)
        if GATE == 2:
            b_D = tl.zeros([BC, BK], dtype=tl.float32)  # G(j+1..i) for i >= j, from j = BC - 1 down
            for jj in range(0, BC):
                j = BC - 1 - jj
                # a step past T only reaches rows i >= j, which are not stored: clamp it to a valid row
                row = ((i_b * T + tl.minimum(r + j, T - 1)) * H + i_h).to(tl.int64)
                b_kj = tl.load(k + row * K + o_k, mask=m_k, other=0.0)
                b_gj = tl.load(g + row * K + o_k, mask=m_k, other=0.0)
                b_w = tl.exp(tl.where(o_d[:, None] >= j, b_D, float("-inf")))
                b_col = tl.sum(b_q * b_kj.to(tl.float32)[None, :] * b_w, 1)  # [BC]
                b_Ad += tl.where(o_d[None, :] == j, b_col[:, None], 0.0)
                b_D = tl.where(o_d[:, None] >= j, b_D + b_gj.to(tl.float32)[None, :], 0.0)
        else:
            b_kd = _rows(k, i_b, i_h, o_i, m_i, o_k, m_k, T, H, K)
            b_Ad += _dot(b_q, tl.trans(b_kd), DOT)
    if GATE != 2:  # one decay per (i, j): G(j+1..i) as a masked cumulative sum over i
        b_g = _gates(g, i_b, i_h, o_i, m_i, o_d, o_d < BC, T, H, K, GATE)  # [BC, BC], equal columns
        b_D = tl.cumsum(tl.where(o_d[:, None] > o_d[None, :], b_g, 0.0), 0)
        b_Ad = b_Ad * tl.exp(tl.where(o_d[:, None] >= o_d[None, :], b_D, float("-inf")))
    o_col = tl.arange(0, BT)
    m_off = (o_col < i_c * BC) | (o_col >= i_c * BC + BC)  # the earlier sub-chunks, and zeros after
    _store_rows(A, b_A * scale, i_b, i_h, o_i, m_i, o_col, m_off, T, H, BT)
    _store_rows(A, b_Ad * scale, i_b, i_h, o_i, m_i, i_c * BC + o_d, o_d < BC, T, H, BT)


@triton.jit
def chunk_fwd_o_kernel(q, v, g, h, A, o, scale, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                       DOT: tl.constexpr):
    """Outputs, one program per (value block, chunk, batch * head):
    o = scale (q exp(G(0..i))) h + A v."""
    i_v, i_t, i_bh, i_b, i_h, o_t, m_t, o_v, m_v = _chunk_block(T, H, V, BT, BV)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_q = _rows(q, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
        b_q = b_q * tl.exp(tl.cumsum(_gates(g, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K, GATE), 0))
        p_h = _state_ptrs(h, (i_b * NT + i_t) * H + i_h, o_k, o_v, K, V)
        b_h = tl.load(p_h, mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o += _dot(b_q, b_h, DOT)
    o_j = tl.arange(0, BT)
    b_A = _rows(A, i_b, i_h, o_t, m_t, o_j, i_t * BT + o_j < T, T, H, BT)  # [BT, BT]
    b_v = _rows(v, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)
    b_o = b_o * scale + _dot(b_A, b_v, DOT)
    _store_rows(o, b_o, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)


# --- backward --------------------------------------------------------------------------------------------

@triton.jit
def chunk_bwd_dh_kernel(q, do, g, dht, dh, dh0, seg_first, seg_last, seg_owner, scale, T, NT, H: tl.constexpr,
                        K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        GATE: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                        SEGMENTS: tl.constexpr, DOT: tl.constexpr):
    """Reverse state-gradient pass, one program per (key block, value block, batch * head): writes the
    gradient of the state leaving each chunk, dh: [B, NT, H, K, V] (the final state's for the last), and
    the initial state's, dh0: [B, H, K, V]. SEGMENTS as in chunk_fwd_h_kernel: at a sequence's last chunk
    the gradient restarts from its final state's (dht: [N, H, K, V], or zeros), and at its first chunk
    the gradient entering it is its initial state's (dh0: [N, H, K, V])."""
    i_bh, i_b, i_h, o_k, o_v, m_k, m_v, m_h, b_dh = _state_block(dht, H, K, V, BK, BV,
                                                                 USE_DHT and not SEGMENTS)
    for i_back in range(0, NT):
        i_t = NT - 1 - i_back
        if SEGMENTS:
            i_n = tl.load(seg_owner + i_t).to(tl.int64)
            b_end = tl.zeros([BK, BV], dtype=tl.float32)
            if USE_DHT:
                b_end += tl.load(_state_ptrs(dht, i_n * H + i_h, o_k, o_v, K, V), mask=m_h, other=0.0)
            b_dh = tl.where(tl.load(seg_last + i_t) != 0, b_end, b_dh)
        tl.store(_state_ptrs(dh, (i_b * NT + i_t) * H + i_h, o_k, o_v, K, V), b_dh, mask=m_h)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        b_q = _rows(q, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
        b_do = _rows(do, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)
        if GATE != 0:
            b_g = _gates(g, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K, GATE)
            b_q = b_q * tl.exp(tl.cumsum(b_g, 0))
            b_dh = b_dh * tl.exp(tl.sum(b_g, 0))[:, None]
        b_dh += _dot(tl.trans(b_q * scale), b_do, DOT)
        if SEGMENTS:
            if STORE_DH0:
                tl.store(_state_ptrs(dh0, i_n * H + i_h, o_k, o_v, K, V), b_dh,
                         mask=m_h & ((tl.zeros([BK, BV], dtype=tl.int32) + tl.load(seg_first + i_t)) != 0))
    if STORE_DH0 and not SEGMENTS:
        tl.store(_state_ptrs(dh0, i_bh, o_k, o_v, K, V), b_dh, mask=m_h)


@triton.jit
def chunk_bwd_dA_kernel(v, do, A, dA, dg_intra, scale, T, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BV: tl.constexpr, GATE: tl.constexpr, DOT: tl.constexpr):
    """dA[t, j] = scale do_t . v_j for j <= t in t's chunk (zero above): [B, T, H, BT], one program per
    (chunk, batch * head). For scalar gates also the intra-chunk pairs' part of dg_t: [B, T, H], the sum
    of A_ij do_i . v_j over the pairs j < t <= i, formed directly (see the module docstring)."""
    i_bh, i_t = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_j = tl.arange(0, BT)
    o_t = i_t * BT + o_j
    m_t = o_t < T
    b_dov = tl.zeros([BT, BT], dtype=tl.float32)  # do_i . v_j
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        b_do = _rows(do, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)
        b_v = _rows(v, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)
        b_dov += _dot(b_do, tl.trans(b_v), DOT)
    if GATE == 1:
        b_A = _rows(A, i_b, i_h, o_t, m_t, o_j, o_j < BT, T, H, BT)
        b_pairs = tl.where(o_j[:, None] > o_j[None, :], b_A * b_dov, 0.0)
        # sums over i >= t (rows) and j <= t' (columns), read at t' = t - 1
        b_pairs = tl.cumsum(tl.cumsum(b_pairs, 1), 0, reverse=True)
        b_straddling = tl.sum(tl.where(o_j[None, :] == o_j[:, None] - 1, b_pairs, 0.0), 1)
        tl.store(dg_intra + ((i_b * T + o_t) * H + i_h).to(tl.int64), b_straddling, mask=m_t)
    b_dA = tl.where(o_j[:, None] >= o_j[None, :], b_dov * scale, 0.0)
    _store_rows(dA, b_dA, i_b, i_h, o_t, m_t, o_j, o_j < BT, T, H, BT)


@triton.jit
def chunk_bwd_dv_kernel(k, g, A, do, dh, dv, T, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                        DOT: tl.constexpr):
    """dv = A^T do + (k exp(G(j+1..BT-1))) dh, one program per (value block, chunk, batch * head)."""
    i_v, i_t, i_bh, i_b, i_h, o_t, m_t, o_v, m_v = _chunk_block(T, H, V, BT, BV)
    o_j = tl.arange(0, BT)
    b_A = _rows(A, i_b, i_h, o_t, m_t, o_j, i_t * BT + o_j < T, T, H, BT)
    b_do = _rows(do, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)
    b_dv = _dot(tl.trans(b_A), b_do, DOT)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = _rows(k, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
        b_k = b_k * tl.exp(_gates_after(g, i_b, i_h, o_t, i_t * BT + BT, o_k, m_k, T, H, K, GATE))
        p_dh = _state_ptrs(dh, (i_b * NT + i_t) * H + i_h, o_k, o_v, K, V)
        b_dh = tl.load(p_dh, mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_dv += _dot(b_k, b_dh, DOT)
    _store_rows(dv, b_dv, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)


@triton.jit
def chunk_bwd_intra_kernel(q, k, g, dA, dq, dk, T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                           BC: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, DOT: tl.constexpr):
    """The intra-chunk parts of dq and dk without the same step (dq', dk': [B, T, H, K] float32), one
    program per (key block, chunk and sub-chunk, batch * head) writing the sub-chunk's rows:
    dq'_i = sum_{j < i} dA_ij k_j exp(G(j+1..i)), dk'_j = sum_{i > j} dA_ij q_i exp(G(j+1..i))."""
    NC: tl.constexpr = BT // BC
    i_bh, i_tc, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, i_c = i_tc // NC, i_tc % NC
    i_b, i_h = i_bh // H, i_bh % H
    t0, r = i_t * BT, i_t * BT + i_c * BC  # first step of the chunk, of the sub-chunk
    end = r + BC  # one past the sub-chunk
    o_d, o_l = tl.arange(0, BC), tl.arange(0, BT)  # steps within the sub-chunk, within the chunk
    o_i, o_j = r + o_d, t0 + o_l
    m_i = o_i < T
    m_before, m_after = (o_j < T) & (o_j < r), (o_j < T) & (o_j >= end)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    b_q = _rows(q, i_b, i_h, o_i, m_i, o_k, m_k, T, H, K)  # [BC, BK]
    b_k = _rows(k, i_b, i_h, o_i, m_i, o_k, m_k, T, H, K)
    b_g = _gates(g, i_b, i_h, o_i, m_i, o_k, m_k, T, H, K, GATE)  # [BC, BK]

    # dq from the keys of earlier sub-chunks: exp(G(r..i)) sum_j dA_ij k_j exp(G(j+1..r-1))
    b_kb = _rows(k, i_b, i_h, o_j, m_before, o_k, m_k, T, H, K)  # [BT, BK]
    b_kb = b_kb * tl.exp(_gates_after(g, i_b, i_h, o_j, r, o_k, m_k, T, H, K, GATE))
    b_dA = _rows(dA, i_b, i_h, o_i, m_i, o_l, o_l < i_c * BC, T, H, BT)  # [BC, BT]
    b_dq = tl.exp(tl.cumsum(b_g, 0)) * _dot(b_dA, b_kb, DOT)
    # dk from the queries of later sub-chunks: exp(G(j+1..end-1)) sum_i dA_ij q_i exp(G(end..i))
    b_qa = _rows(q, i_b, i_h, o_j, m_after, o_k, m_k, T, H, K)
    b_qa = b_qa * tl.exp(tl.cumsum(_gates(g, i_b, i_h, o_j, m_after, o_k, m_k, T, H, K, GATE), 0))
    b_dAt = _rows(dA, i_b, i_h, o_j, m_after, i_c * BC + o_d, o_d < BC, T, H, BT)  # [BT, BC]
    b_dk = _dot(tl.trans(b_dAt), b_qa, DOT)
    b_dk = b_dk * tl.exp(_gates_after(g, i_b, i_h, o_i, end, o_k, m_k, T, H, K, GATE))

    # within the sub-chunk, j < i
    if GATE == 2:
        b_D = tl.zeros([BC, BK], dtype=tl.float32)  # G(j+1..i) for i >= j, from j = BC - 1 down
        for jj in range(0, BC):
            j = BC - 1 - jj
            row = ((i_b * T + tl.minimum(r + j, T - 1)) * H + i_h).to(tl.int64)  # as in the forward pass
            b_kj = tl.load(k + row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_gj = tl.load(g + row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_dAj = tl.load(dA + ((i_b * T + o_i) * H + i_h).to(tl.int64) * BT + i_c * BC + j, mask=m_i,
                            other=0.0)  # dA[i, j]: [BC]
            b_w = b_dAj[:, None] * tl.exp(tl.where(o_d[:, None] > j, b_D, float("-inf")))  # [BC, BK]
            b_dq += b_w * b_kj[None, :]
            b_dk += tl.where(o_d[:, None] == j, tl.sum(b_w * b_q, 0)[None, :], 0.0)
            b_D = tl.where(o_d[:, None] >= j, b_D + b_gj[None, :], 0.0)
    else:  # one decay per (i, j): G(j+1..i) as a masked cumulative sum over i
        b_gd = _gates(g, i_b, i_h, o_i, m_i, o_d, o_d < BC, T, H, K, GATE)  # [BC, BC], equal columns
        b_D = tl.cumsum(tl.where(o_d[:, None] > o_d[None, :], b_gd, 0.0), 0)  # [BC, BC]
        b_dAd = _rows(dA, i_b, i_h, o_i, m_i, i_c * BC + o_d, o_d < BC, T, H, BT)
        b_dAd = b_dAd * tl.exp(tl.where(o_d[:, None] > o_d[None, :], b_D, float("-inf")))
        b_dq += _dot(b_dAd, b_k, DOT)
        b_dk += _dot(tl.trans(b_dAd), b_q, DOT)
    _store_rows(dq, b_dq, i_b, i_h, o_i, m_i, o_k, m_k, T, H, K)
    _store_rows(dk, b_dk, i_b, i_h, o_i, m_i, o_k, m_k, T, H, K)


@triton.jit
def chunk_bwd_inter_kernel(q, k, v, g, h, dh, do, dA, dq_intra, dk_intra, dq, dk, dg, scale, T, NT,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                           BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DOT: tl.constexpr):
    """dq, dk (inter-chunk parts added to dq', dk' and the same-step part) and the gate gradient (see the
    module docstring), one program per (key block, chunk, batch * head). dg: [B, T, H, K] for vector
    gates, this key block's part [NK, B, T, H] for scalar gates."""
    i_k, i_t, i_bh, i_b, i_h, o_t, m_t, o_k, m_k = _chunk_block(T, H, K, BT, BK)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # do h^T
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)  # v dh^T
    b_hdh = tl.zeros([BK], dtype=tl.float32)  # <h, dh> per key channel
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_h = m_k[:, None] & m_v[None, :]
        b_h = tl.load(_state_ptrs(h, (i_b * NT + i_t) * H + i_h, o_k, o_v, K, V), mask=m_h, other=0.0)
        b_dh = tl.load(_state_ptrs(dh, (i_b * NT + i_t) * H + i_h, o_k, o_v, K, V), mask=m_h, other=0.0)
        b_do = _rows(do, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)
        b_v = _rows(v, i_b, i_h, o_t, m_t, o_v, m_v, T, H, V)
        b_dq += _dot(b_do, tl.trans(b_h), DOT)
        b_dk += _dot(b_v, tl.trans(b_dh), DOT)
        b_hdh += tl.sum(b_h * b_dh, 1)
    b_q = _rows(q, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
    b_k = _rows(k, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
    b_dqi = _rows(dq_intra, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
    b_dki = _rows(dk_intra, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
    b_dq = b_dq * scale
    if GATE != 0:
        b_g = _gates(g, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K, GATE)
        b_dq = b_dq * tl.exp(tl.cumsum(b_g, 0))
        b_dk = b_dk * tl.exp(_gates_after(g, i_b, i_h, o_t, i_t * BT + BT, o_k, m_k, T, H, K, GATE))
        b_hdh = b_hdh * tl.exp(tl.sum(b_g, 0))
        if GATE == 2:
            b_pairs_in_chunk = tl.cumsum(b_q * (b_dq + b_dqi) - b_k * b_dki, 0, reverse=True)
        else:  # the intra-chunk pairs come from chunk_bwd_dA_kernel
            b_pairs_in_chunk = tl.cumsum(b_q * b_dq, 0, reverse=True)
        b_keys_to_future, _ = tl.associative_scan((tl.zeros_like(b_dk), b_k * b_dk), 0, _sum_before_combine)
        b_dg = b_pairs_in_chunk + b_keys_to_future + b_hdh[None, :]
        if GATE == 2:
            _store_rows(dg, b_dg, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
        else:
            p_dg = dg + ((i_k * (tl.num_programs(0) // H) + i_b) * T + o_t).to(tl.int64) * H + i_h
            tl.store(p_dg, tl.sum(b_dg, 1), mask=m_t)
    b_same = tl.load(dA + ((i_b * T + o_t) * H + i_h).to(tl.int64) * BT + o_t - i_t * BT, mask=m_t, other=0.0)
    _store_rows(dq, b_dq + b_dqi + b_same[:, None] * b_k, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)
    _store_rows(dk, b_dk + b_dki + b_same[:, None] * b_q, i_b, i_h, o_t, m_t, o_k, m_k, T, H, K)


# --- launchers -------------------------------------------------------------------------------------------

def _sizes(q, v, g) -> dict:
    """Shapes, blocks (>= 16 so the code is also valid on GPUs, powers of two) and kernel constants."""

    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = CHUNK_SIZE
    return {
        "B": B, "T": T, "H": H, "K": K, "V": V, "BT": BT, "NT": triton.cdiv(T, BT),
        "GATE": gate_kind(g), "DOT": dot_precision(q.dtype),
    }


def launch_settings(kernel: str, s: dict) -> dict:
    """{"BK", "BV", "num_warps"[, "num_stages"]} for `kernel` at the sizes `s` (LAUNCH_TABLE)."""
    base, by_gate = LAUNCH_TABLE[kernel]
    cfg = {**base, **by_gate.get(s["GATE"], {})}
    out = {"num_warps": cfg["num_warps"]}
    if "num_stages" in cfg:
        out["num_stages"] = cfg["num_stages"]
    for block, dim in (("BK", "K"), ("BV", "V")):
        if block in cfg:
            out[block] = max(16, min(cfg[block], MAX_BLOCK, triton.next_power_of_2(s[dim])))
    return out


def chunk_states(k, v, g, initial_state, s: dict, segments=None):
    """The state entering each chunk, h: [B, NT, H, K, V], and the final state(s): both float32.
    `segments` (see `chunk_gated_triton`): the final states [N, H, K, V] of the packed sequences, an
    empty sequence keeping its initial state."""
    import torch

    B, NT, H, K, V = (s[n] for n in ("B", "NT", "H", "K", "V"))
    cfg = launch_settings("chunk_fwd_h_kernel", s)
    h = k.new_empty(B, NT, H, K, V, dtype=torch.float32)
    if segments is None:
        ht = k.new_empty(B, H, K, V, dtype=torch.float32)
        flags = (ht, ht, ht)
    else:
        ht = k.new_zeros(segments.n_sequences, H, K, V, dtype=torch.float32)
        flags = (segments.first, segments.last, segments.owner)
    grid = (B * H, triton.cdiv(V, cfg["BV"]), triton.cdiv(K, cfg["BK"]))
    chunk_fwd_h_kernel[grid](
        k, v, k if g is None else g, ht if initial_state is None else initial_state, h, ht, *flags, s["T"], NT,
        H=H, K=K, V=V, BT=s["BT"], GATE=s["GATE"], USE_H0=initial_state is not None,
        SEGMENTS=segments is not None, DOT=s["DOT"], **cfg,
    )
    if segments is not None and initial_state is not None:
        ht = torch.where(segments.empty[:, None, None, None], initial_state.float(), ht)
    return h, ht


def chunk_attention(q, k, g, scale: float, s: dict):
    """The intra-chunk attention A: [B, T, H, BT] float32."""
    import torch

    B, T, H, K, BT = (s[n] for n in ("B", "T", "H", "K", "BT"))
    A = q.new_empty(B, T, H, BT, dtype=torch.float32)
    chunk_fwd_attn_kernel[(B * H, s["NT"] * (BT // SUB_CHUNK))](
        q, k, q if g is None else g, A, scale, T, H=H, K=K, BT=BT, BC=SUB_CHUNK, GATE=s["GATE"], DOT=s["DOT"],
        **launch_settings("chunk_fwd_attn_kernel", s),
    )
    return A


def chunk_fwd(q, k, v, g, scale: float, initial_state, segments=None):
    """(o: [B, T, H, V] in v's dtype, final state [B, H, K, V] float32, A for the backward pass)."""
    import torch

    s = _sizes(q, v, g)
    h, ht = chunk_states(k, v, g, initial_state, s, segments)
    A = chunk_attention(q, k, g, scale, s)
    o = torch.empty_like(v)
    cfg = launch_settings("chunk_fwd_o_kernel", s)
    chunk_fwd_o_kernel[(s["B"] * s["H"], s["NT"], triton.cdiv(s["V"], cfg["BV"]))](
        q, v, q if g is None else g, h, A, o, scale, s["T"], s["NT"], H=s["H"], K=s["K"], V=s["V"], BT=s["BT"],
        GATE=s["GATE"], DOT=s["DOT"], **cfg,
    )
    return o, ht, A


def chunk_bwd(q, k, v, g, scale: float, initial_state, A, do, dht, segments=None):
    """Gradients (dq, dk, dv, dg, dh0) in the inputs' dtypes (dh0 float32); the states are recomputed."""
    import torch

    s = _sizes(q, v, g)
    B, T, H, K, V, BT, NT = (s[n] for n in ("B", "T", "H", "K", "V", "BT", "NT"))
    consts = {"BT": BT, "DOT": s["DOT"]}
    g_arg = q if g is None else g
    h, _ = chunk_states(k, v, g, initial_state, s, segments)
    dh = torch.empty_like(h)
    dh0 = None
    if initial_state is not None:  # with segments, an empty sequence's is written below, not by the kernel
        dh0 = (torch.empty_like if segments is None else torch.zeros_like)(initial_state, dtype=torch.float32)
    flags = (dh, dh, dh) if segments is None else (segments.first, segments.last, segments.owner)
    cfg = launch_settings("chunk_bwd_dh_kernel", s)
    chunk_bwd_dh_kernel[(B * H, triton.cdiv(V, cfg["BV"]), triton.cdiv(K, cfg["BK"]))](
        q, do, g_arg, q if dht is None else dht, dh, q if dh0 is None else dh0, *flags, scale, T, NT, H=H, K=K,
        V=V, GATE=s["GATE"], USE_DHT=dht is not None, STORE_DH0=dh0 is not None,
        SEGMENTS=segments is not None, **consts, **cfg,
    )
    if segments is not None and dh0 is not None and dht is not None:  # an empty sequence: final = initial
        dh0 = torch.where(segments.empty[:, None, None, None], dht, dh0)
    dA = q.new_empty(B, T, H, BT, dtype=torch.float32)
    dg_intra = q.new_empty(B, T, H, dtype=torch.float32) if s["GATE"] == SCALAR_GATE else None
    chunk_bwd_dA_kernel[(B * H, NT)](
        v, do, A, dA, q if dg_intra is None else dg_intra, scale, T, H=H, V=V, GATE=s["GATE"], **consts,
        **launch_settings("chunk_bwd_dA_kernel", s),
    )
    dv = torch.empty_like(v)
    cfg = launch_settings("chunk_bwd_dv_kernel", s)
    chunk_bwd_dv_kernel[(B * H, NT, triton.cdiv(V, cfg["BV"]))](
        k, g_arg, A, do, dh, dv, T, NT, H=H, K=K, V=V, GATE=s["GATE"], **consts, **cfg,
    )
    dq_intra = q.new_empty(B, T, H, K, dtype=torch.float32)
    dk_intra = torch.empty_like(dq_intra)
    cfg = launch_settings("chunk_bwd_intra_kernel", s)
    chunk_bwd_intra_kernel[(B * H, NT * (BT // SUB_CHUNK), triton.cdiv(K, cfg["BK"]))](
        q, k, g_arg, dA, dq_intra, dk_intra, T, H=H, K=K, BC=SUB_CHUNK, GATE=s["GATE"], **consts, **cfg,
    )
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    cfg = launch_settings("chunk_bwd_inter_kernel", s)
    NK = triton.cdiv(K, cfg["BK"])  # the scalar-gate dg buffer: one row per key block of this kernel
    dg = None
    if g is not None:
        dg = torch.empty_like(g) if s["GATE"] == VECTOR_GATE else q.new_empty(NK, B, T, H, dtype=torch.float32)
    chunk_bwd_inter_kernel[(B * H, NT, NK)](
        q, k, v, g_arg, h, dh, do, dA, dq_intra, dk_intra, dq, dk, q if dg is None else dg, scale, T, NT,
        H=H, K=K, V=V, GATE=s["GATE"], **consts, **cfg,
    )
    if s["GATE"] == SCALAR_GATE:
        dg = (dg.sum(0) + dg_intra).to(g.dtype)  # [B, T, H]
    return dq, dk, dv, dg, dh0


@functools.cache
def _autograd_function():
    from alloyml.kernels.common.triton_autograd import gated_function

    return gated_function("ChunkGated", chunk_fwd, chunk_bwd)



def chunk_gated_triton(q, k, v, g, scale: float, initial_state, segments=None):
    """The gated recurrence, chunked on Triton: q, k: [B, T, H, K], v: [B, T, H, V], g: [B, T, H] |
    [B, T, H, K] | None (log-space, <= 0), initial_state: [B, H, K, V] | None -> (o: [B, T, H, V] in v's
    dtype, final state [B, H, K, V] float32).

    `segments` (a `Segments`, from `segments_of(varlen.stream_layout(cu_seqlens, T, CHUNK_SIZE))`):
    the inputs are N packed sequences laid out as one stream of chunks (B = 1, each sequence from a
    chunk boundary); the state pass restarts at each sequence's first chunk and the final states
    [N, H, K, V] are read after each one's last. initial_state: [N, H, K, V] | None."""
    from alloyml.kernels.common.triton_autograd import apply_contiguous

    return apply_contiguous(_autograd_function(), q, k, v, g, scale, initial_state, segments)


@dataclasses.dataclass
class Segments:
    """Per-chunk flags of a stream of packed sequences, as the state passes read them: first / last
    [n_chunks] int32 (the chunk starts / ends its sequence), owner [n_chunks] int64 (its sequence),
    empty [N] bool (a sequence of no steps), n_sequences N."""

    first: object
    last: object
    owner: object
    empty: object
    n_sequences: int


def segments_of(layout) -> Segments:
    """The flags of a varlen.StreamLayout, from tensor operations only (no read of values on the host)."""
    import torch

    chunks = torch.arange(layout.n_chunks, device=layout.owner.device)
    last = (chunks == layout.last[layout.owner]) & ~layout.empty[layout.owner]
    return Segments(layout.first.to(torch.int32).contiguous(), last.to(torch.int32).contiguous(),
                    layout.owner.contiguous(), layout.empty, layout.last.numel())
