"""The gated linear recurrence every op reduces to, dispatched to the backend that runs it, with packed
sequences around it.

Backends: "chunk" (PyTorch, chunk_torch.py: the CPU fast path), "triton" (chunked GPU kernels,
chunk_triton.py) and "triton_recurrent" (step-by-step GPU kernels, fused_recurrent_triton.py). Each takes
(q, k, v, g, scale, initial_state) on a padded batch (g: None, per-step gates, or for "chunk" a constant
log-decay per head, [H]) and returns (o, final_state); see chunk_torch.py for the recurrence and its
shapes. The ops' naive references do not come through here: they are written out in each op's naive.py.
"""

from __future__ import annotations


def _chunk(*args, cu_seqlens=None):
    from alloyml.kernels.common.chunk_torch import chunk_gated_torch

    return chunk_gated_torch(*args, cu_seqlens)


def _triton(*args):
    from alloyml.kernels.common.chunk_triton import chunk_gated_triton

    return chunk_gated_triton(*args)


def _triton_recurrent(*args):
    from alloyml.kernels.common.fused_recurrent_triton import fused_recurrent_gated_triton

    return fused_recurrent_gated_triton(*args)


def _triton_packed(q, k, v, g, scale, initial_state, cu_seqlens, dtype, output_final_state):
    """Packed sequences on the chunked Triton kernels: one stream of chunks, each sequence from a chunk
    boundary (at most CHUNK_SIZE - 1 empty steps after it, no padding to the longest), the state passes
    restarting at each sequence (varlen.stream_layout; the chunk -> sequence map is built with tensor
    operations, and the number of chunks is bounded from the shapes where the offsets are not readable)."""
    from alloyml.kernels.common.chunk_triton import CHUNK_SIZE, chunk_gated_triton, segments_of
    from alloyml.kernels.common.varlen import from_stream, stream_layout, to_stream

    layout = stream_layout(cu_seqlens, q.shape[1], CHUNK_SIZE)
    q, k, v = (to_stream(x, layout) for x in (q, k, v))
    g = None if g is None else to_stream(g, layout)
    o, state = chunk_gated_triton(q, k, v, g, scale, initial_state, segments_of(layout))
    return from_stream(o, layout).to(dtype), (state if output_final_state else None)


GATED_BACKENDS = {"chunk": _chunk, "triton": _triton, "triton_recurrent": _triton_recurrent}


def chunk_gated(q, k, v, g, *, scale, initial_state, output_final_state, cu_seqlens, backend):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale * q_t^T S_t on `backend` (a key of
    GATED_BACKENDS), with packed sequences run as one stream with the state reset between them on
    "chunk" and "triton", and padded to the longest on "triton_recurrent" (see varlen.py).
    Returns (o in q's dtype, final_state float32 or None)."""
    from alloyml.kernels.common.varlen import pad_sequences, padding_index, unpad_sequences

    dtype = q.dtype
    if backend == "chunk":
        o, state = _chunk(q, k, v, g, scale, initial_state, cu_seqlens=cu_seqlens)
        return o.to(dtype), (state if output_final_state else None)
    if g is not None and g.dim() == 1:
        # a constant log-decay per head: the kernels and the padding of packed sequences take it per step
        g = g.expand(q.shape[0], q.shape[1], q.shape[2])
    if cu_seqlens is not None and backend == "triton":
        return _triton_packed(q, k, v, g, scale, initial_state, cu_seqlens, dtype, output_final_state)
    if cu_seqlens is not None:
        index, valid = padding_index(cu_seqlens)
        q, k, v = (pad_sequences(x, index) for x in (q, k, v))
        g = None if g is None else pad_sequences(g, index)
    o, state = GATED_BACKENDS[backend](q, k, v, g, scale, initial_state)
    if cu_seqlens is not None:
        o = unpad_sequences(o, valid)
    return o.to(dtype), (state if output_final_state else None)
