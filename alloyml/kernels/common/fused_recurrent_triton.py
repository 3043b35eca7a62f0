"""Step-by-step Triton kernels (GPU; the "triton_recurrent" engine) for the gated recurrence of
common/chunk.py, forward and backward:

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,        o_t = scale * q_t^T S_t

Layout (that of fla's fused_recurrent kernels): one program per (value block, batch * head) keeps its
[K, BV] slice of the state in registers and walks the sequence. Only exp(g_t) <= 1 is ever formed, so
any gate scale is safe. Everything is computed in float32 whatever the input dtype (the interpreter's
bf16 arithmetic is wrong, and float32 state is what long sequences need).

Backward: one forward walk recomputes S_t for dq_t = scale S_t do_t; one backward walk carries dS
(dS_{t-1} = diag(exp(g_t)) dS_t + scale q_{t-1} do_{t-1}^T) for dk_t = dS_t v_t and dv_t = dS_t^T k_t.
The gate gradient comes from the same walks, per key channel (summed over channels for scalar gates):
dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + exp(g_{t+1} + ... + g_{T-1}) <diag(exp(g_t)) S_{t-1}, dS_T>.
For that sum the kernels keep apart what cancels exactly in it: dq and dk without their same-step
parts (scale k_t (v_t . do_t), scale q_t (v_t . do_t)) and dk without the final state's path. Left in,
their rounding, of the size of the outputs, would swamp a gate gradient that carries a factor exp(g)
(d/d gamma of a strong decay). The parts are added back for dq and dk in PyTorch.

Limit: the pairs that do cancel in that sum (both ends at or after t) span the whole rest of the sequence,
so the gate gradient's rounding grows with T: measured against the float64 reference at T=70, 1.5e-5
relative at gate scale 1 and up to 6e-4 at gate scale 10 with one head, where the chunked kernels
(chunk_triton.py, which sum only the pairs that straddle t) stay below 1e-6. Train with "triton"; this
engine suits short sequences and decoding.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

NO_GATE, SCALAR_GATE, VECTOR_GATE = 0, 1, 2
MAX_KEY_DIM = 256  # the whole key dimension of the state lives in one program's registers


@triton.jit
def _load_gate(p_g, m_k, GATE: tl.constexpr):
    """exp(g_t): a [BK] vector for vector gates, a scalar for scalar gates."""
    if GATE == 2:
        return tl.exp(tl.load(p_g, mask=m_k, other=0.0).to(tl.float32))
    return tl.exp(tl.load(p_g).to(tl.float32))


@triton.jit
def _gate_state(h, decay, GATE: tl.constexpr):
    if GATE == 2:
        return h * decay[:, None]
    if GATE == 1:
        return h * decay
    return h


@triton.jit
def _program_block(T, t0, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr):
    """This program's slice: key and value offsets and masks, its state block's offsets in [B, H, K, V]
    and mask, the row of (b, t0, h) in [B, T, H], and its key offsets in a [NV, B, T, H, K] buffer."""
    # int64: the [NV, B, T, H, K] offsets pass 2^31 at e.g. B16 T8192 H32 K=V=128 (NV = 2)
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)  # B * H on axis 0: see chunk_triton
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    o_h = i_bh * K * V + o_k[:, None] * V + o_v[None, :]
    m_h = m_k[:, None] & m_v[None, :]
    row = i_b * T * H + t0 * H + i_h
    o_part = (i_v * (tl.num_programs(0) // H) * T * H + row) * K + o_k
    return o_k, o_v, m_k, m_v, o_h, m_h, row, o_part


@triton.jit
def fused_recurrent_fwd_kernel(q, k, v, g, h0, o, ht, dq, do, dht, dg_final, scale, T,
                               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                               BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                               USE_H0: tl.constexpr, COMPUTE_DQ: tl.constexpr, USE_DHT: tl.constexpr):
    """Forward walk. COMPUTE_DQ=False: writes o [B, T, H, V] and the final state ht [B, H, K, V].
    COMPUTE_DQ=True (backward): writes this value block's parts of dq and, with USE_DHT, of
    dg_final_t = <diag(exp(g_t)) S_{t-1}, dS_T> (both [NV, B, T, H, K])."""
    o_k, o_v, m_k, m_v, o_h, m_h, row, o_part = _program_block(T, 0, H, K, V, BK, BV)
    p_k, p_v = k + row * K + o_k, v + row * V + o_v
    p_g = g + row * K + o_k if GATE == 2 else g + row
    g_step = H * K if GATE == 2 else H
    p_o = do + row * V + o_v if COMPUTE_DQ else o + row * V + o_v
    p_dq, p_dgf = dq + o_part, dg_final + o_part
    p_q = q + row * K + o_k
    if USE_DHT:
        b_dht = tl.load(dht + o_h, mask=m_h, other=0.0).to(tl.float32)

    h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        h += tl.load(h0 + o_h, mask=m_h, other=0.0).to(tl.float32)
    for _ in range(0, T):
        b_k = tl.load(p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0.0).to(tl.float32)
        if GATE != 0:
            h = _gate_state(h, _load_gate(p_g, m_k, GATE), GATE)
        if COMPUTE_DQ:  # the past's part of dq_t: scale diag(exp(g_t)) S_{t-1} do_t
            b_do = tl.load(p_o, mask=m_v, other=0.0).to(tl.float32)
            b_dq = tl.sum(h * b_do[None, :], axis=1) * scale
            tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_k)
            p_dq += H * K
            if USE_DHT:
                tl.store(p_dgf, tl.sum(h * b_dht, axis=1).to(p_dgf.dtype.element_ty), mask=m_k)
                p_dgf += H * K
        h += b_k[:, None] * b_v[None, :]
        if not COMPUTE_DQ:
            b_q = tl.load(p_q, mask=m_k, other=0.0).to(tl.float32) * scale
            b_o = tl.sum(h * b_q[:, None], axis=0)
            tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)
            p_q += H * K
        p_k += H * K
        p_v += H * V
        p_o += H * V
        p_g += g_step
    if not COMPUTE_DQ:
        tl.store(ht + o_h, h.to(ht.dtype.element_ty), mask=m_h)


@triton.jit
def fused_recurrent_bwd_kernel(q, k, v, g, do, dht, dk, dk_final, dv, dh0, scale, T,
                               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                               BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                               USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr):
    """Backward walk from t = T - 1 to 0: this value block's parts ([NV, B, T, H, K]) of dk, split into
    the outputs' path (dk) and the final state's path (dk_final), then dv [B, T, H, V] and the initial
    state's gradient dh0 [B, H, K, V].

    dS is carried as dh (from the outputs) + diag(d) dS_T with d the decay from t + 1 to T, so that dk's
    outputs' part never holds the final state's path (see the module docstring)."""
    o_k, o_v, m_k, m_v, o_h, m_h, row, o_part = _program_block(T, T - 1, H, K, V, BK, BV)
    p_q, p_k = q + row * K + o_k, k + row * K + o_k
    p_v, p_do, p_dv = v + row * V + o_v, do + row * V + o_v, dv + row * V + o_v
    p_g = g + row * K + o_k if GATE == 2 else g + row
    g_step = H * K if GATE == 2 else H
    p_dk, p_dkf = dk + o_part, dk_final + o_part

    dh = tl.zeros([BK, BV], dtype=tl.float32)
    d = tl.full([BK], 1.0, dtype=tl.float32)
    if USE_DHT:
        b_dht = tl.load(dht + o_h, mask=m_h, other=0.0).to(tl.float32)
    for _ in range(0, T):
        b_q = tl.load(p_q, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(p_do, mask=m_v, other=0.0).to(tl.float32)
        # the future outputs' part of dk_t: diag(exp(g_{t+1})) dS_{t+1} v_t
        tl.store(p_dk, tl.sum(dh * b_v[None, :], axis=1).to(p_dk.dtype.element_ty), mask=m_k)
        dh += b_q[:, None] * b_do[None, :]
        b_dv = tl.sum(dh * b_k[:, None], axis=0)
        if USE_DHT:
            tl.store(p_dkf, (d * tl.sum(b_dht * b_v[None, :], axis=1)).to(p_dkf.dtype.element_ty), mask=m_k)
            b_dv += tl.sum(b_dht * (d * b_k)[:, None], axis=0)
        tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_v)
        if GATE != 0:
            decay = _load_gate(p_g, m_k, GATE)
            dh = _gate_state(dh, decay, GATE)
            d = d * decay
        p_q -= H * K
        p_k -= H * K
        p_dk -= H * K
        p_dkf -= H * K
        p_v -= H * V
        p_do -= H * V
        p_dv -= H * V
        p_g -= g_step
    if STORE_DH0:
        if USE_DHT:
            dh += d[:, None] * b_dht
        tl.store(dh0 + o_h, dh.to(dh0.dtype.element_ty), mask=m_h)


def _blocks(K: int, V: int) -> tuple[int, int, int]:
    """(BK, BV, number of value blocks); blocks of at least 16 so the code is also valid on GPUs."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(32, triton.next_power_of_2(V)))
    return BK, BV, triton.cdiv(V, BV)


def gate_kind(g) -> int:
    """NO_GATE, SCALAR_GATE ([B, T, H]) or VECTOR_GATE ([B, T, H, K]): the kernels' GATE constant."""
    return NO_GATE if g is None else (VECTOR_GATE if g.dim() == 4 else SCALAR_GATE)


def fused_recurrent_fwd(q, k, v, g, scale: float, initial_state):
    """Launch the forward walk: (o: [B, T, H, V] in v's dtype, final state [B, H, K, V] float32)."""
    import torch

    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV, NV = _blocks(K, V)
    o = torch.empty_like(v)
    ht = q.new_empty(B, H, K, V, dtype=torch.float32)
    gate = gate_kind(g)
    fused_recurrent_fwd_kernel[(B * H, NV)](
        q, k, v, q if g is None else g, initial_state if initial_state is not None else ht, o, ht, q, v,
        q, q, scale, T, H=H, K=K, V=V, BK=BK, BV=BV, GATE=gate, USE_H0=initial_state is not None,
        COMPUTE_DQ=False, USE_DHT=False,
    )
    return o, ht


def fused_recurrent_bwd(q, k, v, g, scale: float, initial_state, final_state, do, dht):
    """Launch both backward walks; returns (dq, dk, dv, dg, dh0) in the inputs' dtypes (dh0 float32)."""
    import torch
    import torch.nn.functional as F

    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV, NV = _blocks(K, V)
    gate = gate_kind(g)
    g_arg = q if g is None else g
    use_dht = dht is not None
    # dq, dk and, with a final-state gradient, dk_final and dg_final
    parts = q.new_zeros(4 if use_dht else 2, NV, B, T, H, K, dtype=torch.float32)
    dv = torch.empty_like(v, dtype=torch.float32)
    dh0 = torch.empty_like(initial_state, dtype=torch.float32) if initial_state is not None else None
    grid = (B * H, NV)
    fused_recurrent_fwd_kernel[grid](
        q, k, v, g_arg, initial_state if initial_state is not None else q, q, q, parts[0], do,
        dht if use_dht else q, parts[-1], scale, T, H=H, K=K, V=V, BK=BK, BV=BV, GATE=gate,
        USE_H0=initial_state is not None, COMPUTE_DQ=True, USE_DHT=use_dht,
    )
    fused_recurrent_bwd_kernel[grid](
        q, k, v, g_arg, do, dht if use_dht else q, parts[1], parts[2 if use_dht else 1], dv,
        dh0 if dh0 is not None else q,
        scale, T, H=H, K=K, V=V, BK=BK, BV=BV, GATE=gate, USE_DHT=use_dht, STORE_DH0=dh0 is not None,
    )
    dq_past, dk_future, *final_parts = parts.sum(1)  # each [B, T, H, K]
    dk_final, dg_final = final_parts if use_dht else (0.0, None)
    same_step = scale * (v.float() * do.float()).sum(-1, keepdim=True)  # [B, T, H, 1]: scale v_t . do_t
    dq = dq_past + same_step * k.float()
    dk = dk_future + dk_final + same_step * q.float()
    dg = None
    if g is not None:  # each path on its own: see the module docstring
        dg = (q.float() * dq_past - k.float() * dk_future).flip(1).cumsum(1).flip(1)  # [B, T, H, K]
        if use_dht:  # times the decay over steps t+1..T-1, a sum of gates (<= 0) formed directly
            gates = g.float() if gate == VECTOR_GATE else g.float()[..., None]  # [B, T, H, K | 1]
            after_t = F.pad(gates.flip(1).cumsum(1).flip(1)[:, 1:], (0, 0, 0, 0, 0, 1))
            dg = dg + after_t.exp() * dg_final
        if gate == SCALAR_GATE:
            dg = dg.sum(-1)  # [B, T, H]
        dg = dg.to(g.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dh0


@functools.cache
def _autograd_function():
    from alloyml.kernels.common.triton_autograd import gated_function

    def forward(q, k, v, g, scale, initial_state):
        o, ht = fused_recurrent_fwd(q, k, v, g, scale, initial_state)
        return o, ht, ht

    def backward(q, k, v, g, scale, initial_state, ht, do, dht):
        return fused_recurrent_bwd(q, k, v, g, scale, initial_state, ht, do, dht)

    return gated_function("FusedRecurrentGated", forward, backward)



def fused_recurrent_gated_triton(q, k, v, g, scale: float, initial_state):
    """The gated recurrence on Triton: q, k: [B, T, H, K], v: [B, T, H, V], g: [B, T, H] | [B, T, H, K] |
    None, initial_state: [B, H, K, V] | None -> (o: [B, T, H, V] in v's dtype, final state float32)."""
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common.triton_autograd import apply_contiguous

    if q.shape[-1] > MAX_KEY_DIM:
        raise InvalidInputError(
            f"backend='triton_recurrent' supports key dims up to {MAX_KEY_DIM}, got K = {q.shape[-1]}"
        )
    return apply_contiguous(_autograd_function(), q, k, v, g, scale, initial_state)
