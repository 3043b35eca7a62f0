"""The chunkwise-parallel form of a gated linear recurrence, in PyTorch (the CPU fast path).

All three ops reduce to one recurrence over a state S: [K, V] per (batch, head):

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,        o_t = scale * q_t^T S_t

with log-space gates g_t <= 0 that are per key channel ([B, T, H, K], GLA), one scalar per head and step
([B, T, H], Mamba-2 SSD), one constant per head ([H], RetNet's log gamma) or absent (plain linear
attention). Within a chunk of C steps the outputs
come from a causal C x C attention matrix; across chunks the state carries the rest.

Numerical safety: with g summed over runs of steps inside a chunk, every exponent formed is a sum of
gates, so <= 0: over steps j < s <= i for the causal matrix (the mask is applied before exp), over the
steps from a block's start to i for the state read by q_i and over j+1 to the block's end for k_j's write
to the outgoing state. Nothing like exp(-G_j) is ever formed, so gate scales of 10 and beyond neither
overflow nor lose small terms. Each such sum is built directly (a masked cumulative sum, a running
product of exp(g), or for a constant gate a whole number of steps times it), never as a difference of two
cumulative sums: a difference like G_i - G_i is 0 in
value but not in autograd, where its two gradient paths cancel only to rounding, and that rounding,
divided by a tiny decay gamma in d/d gamma, swamps the true gradient. Gradients come from autograd
through these same safe ops, except for three written-out backwards that reuse what the forward built:
the scalar-gated chunk (`ScalarChunk`: q k^T, the decayed attention, the decayed q and k and the chunk
states are kept; [A | q'] and [v; S] share buffers, so o and its backward take three products, not
six), the chunk-to-chunk carry (`Carry`: one fused multiply-add per chunk into a buffer, either way,
with the decay gradient's dot products taken chunk by chunk in the backward loop) and the per-channel
diagonal blocks
(decayed_attention.py).

Packed sequences (`cu_seqlens`) run as one stream of chunks, each sequence from a chunk boundary, the
carry restarting at each sequence's first chunk (varlen.stream_layout); no padding to the longest.

Scalar gates (and none) use one level: chunks of 32 with the full 32 x 32 decayed attention matrix (32
rather than 64: the intra-chunk products cost T C K each, the state's T K V, so at K = V = 64 the
smaller chunk does a quarter fewer flops for twice as many steps of the state loop; measured faster at
T = 4096 on one thread).
Vector gates, where every chunk's gate sum is >= -FACTORED_GATE_LIMIT (read on CPU tensors only), factor
over whole chunks of 32 (`VectorChunk`: q e^G and k e^-G stay in float32's normal range there). Otherwise
they need their sums per key channel, so a pair (i, j) costs K exponentials; they use two levels:
chunks of 64 split into 4 sub-chunks of 16. Only pairs inside one sub-chunk get decays of their own (the
lower triangle, built one diagonal at a time as running products of exp(g) <= 1, with a hand-written
backward); pairs in different sub-chunks factor at the sub-chunk boundaries into a matrix product; pairs
in different chunks go through the state, carried from chunk to chunk (T / 64 steps of a Python loop).
Every tensor stays at the size of the inputs, never [C, C, K].
"""

from __future__ import annotations

import math

import torch

from alloyml.kernels.common.decayed_attention import decayed_attention

SCALAR_GATE_CHUNK = 32
VECTOR_GATE_CHUNK = 64
VECTOR_GATE_SUBCHUNK = 16
FACTORED_CHUNK = 32
FACTORED_GATE_LIMIT = 20.0


def chunk_gated_torch(q, k, v, g, scale: float, initial_state, cu_seqlens=None):
    """q, k: [B, T, H, K], v: [B, T, H, V], g: [B, T, H] | [H] | [B, T, H, K] | None, initial_state:
    [N, H, K, V] | None -> (o: [B, T, H, V], final_state: [N, H, K, V]), both float32 (float64 in).

    With `cu_seqlens` (B = 1, N packed sequences) the sequences run as one stream of chunks, each
    starting at a chunk boundary, with the state reset between them (varlen.stream_layout); no padding
    to the longest sequence."""
    vector = g is not None and g.dim() == 4
    run = _vector_gated if vector else _scalar_gated
    if cu_seqlens is None:
        return run(q, k, v, g, scale, initial_state)
    from alloyml.kernels.common.varlen import from_stream, stream_layout, to_stream

    T = q.shape[1]
    layout = stream_layout(cu_seqlens, T, VECTOR_GATE_CHUNK if vector else SCALAR_GATE_CHUNK)
    if g is not None and g.dim() == 1:  # a constant decay per head: per step, so the gaps do not decay
        g = g.expand(1, T, g.shape[0])
    q, k, v = (to_stream(x, layout) for x in (q, k, v))
    g = None if g is None else to_stream(g, layout)
    o, state = run(q, k, v, g, scale, initial_state, segments=layout)
    return from_stream(o, layout), state


def _blocks(x, sizes: tuple[int, ...], compute):
    """[B, T, H, D] -> [B, H, *sizes, D] with T zero-padded to prod(sizes); padded steps (k = v = 0,
    g = 0) leave the state unchanged."""
    import torch.nn.functional as F

    B, T, H = x.shape[:3]
    x = x.to(compute)
    if math.prod(sizes) > T:
        x = F.pad(x, (0, 0, 0, 0, 0, math.prod(sizes) - T))
    x = x.view(B, *sizes, H, -1)
    return x.movedim(-2, 1).contiguous()


def _unblock(o, T: int):
    """[B, H, *blocks, V] -> [B, T, H, V]; o's gradient arrives in o's own (contiguous) layout."""
    B, H, V = o.shape[0], o.shape[1], o.shape[-1]
    return _contiguous_grad(o).reshape(B, H, -1, V).transpose(1, 2)[:, :T]


def _contiguous_grad(x):
    """x itself, with its gradient made contiguous on the way back: a gradient permuted back from the
    [B, T, H, V] output would otherwise send every batched matrix product of the backward down a slow
    per-matrix path."""
    return ContiguousGrad.apply(x)


class ContiguousGrad(torch.autograd.Function):
    # a module-level class (this module is imported only when the chunk backend runs), so torch.compile
    # traces it without a graph break, which a class built inside a function would cause
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _carry(delta, decay, initial_state, segments=None):
    """The state entering each chunk: S_{n+1} = decay_n * S_n + delta_n, from S_0 = initial_state.

    delta: [B, H, N, K, V]; decay: [B | 1, H, N, K | 1, 1] (1: the same for the whole batch) or None.
    Returns (starts [B, H, N, K, V], S_N).

    With `segments` (a varlen.StreamLayout; B = 1) the chunks hold several sequences: at a sequence's
    first chunk the state restarts from that sequence's initial state (initial_state [N_seq, H, K, V] or
    zeros), and the final states [N_seq, H, K, V] are those after each sequence's last chunk."""
    if decay is None:
        decay = delta.new_ones(1, 1, delta.shape[2], 1, 1)
    if segments is None:
        return Carry.apply(delta.contiguous(), decay, initial_state)
    # S_(n+1) = keep_(n+1) (decay_n S_n + delta_n) + restart_(n+1), with keep 0 and restart the next
    # sequence's initial state where chunk n + 1 starts one: the plain carry of (keep delta + restart,
    # keep decay).
    n_chunks = delta.shape[2]
    keep = (~segments.first[1:]).to(delta.dtype)
    keep = torch.cat([keep, keep.new_ones(1)]).view(1, 1, n_chunks, 1, 1)
    carried = delta * keep
    start = None
    if initial_state is not None:
        h0 = initial_state.to(delta.dtype)
        restart = h0.index_select(0, segments.owner[1:]) * (1 - keep[0, 0, :-1])[:, None]  # [n - 1, H, K, V]
        restart = torch.cat([restart, restart.new_zeros(1, *restart.shape[1:])]).movedim(0, 1)[None]
        carried = carried + restart
        start = h0.index_select(0, segments.owner[:1])[0:1]  # [1, H, K, V]
    starts, _ = Carry.apply(carried.contiguous(), decay * keep, start)
    last = segments.last
    decay_last = decay.expand(1, -1, n_chunks, -1, -1).index_select(2, last)
    ends = torch.addcmul(delta.index_select(2, last), starts.index_select(2, last), decay_last)  # [1, H, N, K, V]
    ends = ends[0].movedim(1, 0)  # [N_seq, H, K, V]
    empty_state = ends.new_zeros(()) if initial_state is None else initial_state.to(ends.dtype)
    return starts, torch.where(segments.empty[:, None, None, None], empty_state, ends)


def _fma_into(out, a, b, c):
    """out[...] = a + b * c, written straight into `out` (a strided slice of a buffer) where eager;
    torch.compile takes no strided `out=`, so there it is computed and copied in (fused by the compiler)."""
    if torch.compiler.is_compiling():
        out.copy_(torch.addcmul(a, b, c))
    else:
        torch.addcmul(a, b, c, out=out)


def _mul_into(out, a, b):
    """out[...] = a * b into a strided slice of a buffer, as `_fma_into`."""
    if torch.compiler.is_compiling():
        out.copy_(a * b)
    else:
        torch.mul(a, b, out=out)


def _carry_forward(delta, decay, initial_state, starts=None):
    """The loop of `_carry`: one fused multiply-add per chunk into a preallocated buffer (`starts`, a
    [B, H, N, K, V] view that may be strided, or a new one)."""
    N = delta.shape[2]
    starts = torch.empty_like(delta) if starts is None else starts
    if initial_state is None:
        starts[:, :, 0].zero_()
    else:
        starts[:, :, 0].copy_(initial_state)
    for n in range(N - 1):
        _fma_into(starts[:, :, n + 1], delta[:, :, n], starts[:, :, n], decay[:, :, n])
    return starts, torch.addcmul(delta[:, :, N - 1], starts[:, :, N - 1], decay[:, :, N - 1])


def _carry_backward(d_starts, d_final, starts, decay, need_decay: bool, need_initial: bool):
    """The carry's backward: (d_delta, d_decay or None, d_initial_state or None). d_delta_n, the gradient
    of S_(n+1), runs backwards: d S_n = d starts_n + decay_n d S_(n+1)."""
    N = starts.shape[2]
    d_delta = torch.empty_like(starts)
    if d_final is None:
        d_delta[:, :, N - 1].zero_()
    else:
        d_delta[:, :, N - 1].copy_(d_final)
    if d_starts is None:
        d_starts = torch.zeros_like(starts)
    dots = []  # the decay gradient's dot products, chunk by chunk while d_delta_n is in cache
    for n in range(N - 1, 0, -1):
        if need_decay:
            dots.append(_decay_dots(d_delta[:, :, n], starts[:, :, n], decay.shape))
        _fma_into(d_delta[:, :, n - 1], d_starts[:, :, n], d_delta[:, :, n], decay[:, :, n])
    d_initial = torch.addcmul(d_starts[:, :, 0], d_delta[:, :, 0], decay[:, :, 0]) if need_initial else None
    d_decay = None
    if need_decay:
        dots.append(_decay_dots(d_delta[:, :, 0], starts[:, :, 0], decay.shape))
        d_decay = torch.stack(dots[::-1], dim=2)[..., None].sum_to_size(decay.shape)
    return d_delta, d_decay, d_initial


def _decay_dots(d_delta, starts, shape):
    """One chunk's part of the decay gradient, d_delta_n * starts_n ([B, H, K, V]) summed over V, and
    over K too where the decay `shape` ([B | 1, H, N, K | 1, 1]) is one per chunk: [B, H, K | 1]. Taken
    chunk by chunk in the carry's backward loop, where d_delta_n was just written: the product over all
    chunks at once was a [B, H, N, K, V] temporary and one more pass over two tensors of that size."""
    if shape[-2] == 1:
        return torch.linalg.vecdot(d_delta.flatten(-2), starts.flatten(-2))[..., None]
    return torch.linalg.vecdot(d_delta, starts)


class Carry(torch.autograd.Function):
    """`_carry` written out, forward and backward: through autograd each of the N steps cost a multiply,
    an add, their backward nodes and a stack of the states."""

    # module level, so torch.compile traces it without a graph break
    @staticmethod
    def forward(ctx, delta, decay, initial_state):
        starts, final = _carry_forward(delta, decay, initial_state)
        ctx.save_for_backward(starts, decay)
        ctx.has_initial = initial_state is not None
        return starts, final

    @staticmethod
    def backward(ctx, d_starts, d_final):
        starts, decay = ctx.saved_tensors
        return _carry_backward(d_starts, d_final, starts, decay, ctx.needs_input_grad[1],
                               ctx.has_initial and ctx.needs_input_grad[2])


def _mm_add(c, a, b):
    """c + a @ b over all leading dims (c may be a strided view), as one batched product."""
    flat = torch.baddbmm(c.reshape(-1, *c.shape[-2:]), a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return flat.view(c.shape)


def _joined_buffers(q, v):
    """Buffers for the products that two matrix products share: left [B, H, N, C, C + K] holding the
    causal attention A and the queries as they read the state side by side, right [B, H, N, C + K, V]
    holding v above the chunk states. Then o = A v + q' S is one product left @ right; in the backward
    d_o right^T gives (d A, d q') and left^T d_o gives (A^T d_o, d S): three products instead of six, on
    larger matrices (a batch of 32 x 32 products runs at about half the rate of 32 x 96 ones here).
    Returns (left, right, A, q' and v, S views into them)."""
    C, K, V = q.shape[-2], q.shape[-1], v.shape[-1]
    left = q.new_empty(*q.shape[:-1], C + K)
    right = q.new_empty(*v.shape[:-2], C + K, V)
    return left, right, left[..., :C], left[..., C:], right[..., :C, :], right[..., C:, :]


def _mm(a, b):
    """Batched matrix product over all leading dims of [.., M, K] @ [.., K, N] (same leading shape)."""
    return torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])).view(*a.shape[:-1], b.shape[-1])


class ScalarChunk(torch.autograd.Function):
    """The scalar-gated chunked form, forward and backward written out:

        A = (q k^T) * D,   delta = (k * ek)^T v,   starts = carry(delta, decay, S_0),
        o = A v + (q * eq) starts

    q, k: [B, H, N, C, K], v: [B, H, N, C, V] (contiguous blocks); D: the decays of the causal pairs
    times the scale, broadcasting to [B, H, N, C, C] (0 above the diagonal); eq, ek: [.., C, 1] the
    decays from the chunk start to i (times the scale) and from j to the chunk end, or None (ek: no
    decay; eq: the scale alone, `scale`); decay: [.., N, 1, 1] or None. The backward reuses the forward's
    products (q k^T, A, q * eq, k * ek, the states) instead of recomputing them, and every product
    runs on contiguous operands (autograd's left some transposed gradients to a slow path)."""

    @staticmethod
    def forward(ctx, q, k, v, D, eq, ek, decay, initial_state, scale):
        left, right, A, qi, v_part, starts = _joined_buffers(q, v)
        qk = _mm(q, k.transpose(-1, -2))  # [B, H, N, C, C]
        _mul_into(A, qk, D)
        _mul_into(qi, q, scale if eq is None else eq)
        v_part.copy_(v)
        kj = k if ek is None else k * ek
        delta = _mm(kj.transpose(-1, -2), v)  # [B, H, N, K, V]
        if decay is None:
            decay = delta.new_ones(1, 1, delta.shape[2], 1, 1)
        _, final = _carry_forward(delta, decay, initial_state, starts)
        o = _mm(left, right)
        ctx.save_for_backward(q, k, D, eq, ek, decay, qk, left, right, kj)
        ctx.has_initial = initial_state is not None
        ctx.scale = scale
        return o, final

    @staticmethod
    def backward(ctx, d_o, d_final):
        q, k, D, eq, ek, decay, qk, left, right, kj = ctx.saved_tensors
        need = ctx.needs_input_grad
        C = q.shape[-2]
        v, starts = right[..., :C, :], right[..., C:, :]
        d_o = d_o.contiguous()
        d_left = _mm(d_o, right.transpose(-1, -2))  # [B, H, N, C, C + K]: (d A, d qi)
        d_ov, d_qi = d_left[..., :C], d_left[..., C:]
        P = d_ov * D  # the gradient of q k^T
        dq = _mm(P, k)
        dk = _mm(P.transpose(-1, -2), q)
        d_right = _mm(left.transpose(-1, -2), d_o)  # [B, H, N, C + K, V]: (A^T d_o, d starts)
        d_delta, d_decay, d_initial = _carry_backward(d_right[..., C:, :], d_final, starts, decay, need[6],
                                                      ctx.has_initial and need[7])
        dv = _mm_add(d_right[..., :C, :], kj, d_delta)
        d_kj = _mm(v, d_delta.transpose(-1, -2))  # [B, H, N, C, K]
        if eq is None:
            dq.add_(d_qi, alpha=ctx.scale)
            d_eq = None
        else:
            dq.addcmul_(d_qi, eq)
            d_eq = torch.linalg.vecdot(d_qi, q)[..., None].sum_to_size(eq.shape) if need[4] else None
        if ek is None:
            dk.add_(d_kj)
            d_ek = None
        else:
            dk.addcmul_(d_kj, ek)
            d_ek = torch.linalg.vecdot(d_kj, k)[..., None].sum_to_size(ek.shape) if need[5] else None
        d_D = (d_ov * qk).sum_to_size(D.shape) if need[3] else None
        return dq, dk, dv, d_D, d_eq, d_ek, d_decay, d_initial, None


def _causal(C: int, device):

    return torch.ones(C, C, dtype=torch.bool, device=device).tril()  # [C, C], i >= j


def _scalar_gated(q, k, v, g, scale: float, initial_state, segments=None):

    T = q.shape[1]
    C = SCALAR_GATE_CHUNK
    N = math.ceil(T / C)
    compute = torch.promote_types(q.dtype, torch.float32)
    q, k, v = _blocks(q, (N, C), compute), _blocks(k, (N, C), compute), _blocks(v, (N, C), compute)
    eq = ek = decay = None
    if g is None:
        D = _causal(C, q.device).to(compute) * scale
    else:
        if g.dim() == 1:
            pair, to_i, after_j, total = _constant_decays(g.to(compute), N, C, T)
        else:
            pair, to_i, after_j, total = _step_decays(_blocks(g.unsqueeze(-1), (N, C), compute).squeeze(-1))
        if scale > 0:  # the scale folded into the decays (-inf above the diagonal: 0)
            D, eq = (pair + math.log(scale)).exp(), (to_i + math.log(scale)).exp()[..., None]
        else:  # a zero or negative scale has no logarithm
            D, eq = pair.exp() * scale, to_i.exp()[..., None] * scale
        # eq: the decay from the chunk start to step i
        ek = after_j.exp()[..., None]  # decay from step j to the chunk end
        decay = total.exp()[..., None, None]  # [B | 1, H, N, 1, 1]
    if segments is None:
        o, state = ScalarChunk.apply(q, k, v, D, eq, ek, decay, initial_state, scale)
    else:  # the same products through autograd, around the carry that restarts at each sequence
        A = (q @ k.transpose(-1, -2)) * D
        qi = q * scale if eq is None else q * eq
        kj = k if ek is None else k * ek
        starts, state = _carry(kj.transpose(-1, -2) @ v, decay, initial_state, segments)
        o = A @ v + qi @ starts
    return _unblock(o, T), state


def _step_decays(g):
    """Per-step scalar gates g: [B, H, N, C] -> the sums of gates over (j < s <= i: [B, H, N, C, C], -inf
    for j > i; 0..i; j+1..C-1: [B, H, N, C]; the whole chunk: [B, H, N]), each a direct sum."""

    # Each sum is g times a 0/1 mask over the steps s it covers: small matrix products instead of
    # cumulative sums along strided axes and the flips a reverse sum needs (memory-bound passes).
    C = g.shape[-1]
    causal = _causal(C, g.device)
    s = torch.arange(C, device=g.device)
    to_i = g @ (s[:, None] <= s[None, :]).to(g.dtype)  # [s, i]: s <= i
    after_j = g @ (s[:, None] > s[None, :]).to(g.dtype)  # [s, j]: s > j
    i, j = s[:, None], s[None, :]
    covers = ((j[None] < s[:, None, None]) & (s[:, None, None] <= i[None])).to(g.dtype)  # [s, i, j]
    between = (g @ covers.view(C, C * C)).unflatten(-1, (C, C))  # [B, H, N, C(i), C(j)]
    return between.masked_fill(~causal, -math.inf), to_i, after_j, to_i[..., -1]


def _constant_decays(log_gamma, N: int, C: int, T: int):
    """A constant log-decay per head (RetNet's gamma), log_gamma: [H] -> the same sums as `_step_decays`
    in closed form, a whole number of steps times log gamma, shaped to broadcast over [B, H, N, ...]. The
    last chunk ends at step T - 1, not at its padding: the padded steps must not decay the final state."""

    steps = torch.arange(C, device=log_gamma.device)
    ends = torch.full((N,), C - 1, device=log_gamma.device)
    ends[-1] = T - 1 - (N - 1) * C  # the last real step of the last chunk
    span = (steps[:, None] - steps[None, :]).to(log_gamma.dtype)  # i - j
    between = (span * log_gamma[:, None, None]).masked_fill(span < 0, -math.inf)  # [H, C, C]
    to_i = (steps + 1).to(log_gamma.dtype) * log_gamma[:, None]  # [H, C]
    after = (ends[:, None] - steps[None, :]).clamp_min(0).to(log_gamma.dtype)  # [N, C]; padding: 0 steps
    after_j = after * log_gamma[:, None, None]  # [H, N, C]
    total = (ends + 1).to(log_gamma.dtype) * log_gamma[:, None]  # [H, N]
    return between[None, :, None], to_i[None, :, None], after_j[None], total[None]


def _vector_gated(q, k, v, g, scale: float, initial_state, segments=None):
    T = q.shape[1]
    compute = torch.promote_types(q.dtype, torch.float32)
    if segments is None and _factoring_allowed(g):
        C = FACTORED_CHUNK
        N = math.ceil(T / C)
        gb = _blocks(g, (N, C), compute)  # [B, H, N, C, K]
        with torch.no_grad():
            G = _triangular_sums(gb, inclusive=True)  # the gate sums from each chunk start to step i
            safe = bool(G[..., -1, :].amin() >= -FACTORED_GATE_LIMIT) if G.numel() else True
        if safe:
            q, k, v = (_blocks(x, (N, C), compute) for x in (q, k, v))
            o, state = VectorChunk.apply(q, k, v, gb, G, initial_state, scale)
            return _unblock(o, T), state
    return _sub_chunked(q, k, v, g, scale, initial_state, segments, compute)


def _factoring_allowed(g) -> bool:
    """Whether the factored chunk may be chosen: it needs one read of the gates' values (their sums per
    chunk), taken only where that read is free (CPU tensors outside torch.compile), so the CUDA and
    compiled paths stay branch-free and read nothing on the host."""
    from alloyml.kernels.common import checks

    return g.device.type == "cpu" and checks.values_readable(g)


def _sub_chunked(q, k, v, g, scale: float, initial_state, segments, compute):
    import torch.nn.functional as F

    T = q.shape[1]
    C, c = VECTOR_GATE_CHUNK, VECTOR_GATE_SUBCHUNK
    S, N = C // c, math.ceil(T / C)
    q, k, v, g = (_blocks(x, (N, S, c), compute) for x in (q, k, v, g))  # [B, H, N, S, c, D]
    q = q * scale
    B, H, _, _, _, K = q.shape

    # Every decay from step j to step i splits at the sub-chunk boundaries into (j + 1 .. end of j's
    # sub-chunk) + (whole sub-chunks between) + (start of i's sub-chunk .. i): the first on k's side,
    # the last on q's, the middle a [K] vector per pair of sub-chunks; each a direct sum of gates <= 0.
    to_i, after_j = _run_sums(g)  # [B, H, N, S, c, K]
    sub_total = to_i[..., -1, :]  # [B, H, N, S, K]
    q_sub, k_sub = q * to_i.exp(), k * after_j.exp()
    between, before, after, total = _sub_chunk_sums(sub_total)

    # The chunk's C x C attention, row block by row block: sub-chunk b's queries see the keys of each
    # sub-chunk a < b through `between`, and the pairs inside b through per-pair decays.
    diagonal = decayed_attention(q, k, g).unbind(3)  # S x [B, H, N, c, c]
    q_rows, k_subs = q_sub.unbind(3), k_sub.unbind(3)
    between = between.exp()
    rows = [F.pad(diagonal[0], (0, C - c))]
    for b in range(1, S):
        k_seen = torch.cat([k_subs[a] * between[:, :, :, b, a, None, :] for a in range(b)], dim=-2)  # [.., b c, K]
        row = torch.cat([q_rows[b] @ k_seen.transpose(-1, -2), diagonal[b]], dim=-1)  # [B, H, N, c, (b + 1) c]
        rows.append(F.pad(row, (0, C - (b + 1) * c)))
    attn = torch.cat(rows, dim=-2)  # [B, H, N, C, C]

    # Across chunks, through the state: decays from the chunk start to i and from j + 1 to the chunk end.
    q_inter = (q_sub * before.exp()[..., None, :]).view(B, H, N, C, K)
    k_state = (k_sub * after.exp()[..., None, :]).view(B, H, N, C, K)
    v = v.view(B, H, N, C, -1)
    delta = k_state.transpose(-1, -2) @ v  # [B, H, N, K, V]
    starts, state = _carry(delta, total.exp()[..., None], initial_state, segments)
    o = attn @ v + q_inter @ starts
    return _unblock(o, T), state


class VectorChunk(torch.autograd.Function):
    """Per-channel gates, factored over a whole chunk, forward and backward written out. Used only where
    every chunk's total gate sum is >= -FACTORED_GATE_LIMIT in every channel (checked on the CPU by
    `_vector_gated`), so that exp(G) and exp(-G) below both stay in float32's normal range:

        G_i = g_0 + .. + g_i (from the chunk start),  qg = scale q e^G,  kg = k e^-G,  E = e^(G_(C-1)),
        A = tril(qg kg^T),  delta = (kg E)^T v,  starts = carry(delta, E, S_0),  o = A v + qg starts

    Each product qg_i kg_j = q_i k_j e^(G_i - G_j) keeps float32's relative precision (no term overflows
    or underflows). The gate gradient is written out so that nothing cancels against the undecayed
    pairs: the diagonal (i = j) holds no gate and is kept out of the pair sums, the pairs j < i inside
    the chunk (and the read of the state by q_i) give d G_i, summed over i >= s for g_s, and the write
    of k_j to the outgoing state holds g_s for s > j only, summed over j < s.

    q, k, g: [B, H, N, C, K], v: [B, H, N, C, V] (contiguous blocks), G: the inclusive sums of g along C
    (no grad), initial_state: [B, H, K, V] or None."""

    @staticmethod
    def forward(ctx, q, k, v, g, G, initial_state, scale):
        eG = G.exp()
        emG = eG.reciprocal()  # = exp(-G) to rounding (both in range here), a sixth the cost of an exp
        E = eG[..., -1, :]  # [B, H, N, K]: the decay over the whole chunk
        qg = (q * scale).mul_(eG)
        kg = k * emG
        kd = kg * E[..., None, :]  # k_j e^(g_(j+1) + .. + g_(C-1)): its write to the outgoing state
        A = _mm(qg, kg.transpose(-1, -2)).tril_()  # [B, H, N, C, C]
        delta = _mm(kd.transpose(-1, -2), v)  # [B, H, N, K, V]
        decay = E[..., None]  # [B, H, N, K, 1]
        starts, final = _carry_forward(delta, decay, initial_state)
        o = torch.baddbmm(_mm(A, v).view(-1, *v.shape[-2:]), qg.view(-1, *q.shape[-2:]),
                          starts.view(-1, *starts.shape[-2:])).view(v.shape)
        ctx.save_for_backward(q, k, v, eG, emG, qg, kg, kd, A, decay, starts)
        ctx.has_initial = initial_state is not None
        ctx.scale = scale
        return o, final

    @staticmethod
    def backward(ctx, d_o, d_final):
        q, k, v, eG, emG, qg, kg, kd, A, decay, starts = ctx.saved_tensors
        need = ctx.needs_input_grad
        C = q.shape[-2]
        d_o = d_o.contiguous()
        dA = _mm(d_o, v.transpose(-1, -2))  # [B, H, N, C, C]
        d0 = torch.diagonal(dA, 0, -2, -1)[..., None].clone()  # the undecayed pairs i = j
        dA.tril_(-1)
        d_starts = _mm(qg.transpose(-1, -2), d_o)  # [B, H, N, K, V]
        d_delta, d_decay, d_initial = _carry_backward(d_starts, d_final, starts, decay, need[3],
                                                      ctx.has_initial and need[5])
        dqg = _mm(dA, kg)
        dqg.view(-1, *dqg.shape[-2:]).baddbmm_(d_o.view(-1, *d_o.shape[-2:]),
                                               starts.transpose(-1, -2).reshape(-1, *starts.shape[-2:][::-1]))
        dkg = _mm(dA.transpose(-1, -2), qg)
        dkd = _mm(v, d_delta.transpose(-1, -2))  # [B, H, N, C, K]
        dv = _mm(A.transpose(-1, -2), d_o)
        dv.view(-1, *dv.shape[-2:]).baddbmm_(kd.view(-1, *kd.shape[-2:]), d_delta.view(-1, *d_delta.shape[-2:]))
        dg = None
        if need[3]:
            ones = torch.ones(C, C, dtype=q.dtype, device=q.device)
            # d G_i from the pairs (j < i, and the state read) on q's side and the pairs on k's side
            dG = (qg * dqg).addcmul_(kg, dkg, value=-1.0)
            dg = ones.triu() @ dG  # g_s: sum over i >= s
            dg.add_(ones.tril(-1) @ (kd * dkd))  # the state writes k_j with j < s
            dg.add_((d_decay[..., 0] * decay[..., 0])[..., None, :])  # the chunk's decay holds every g_s
        dq = (dqg * eG).addcmul_(d0, k).mul_(ctx.scale)
        dk = dkg.addcmul_(dkd, decay.transpose(-1, -2)).mul_(emG).addcmul_(d0, q, value=ctx.scale)
        return dq, dk, dv, dg, None, d_initial, None


def _sub_chunk_sums(sub_total):
    """Sums over whole sub-chunks from their totals [.., S, K]: (between [.., S(b), S(a), K], the sum over
    sub-chunks a < m < b (used where a < b); before [.., S, K], over m < b; after, over m > a; total
    [.., K]), each a direct sum (a product with a 0/1 mask)."""

    S = sub_total.shape[-2]
    m = torch.arange(S, device=sub_total.device)
    b, a = m[:, None, None], m[None, :, None]
    inside = ((a < m) & (m < b)).to(sub_total.dtype)  # [S(b), S(a), S(m)]
    between = torch.einsum("bam,...mk->...bak", inside, sub_total)
    before = torch.einsum("bm,...mk->...bk", (m[None, :] < m[:, None]).to(sub_total.dtype), sub_total)
    after = torch.einsum("am,...mk->...ak", (m[None, :] > m[:, None]).to(sub_total.dtype), sub_total)
    return between, before, after, sub_total.sum(-2)


def _run_sums(g):
    """g: [.., L, K] -> (sum over steps 0..i, sum over steps j+1..L-1), each [.., L, K], as products with
    0/1 triangular masks: each entry a direct sum of exactly its gates, never a difference of two long
    sums. One matrix product per direction (and one per direction back) replaces cumulative sums along
    a strided axis and the flips a reverse sum needs, the memory-bound passes that dominated here."""

    return _triangular_sums(g, inclusive=True), _triangular_sums(g, inclusive=False, reverse=True)


def _triangular_sums(x, inclusive: bool, reverse: bool = False):
    """Sums along dim -2 of x: [.., L, D] as mask @ x: forward (s <= i or s < i) or reverse (s >= i or
    s > i)."""
    L = x.shape[-2]
    mask = torch.ones(L, L, dtype=x.dtype, device=x.device)
    diagonal = 0 if inclusive else 1
    mask = mask.triu(diagonal) if reverse else mask.tril(-diagonal)
    return mask @ x
