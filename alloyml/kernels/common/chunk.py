"""Dispatch of the gated recurrence shared by every op to an engine, and packed sequences around it.

Engines: "chunk" (PyTorch, chunk_torch.py: the CPU fast path), "triton" (chunked GPU kernels,
chunk_triton.py) and "triton_recurrent" (step-by-step GPU kernels, fused_recurrent_triton.py). Each takes
(q, k, v, g, scale, initial_state) on a padded batch (g: None, per-step gates, or for "chunk" a constant
log-decay per head, [H]) and returns (o, final_state); see chunk_torch.py for
the recurrence and its shapes.
"""

from __future__ import annotations


def _chunk_engine(*args):
    from alloyml.kernels.common.chunk_torch import chunk_gated_torch

    return chunk_gated_torch(*args)


def _triton_engine(*args):
    from alloyml.kernels.common.chunk_triton import chunk_gated_triton

    return chunk_gated_triton(*args)


def _triton_recurrent_engine(*args):
    from alloyml.kernels.common.fused_recurrent_triton import fused_recurrent_gated_triton

    return fused_recurrent_gated_triton(*args)


ENGINES = {"chunk": _chunk_engine, "triton": _triton_engine, "triton_recurrent": _triton_recurrent_engine}


def chunk_gated(q, k, v, g, *, scale, initial_state, output_final_state, cu_seqlens, engine):
    """The gated recurrence above on `engine` (a key of ENGINES), with packed sequences handled by padding
    (see varlen.py). Returns (o in q's dtype, final_state float32 or None)."""
    from alloyml.kernels.common.varlen import pad_sequences, padding_index, unpad_sequences

    dtype = q.dtype
    if g is not None and g.dim() == 1 and (engine != "chunk" or cu_seqlens is not None):
        # a constant log-decay per head: the kernels and the padding of packed sequences take it per step
        g = g.expand(q.shape[0], q.shape[1], q.shape[2])
    if cu_seqlens is not None:
        index, valid = padding_index(cu_seqlens)
        q, k, v = (pad_sequences(x, index) for x in (q, k, v))
        g = None if g is None else pad_sequences(g, index)
    o, state = ENGINES[engine](q, k, v, g, scale, initial_state)
    if cu_seqlens is not None:
        o = unpad_sequences(o, valid)
    return o.to(dtype), (state if output_final_state else None)
