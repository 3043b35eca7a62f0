"""The chunkwise-parallel form of a gated linear recurrence, in PyTorch (the CPU fast path).

All three ops reduce to one recurrence over a state S: [K, V] per (batch, head):

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,        o_t = scale * q_t^T S_t

with log-space gates g_t <= 0 that are per key channel ([B, T, H, K], GLA), one scalar per head and step
([B, T, H], Mamba-2 SSD, RetNet) or absent (plain linear attention). Within a chunk of C steps the outputs
come from a causal C x C attention matrix; across chunks the state carries the rest.

Numerical safety: with g summed over runs of steps inside a chunk, every exponent formed is a sum of
gates, so <= 0: over steps j < s <= i for the causal C x C matrix (the mask is applied before exp), over
0..i for the state read by q_i and over j+1..C-1 for k_j's write to the chunk's outgoing state. Nothing
like exp(-G_j) is ever formed, so gate scales of 10 and beyond neither overflow nor lose small terms.
Each such sum is built directly (a masked cumulative sum), never as a difference of two cumulative sums:
a difference like G_i - G_i is 0 in value but not in autograd, where its two gradient paths cancel only
to rounding, and that rounding, divided by a tiny decay gamma in d/d gamma, swamps the true gradient.
Vector gates need the sums per key channel, a [C, C, K] tensor, so they use a smaller chunk (8) than
scalar gates (64). Gradients come from autograd through these same safe ops.
"""

from __future__ import annotations

import math

SCALAR_GATE_CHUNK = 64
VECTOR_GATE_CHUNK = 8


def chunk_gated_torch(q, k, v, g, scale: float, initial_state):
    """q, k: [B, T, H, K], v: [B, T, H, V], g: [B, T, H] | [B, T, H, K] | None, initial_state:
    [B, H, K, V] | None -> (o: [B, T, H, V], final_state: [B, H, K, V]), both float32 (float64 in)."""
    import torch
    import torch.nn.functional as F

    B, T, H, K = q.shape
    V = v.shape[-1]
    vector_gate = g is not None and g.dim() == 4
    C = VECTOR_GATE_CHUNK if vector_gate else SCALAR_GATE_CHUNK
    N = math.ceil(T / C)
    compute = torch.promote_types(q.dtype, torch.float32)

    def blocks(x):  # [B, T, H, D] -> [B, H, N, C, D]; padded steps are zeros (no-op steps)
        x = F.pad(x.to(compute), (0, 0, 0, 0, 0, N * C - T))
        return x.view(B, N, C, H, -1).permute(0, 3, 1, 2, 4).contiguous()

    q, k, v = blocks(q) * scale, blocks(k), blocks(v)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # [C, C], i >= j
    if g is None:
        attn = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, N, C, C]
        q_inter, k_state, chunk_decay = q, k, None
    else:
        g = blocks(g if vector_gate else g.unsqueeze(-1))  # [B, H, N, C, K | 1]
        G = g.cumsum(3)  # sum over steps 0..i of the chunk
        to_end = F.pad(g.flip(3).cumsum(3).flip(3)[..., 1:, :], (0, 0, 0, 1))  # sum over steps j+1..C-1
        after_j = g[..., :, None, :] * causal.tril(-1)[..., None].to(g.dtype)  # [B, H, N, C(s), C(j), K | 1]
        between = after_j.cumsum(3).masked_fill(~causal[..., None], -math.inf)  # sum over j < s <= i

        if vector_gate:
            within = q[..., :, None, :] * between.exp()  # [B, H, N, C, C, K]
            attn = (within * k[..., None, :, :]).sum(-1)  # [B, H, N, C, C]
        else:
            attn = (q @ k.transpose(-1, -2)) * between.squeeze(-1).exp()  # [B, H, N, C, C]
        q_inter = q * G.exp()  # decay from the chunk start to step i
        k_state = k * to_end.exp()  # decay from step j to the chunk end
        chunk_decay = G[..., -1:, :].transpose(-1, -2).exp()  # [B, H, N, K | 1, 1]: scales the state's rows

    o = attn @ v  # [B, H, N, C, V]
    delta = k_state.transpose(-1, -2) @ v  # [B, H, N, K, V]: each chunk's addition to the state
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(compute)
    starts = []  # the state entering each chunk
    decays = [None] * N if chunk_decay is None else chunk_decay.unbind(2)  # unbind: one backward for all n
    for delta_n, decay_n in zip(delta.unbind(2), decays, strict=True):
        starts.append(state)
        state = (state if decay_n is None else state * decay_n) + delta_n
    o = o + q_inter @ torch.stack(starts, dim=2)  # [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]  # [B, T, H, V]
    return o, state


def _triton_engine(*args):
    from alloyml.kernels.common.fused_recurrent_triton import fused_recurrent_gated_triton

    return fused_recurrent_gated_triton(*args)


ENGINES = {"chunk": chunk_gated_torch, "triton": _triton_engine}


def chunk_gated(q, k, v, g, *, scale, initial_state, output_final_state, cu_seqlens, engine):
    """The gated recurrence above on `engine` ("chunk": PyTorch, "triton": GPU kernels), with packed
    sequences handled by padding (see varlen.py). Returns (o in q's dtype, final_state float32 or None)."""
    from alloyml.kernels.common.varlen import pad_sequences, padding_index, unpad_sequences

    dtype = q.dtype
    if cu_seqlens is not None:
        index, valid = padding_index(cu_seqlens)
        q, k, v = (pad_sequences(x, index) for x in (q, k, v))
        g = None if g is None else pad_sequences(g, index)
    o, state = ENGINES[engine](q, k, v, g, scale, initial_state)
    if cu_seqlens is not None:
        o = unpad_sequences(o, valid)
    return o.to(dtype), (state if output_final_state else None)
