"""Causal linear attention as a plain float32 recurrence over time: the ground truth for the fast paths."""

from __future__ import annotations


def naive_linear_attn(q, k, v, decay=None, *, scale=None, normalize=False, initial_state=None,
                      output_final_state=True, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.linear_attn`; one `linear_attn_step` per token."""
    from functools import partial

    from alloyml.kernels.common.recurrence import scan_steps
    from alloyml.kernels.linear_attn.recurrent import linear_attn_step

    step = partial(linear_attn_step, decay=decay, scale=scale, normalize=normalize)
    return scan_steps(lambda q_t, k_t, v_t, state: step(q_t, k_t, v_t, state), (q, k, v), initial_state,
                      output_final_state, cu_seqlens)
